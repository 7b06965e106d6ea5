package stack_test

import (
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

// TestHasXattrs: a view says it has no xattrs only when no layer holds
// one, and its overlay format always may.
func TestHasXattrs(t *testing.T) {
	plain := testimage.Layer{Entries: []testimage.Entry{testimage.File("a", "a\n")}}
	withXattr := testimage.Layer{Entries: []testimage.Entry{testimage.File("b", "b\n").WithXattr("user.b", "1")}}
	for _, c := range []struct {
		name   string
		layers []testimage.Layer
		want   bool
	}{
		{"none", []testimage.Layer{plain}, false},
		{"lower", []testimage.Layer{withXattr, plain}, true},
		{"upper", []testimage.Layer{plain, withXattr}, true},
	} {
		_, merged := teststore.OpenImage(t, c.layers)
		if got := merged.HasXattrs(); got != c.want {
			t.Errorf("%s: merged view HasXattrs %v, want %v", c.name, got, c.want)
		}
		overlay, err := stack.New(merged.Layers[:1], view.Overlay)
		if err != nil {
			t.Fatal(err)
		}
		if !overlay.HasXattrs() {
			t.Errorf("%s: the overlay format says it has no xattrs", c.name)
		}
	}
}

// TestNewRefusesUnknownKind: a Kind that is none of view's would show
// the highest layer as no rule says, so it is refused.
func TestNewRefusesUnknownKind(t *testing.T) {
	_, merged := teststore.OpenImage(t, []testimage.Layer{{Entries: []testimage.Entry{testimage.File("a", "a\n")}}})
	for _, kind := range []view.Kind{-1, view.Overlay + 1} {
		if _, err := stack.New(merged.Layers, kind); err == nil {
			t.Errorf("New took %s", kind)
		}
	}
}

// TestNewRefusesNoLayers: a view of no layers has no root to read, of
// any kind.
func TestNewRefusesNoLayers(t *testing.T) {
	for _, kind := range []view.Kind{view.Merged, view.Single, view.Overlay} {
		if _, err := stack.New(nil, kind); err == nil {
			t.Errorf("New took no layers for a %s view", kind)
		}
	}
}
