package viewops

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store"
)

// openImage imports an image of layers into a new store and opens its
// merged view.
func openImage(t *testing.T, layers []testimage.Layer) (*store.Store, *store.View) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := testimage.WriteLayout(dir, testimage.Image{Name: "img", Layers: layers}); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenForWriting(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Import(context.Background(), dir, store.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	target, err := s.Resolve([]string{"img"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.OpenView(target.Digests(), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return s, v
}

func ruleCase(t *testing.T, name string) testimage.RuleCase {
	t.Helper()
	for _, c := range testimage.RuleCases() {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no rule case %q", name)
	return testimage.RuleCase{}
}

// lower is the merged view of v's lowest n layers.
func lower(v *store.View, n int) *store.View {
	return &store.View{Layers: v.Layers[:n]}
}

func sampleView(t *testing.T) *store.View {
	t.Helper()
	_, v := openImage(t, testimage.Sample().Layers)
	return v
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{"": "", "/": "", ".": "", "./etc/": "etc", "/usr//bin/../lib": "usr/lib", "a/b": "a/b"} {
		if got := CleanPath(in); got != want {
			t.Errorf("CleanPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWalkOrder(t *testing.T) {
	_, v := openImage(t, []testimage.Layer{{Entries: []testimage.Entry{
		testimage.Dir("d", 0o755), testimage.File("d/x", "x"), testimage.File("d-x", "y"),
		testimage.File("d.x", "z"), testimage.Dir("d/e", 0o755), testimage.File("d/e/f", "f"),
	}}})
	var got []string
	if err := Walk(v, "/", func(p string, _ store.Node, _ Attr) error {
		got = append(got, p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{"", "d", "d/e", "d/e/f", "d/x", "d-x", "d.x"}
	if len(got) != len(want) {
		t.Fatalf("walk gave %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("walk gave %q, want %q", got, want)
		}
	}
}
