package viewops

import (
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

func sampleView(t *testing.T) *stack.View {
	t.Helper()
	_, v := teststore.OpenImage(t, testimage.Sample().Layers)
	return v
}

func TestWalkOrder(t *testing.T) {
	_, v := teststore.OpenImage(t, []testimage.Layer{{Entries: []testimage.Entry{
		testimage.Dir("d", 0o755), testimage.File("d/x", "x"), testimage.File("d-x", "y"),
		testimage.File("d.x", "z"), testimage.Dir("d/e", 0o755), testimage.File("d/e/f", "f"),
	}}})
	var got []string
	if err := Walk(v, "/", func(p string, _ view.Node, _ view.Attr) error {
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
