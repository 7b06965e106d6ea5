package stack_test

import (
	"errors"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

// hid is an expected hidden entry: the layer, and what hid it.
type hid struct {
	layer   int
	kind    stack.HiderKind
	byLayer int
	byPath  string
}

// TestWhichRules checks Which against what docs/semantics.md says hides what.
func TestWhichRules(t *testing.T) {
	const none = -1
	tests := []struct {
		rule, path string
		provider   int // none: not shown
		merged     []int
		hidden     []hid
	}{
		{"whiteout-file", "etc/a", none, nil, []hid{{0, stack.ByWhiteout, 1, "etc/.wh.a"}}},
		{"whiteout-file", "etc/b", 0, nil, nil},
		{"whiteout-file", "etc", 1, []int{0}, nil},
		{"whiteout-dir", "d", none, nil, []hid{{0, stack.ByWhiteout, 1, ".wh.d"}}},
		{"whiteout-dir", "d/sub/y", none, nil, []hid{{0, stack.ByWhiteout, 1, ".wh.d"}}},
		{"whiteout-skips-a-layer", "a", none, nil, []hid{{0, stack.ByWhiteout, 2, ".wh.a"}}},
		{"whiteout-then-readd", "a", 2, nil, []hid{{0, stack.ByWhiteout, 1, ".wh.a"}}},
		{"whiteout-of-nothing", "missing", none, nil, nil},
		{"whiteout-own-layer-after", "a", 1, nil, []hid{{0, stack.ByReplace, 1, "a"}}},
		{"opaque-before", "d", 1, nil, []hid{{0, stack.ByOpaque, 1, "d"}}},
		{"opaque-after", "d", 1, nil, []hid{{0, stack.ByOpaque, 1, "d"}}},
		{"opaque-after", "d/x", none, nil, []hid{{0, stack.ByOpaque, 1, "d"}}},
		{"opaque-before", "d/sub", 1, nil, []hid{{0, stack.ByOpaque, 1, "d"}}},
		{"opaque-after", "d/sub/y", none, nil, []hid{{0, stack.ByOpaque, 1, "d"}}},
		{"opaque-before", "d/z", 1, nil, nil},
		{"whiteout-dir-with-entries-before", "d", 1, nil, []hid{{0, stack.ByWhiteout, 1, ".wh.d"}}},
		{"whiteout-dir-with-entries-after", "d/sub/y", none, nil, []hid{{0, stack.ByWhiteout, 1, ".wh.d"}}},
		{"dir-over-dir", "d", 1, []int{0}, nil},
		{"implied-over-dir", "usr", 1, []int{0}, nil},
		{"implied-over-file-over-dir", "usr", 2, nil, []hid{{1, stack.ByReplace, 2, "usr"}, {0, stack.ByReplace, 1, "usr"}}},
		{"file-over-dir", "d", 1, nil, []hid{{0, stack.ByReplace, 1, "d"}}},
		{"file-over-dir", "d/sub/y", none, nil, []hid{{0, stack.ByReplace, 1, "d"}}},
		{"symlink-over-dir", "d/x", none, nil, []hid{{0, stack.ByReplace, 1, "d"}}},
		{"dir-over-file", "d", 1, nil, []hid{{0, stack.ByReplace, 1, "d"}}},
		{"dir-over-symlink", "lib", 1, nil, []hid{{0, stack.ByReplace, 1, "lib"}}},
		{"implied-dir-over-symlink", "lib/x", 1, nil, nil},
		{"implied-dir-over-symlink", "usr/lib/libc.so", 0, nil, nil},
		{"hardlink-to-lower", "b", 1, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.rule+"/"+tt.path, func(t *testing.T) {
			_, v := teststore.OpenImage(t, teststore.RuleCase(t, tt.rule).Layers)
			pr, err := v.Which("/" + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if pr.Shown != (tt.provider != none) || (pr.Shown && pr.Provider.Layer != tt.provider) {
				t.Errorf("shown %v provider %d, want provider %d", pr.Shown, pr.Provider.Layer, tt.provider)
			}
			if pr.Shown && pr.Provider.Digest != v.Layers[tt.provider].Digest {
				t.Errorf("provider digest %s, want %s", pr.Provider.Digest, v.Layers[tt.provider].Digest)
			}
			var merged []int
			for _, m := range pr.Merged {
				merged = append(merged, m.Layer)
			}
			if len(merged) != len(tt.merged) || (len(merged) > 0 && merged[0] != tt.merged[0]) {
				t.Errorf("merged %v, want %v", merged, tt.merged)
			}
			if len(pr.Hidden) != len(tt.hidden) {
				t.Fatalf("hidden %+v, want %+v", pr.Hidden, tt.hidden)
			}
			for i, h := range pr.Hidden {
				w := tt.hidden[i]
				if h.Layer != w.layer || h.By.Kind != w.kind || h.By.Layer != w.byLayer || h.By.Path != w.byPath || h.By.Digest != v.Layers[w.byLayer].Digest {
					t.Errorf("hidden %d: %+v, want %+v", i, h, w)
				}
			}
		})
	}
}

// TestWhichAccountsForEveryEntry asks Which about every path of every
// layer of every rule case: it must agree with Resolve on what the view
// shows, and account for every layer's entry with a hider above it.
func TestWhichAccountsForEveryEntry(t *testing.T) {
	for _, c := range testimage.RuleCases() {
		t.Run(c.Name, func(t *testing.T) {
			_, v := teststore.OpenImage(t, c.Layers)
			paths := map[string]bool{}
			for _, l := range v.Layers {
				for rec := uint32(0); rec < uint32(l.Index.Len()); rec++ {
					p, err := l.Index.Path(rec)
					if err != nil {
						t.Fatal(err)
					}
					paths[p] = true
				}
			}
			for p := range paths {
				pr, err := v.Which(p)
				if err != nil {
					t.Fatalf("which %s: %v", p, err)
				}
				n, shown, err := v.Resolve(p)
				if err != nil {
					t.Fatal(err)
				}
				if shown != pr.Shown || (shown && n.Top().Layer != pr.Provider.Layer) {
					t.Errorf("%s: Which says shown %v by layer %d; Resolve %v by %v", p, pr.Shown, pr.Provider.Layer, shown, n)
				}
				have := 0
				for _, l := range v.Layers {
					if _, ok, _ := l.Index.Walk(p); ok {
						have++
					}
				}
				accounted := len(pr.Merged) + len(pr.Hidden)
				if pr.Shown {
					accounted++
				}
				if accounted != have {
					t.Errorf("%s: %d layers have it, Which accounts for %d: %+v", p, have, accounted, pr)
				}
				for _, h := range pr.Hidden {
					if h.By.Layer <= h.Layer && h.By.Kind != stack.ByBeingMarker {
						t.Errorf("%s: layer %d hidden by layer %d, not above it", p, h.Layer, h.By.Layer)
					}
				}
			}
		})
	}
}

func TestWhichSingleLayer(t *testing.T) {
	_, merged := teststore.OpenImage(t, teststore.RuleCase(t, "whiteout-file").Layers)
	v, err := stack.New(merged.Layers[1:], view.Single)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := v.Which("etc/.wh.a")
	if err != nil {
		t.Fatal(err)
	}
	if !pr.Shown || pr.Provider.Type != index.TypeReg || len(pr.Hidden) != 0 {
		t.Errorf("a marker of a single-layer view: %+v", pr)
	}
	pr, err = merged.Which("etc/.wh.a")
	if err != nil || pr.Shown || len(pr.Hidden) != 1 || pr.Hidden[0].By.Kind != stack.ByBeingMarker || pr.Hidden[0].Layer != 1 {
		t.Errorf("a marker in the merged view: %+v, %v", pr, err)
	}
}

func TestWhichHiderString(t *testing.T) {
	_, v := teststore.OpenImage(t, testimage.Sample().Layers)
	pr, err := v.Which("var/log/old.log")
	if err != nil || len(pr.Hidden) != 1 {
		t.Fatalf("%+v %v", pr, err)
	}
	want := "opaque directory /var/log in " + v.Layers[2].Digest.String()
	if got := pr.Hidden[0].By.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := v.Which("lib/libc.so.6"); err != nil && !errors.Is(err, stack.ErrNotFound) {
		t.Errorf("a path beneath a symlink: %v", err)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", ".": "", "./etc/": "etc", "/usr//bin/../lib": "usr/lib", "a/b": "a/b"} {
		if got := stack.CleanPath(in); got != want {
			t.Errorf("CleanPath(%q) = %q, want %q", in, got, want)
		}
	}
}
