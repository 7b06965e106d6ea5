package viewops

import (
	"errors"
	"io"
	"io/fs"
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

// TestMissingPath checks that a path the view lacks fails as a missing
// file does anywhere in Go, and as the view's own not found.
func TestMissingPath(t *testing.T) {
	v := sampleView(t)
	for _, op := range []struct {
		name string
		run  func() error
	}{
		{"Cat", func() error { return Cat(io.Discard, v, "no/such", nil) }},
		{"List", func() error { return List(io.Discard, v, "no-such", ListOptions{}) }},
		{"Walk", func() error { return Walk(v, "no-such", func(string, view.Node, view.Attr) error { return nil }) }},
	} {
		err := op.run()
		if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, stack.ErrNotFound) {
			t.Errorf("%s of a missing path: %v, want fs.ErrNotExist and stack.ErrNotFound", op.name, err)
		}
	}
}
