package whiteout

import (
	"strings"
	"testing"
)

// FuzzValidate checks that a marker Validate accepts hides a plain name
// of its own directory.
func FuzzValidate(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		if Validate(name) != nil {
			return
		}
		h, ok := Hidden(name)
		if !ok {
			if IsMarker(name) && !strings.HasPrefix(name, metaPrefix) {
				t.Fatalf("%q is a whiteout that hides nothing", name)
			}
			return
		}
		if h == "" || h == "." || h == ".." || strings.Contains(h, "/") || Prefix+h != name {
			t.Fatalf("Validate accepts %q, which hides %q", name, h)
		}
	})
}

// fuzzDir is one layer's directory built from fuzz bytes.
type fuzzDir struct {
	names  []string
	dirs   map[int]bool
	opaque bool
}

func (d *fuzzDir) Lookup(name string) (int, bool) {
	for i, n := range d.names {
		if n == name {
			return i, true
		}
	}
	return 0, false
}
func (d *fuzzDir) IsDir(child int) bool { return d.dirs[child] }
func (d *fuzzDir) Opaque() bool         { return d.opaque }
func (d *fuzzDir) Each(fn func(string, int)) {
	for i, n := range d.names {
		fn(n, i)
	}
}

// parseStack reads a stack, highest layer first, from lines: "--" starts
// the next layer, "opaque" marks the current one opaque, "NAME/" is a
// directory and any other line a non-directory. A layer holds each name
// once, as an index does.
func parseStack(spec string) []Dir {
	var stack []Dir
	cur := &fuzzDir{dirs: map[int]bool{}}
	for _, line := range strings.Split(spec, "\n") {
		switch {
		case line == "--":
			stack = append(stack, cur)
			cur = &fuzzDir{dirs: map[int]bool{}}
		case line == "opaque":
			cur.opaque = true
		default:
			name, isDir := strings.CutSuffix(line, "/")
			if name == "" || strings.Contains(name, "/") {
				continue
			}
			if _, dup := cur.Lookup(name); dup {
				continue
			}
			if isDir {
				cur.dirs[len(cur.names)] = true
			}
			cur.names = append(cur.names, name)
		}
	}
	return append(stack, cur)
}

// FuzzMerge checks that a merged listing and a merged lookup agree: List
// shows a name exactly when Lookup finds it, from the same top entry, and
// shows no marker.
func FuzzMerge(f *testing.F) {
	f.Fuzz(func(t *testing.T, spec string) {
		stack := parseStack(spec)
		listed := map[string]Source{}
		for _, e := range List(stack) {
			if IsMarker(e.Name) {
				t.Fatalf("List shows marker %q", e.Name)
			}
			listed[e.Name] = e.Top
		}
		names := map[string]bool{}
		for _, d := range stack {
			d.Each(func(n string, _ int) {
				names[n] = true
				if h, ok := Hidden(n); ok {
					names[h] = true
				}
			})
		}
		for n := range names {
			srcs := Lookup(stack, n)
			top, shown := listed[n]
			switch {
			case shown != (len(srcs) > 0):
				t.Fatalf("%q: listed %v, Lookup %v", n, shown, srcs)
			case shown && srcs[0] != top:
				t.Fatalf("%q: listed from %v, Lookup from %v", n, top, srcs[0])
			}
			for i := 1; i < len(srcs); i++ {
				if srcs[i].Layer <= srcs[i-1].Layer || !stack[srcs[i].Layer].IsDir(srcs[i].Child) {
					t.Fatalf("%q: Lookup merges %v", n, srcs)
				}
			}
		}
	})
}
