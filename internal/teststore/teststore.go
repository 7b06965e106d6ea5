// Package teststore builds stores from test images for the tests of the
// packages that read views.
package teststore

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/source/archive"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

// OpenImage imports an image of layers into a new store and opens its
// merged view, closed when the test ends.
func OpenImage(t testing.TB, layers []testimage.Layer) (*store.Store, *stack.View) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := testimage.WriteLayout(dir, testimage.Image{Name: "img", Layers: layers}); err != nil {
		t.Fatal(err)
	}
	s, err := store.OpenForWriting(filepath.Join(t.TempDir(), "store"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := archive.Import(context.Background(), s, dir, archive.Options{}); err != nil {
		t.Fatal(err)
	}
	target, err := s.Resolve([]string{"img"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.OpenView(target.Digests(), view.Merged)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return s, v
}

// RuleCase is the rule case of internal/testimage called name.
func RuleCase(t testing.TB, name string) testimage.RuleCase {
	t.Helper()
	for _, c := range testimage.RuleCases() {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no rule case %q", name)
	return testimage.RuleCase{}
}
