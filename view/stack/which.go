package stack

import (
	"fmt"
	"path"
	"strings"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
)

// LayerEntry is one layer's own entry for a path.
type LayerEntry struct {
	Layer  int // position in the view, lowest first
	Digest digest.Digest
	Type   index.Type
}

// HiderKind is how a higher layer hides a lower layer's entry.
type HiderKind int

const (
	// ByWhiteout is a .wh.NAME marker for the path or one of its parents.
	ByWhiteout HiderKind = iota + 1
	// ByOpaque is an opaque directory above the path.
	ByOpaque
	// ByReplace is a non-directory at the path or one of its parents, or
	// a directory over a non-directory: the two do not merge.
	ByReplace
	// ByBeingMarker is a whiteout marker of the layer itself: a merged
	// view applies markers and never shows them.
	ByBeingMarker
)

// Hider is what hides a lower layer's entry: the marker, the opaque
// directory or the replacing entry, in the layer named.
type Hider struct {
	Kind   HiderKind
	Layer  int
	Digest digest.Digest
	// Path is the marker's path, the opaque directory's, or the
	// replacing entry's.
	Path string
	// Type is the replacing entry's type, for ByReplace.
	Type index.Type
}

func (h Hider) String() string {
	switch h.Kind {
	case ByWhiteout:
		return fmt.Sprintf("whiteout %s in %s", showPath(h.Path), h.Digest)
	case ByOpaque:
		return fmt.Sprintf("opaque directory %s in %s", showPath(h.Path), h.Digest)
	case ByBeingMarker:
		return fmt.Sprintf("being a whiteout marker of %s, which a merged view never shows", h.Digest)
	}
	return fmt.Sprintf("%s %s in %s", h.Type, showPath(h.Path), h.Digest)
}

// Hidden is a lower layer's entry for a path that the view does not show.
type Hidden struct {
	LayerEntry
	// By is the nearest hider above the entry's layer, or the entry
	// itself for a marker.
	By Hider
}

// Provenance says where a path of a view comes from.
type Provenance struct {
	Path  string
	Shown bool
	// Provider is the layer whose entry the view shows, when Shown.
	Provider LayerEntry
	// Merged are the lower layers whose directories merge into a shown
	// directory, highest first: none beneath an opaque one, which hides
	// them.
	Merged []LayerEntry
	// Hidden are the layers' entries for the path that the view hides,
	// highest first.
	Hidden []Hidden
}

// Which tells which layer provides p in the merged view v, which lower layers' entries
// for p it hides, and what hid each of them.
//
// A path the view does not show as it is written, under a symlink of
// the view ("bin/ls" where bin is a symlink to "usr/bin"), is the path a
// mount of the view shows there: the symlinks among its directories are
// followed, its own entry is what is asked about, and Provenance.Path
// says where it led. That is so even when a lower layer has the path as
// written, hidden by the symlink: the mount shows what the symlink leads
// to. Only when the mount shows nothing there either are the hidden
// entries of the path as written what is answered.
func (v *View) Which(p string) (Provenance, error) {
	if err := v.enter(); err != nil {
		return Provenance{}, err
	}
	defer v.exit()
	pr, err := v.which(CleanPath(p))
	if err != nil || pr.Shown {
		return pr, err
	}
	dir, name := path.Split(pr.Path)
	if dir == "" {
		return pr, nil
	}
	r, err := view.ResolvePath(v, dir, true)
	if err != nil || r.Attr.Type != view.TypeDir || join(r.Path, name) == pr.Path {
		return pr, nil
	}
	if followed, err := v.which(join(r.Path, name)); err != nil || followed.Shown || len(pr.Hidden) == 0 && len(followed.Hidden) > 0 {
		return followed, err
	}
	return pr, nil
}

func (v *View) which(p string) (Provenance, error) {
	pr := Provenance{Path: p}
	n, shown, err := v.Resolve(p)
	if err != nil {
		return pr, fmt.Errorf("%s: %w", showPath(p), err)
	}
	pr.Shown = shown
	inNode := map[int]bool{}
	for _, ref := range n {
		inNode[ref.Layer] = true
	}
	// The node of an opaque directory keeps the lower directories beneath
	// it, whose children it hides: they merge into nothing.
	opaque := -1
	for _, ref := range n {
		if (&layerDir{r: v.Layers[ref.Layer].Index, rec: ref.Rec}).Opaque() {
			opaque = ref.Layer
			break
		}
	}
	comps := strings.Split(p, "/")
	if p == "" {
		comps = nil
	}
	for k := len(v.Layers) - 1; k >= 0; k-- {
		l := v.Layers[k]
		rec, ok, err := l.Index.Walk(p)
		if err != nil {
			return pr, fmt.Errorf("%s: layer %s: %w", showPath(p), l.Digest, err)
		}
		if !ok {
			continue
		}
		t, _ := l.Index.TypeOf(rec)
		le := LayerEntry{Layer: k, Digest: l.Digest, Type: t}
		switch {
		case shown && k == n.Top().Layer:
			pr.Provider = le
		case shown && inNode[k] && k < opaque:
			pr.Hidden = append(pr.Hidden, Hidden{LayerEntry: le, By: Hider{Kind: ByOpaque, Layer: opaque, Digest: v.Layers[opaque].Digest, Path: p}})
		case shown && inNode[k]:
			pr.Merged = append(pr.Merged, le)
		case isMarkerPath(comps):
			pr.Hidden = append(pr.Hidden, Hidden{LayerEntry: le, By: Hider{Kind: ByBeingMarker, Layer: k, Digest: l.Digest, Path: p}})
		default:
			by, found, err := hider(v, comps, k, t)
			if err != nil {
				return pr, fmt.Errorf("%s: %w", showPath(p), err)
			}
			if !found {
				return pr, fmt.Errorf("%s: layer %s has it and the view hides it, but nothing above hides it: %w", showPath(p), l.Digest, ErrCorrupt)
			}
			pr.Hidden = append(pr.Hidden, Hidden{LayerEntry: le, By: by})
		}
	}
	return pr, nil
}

func isMarkerPath(comps []string) bool {
	for _, c := range comps {
		if whiteout.IsMarker(c) {
			return true
		}
	}
	return false
}

// hider finds, in the layers above layer k, the nearest one that hides
// layer k's entry of type t at the path made of comps.
func hider(v *View, comps []string, k int, t index.Type) (Hider, bool, error) {
	for j := k + 1; j < len(v.Layers); j++ {
		h, found, err := hiderIn(v.Layers[j], comps, t)
		if err != nil || found {
			h.Layer = j
			return h, found, err
		}
	}
	return Hider{}, false, nil
}

// hiderIn walks comps down one layer, asking at each step how that
// layer covers a lower entry there, by the rule whiteout.Lookup obeys.
func hiderIn(l Layer, comps []string, t index.Type) (Hider, bool, error) {
	h := Hider{Digest: l.Digest}
	d := &layerDir{r: l.Index, rec: index.Root}
	for i, c := range comps {
		dir := strings.Join(comps[:i], "/")
		at := whiteout.At(d, c)
		if d.err != nil {
			return h, false, fmt.Errorf("layer %s: %w", l.Digest, d.err)
		}
		// Above the last component the lower entry's ancestors are
		// directories.
		lowerIsDir := i < len(comps)-1 || t == index.TypeDir
		switch at.Covers(lowerIsDir) {
		case whiteout.CoveredByOpaque:
			h.Kind, h.Path = ByOpaque, dir
		case whiteout.CoveredByReplace:
			h.Kind, h.Path = ByReplace, join(dir, c)
			h.Type, _ = l.Index.TypeOf(uint32(at.Child))
		case whiteout.CoveredByWhiteout:
			h.Kind, h.Path = ByWhiteout, join(dir, whiteout.Prefix+c)
		default:
			if !at.Found {
				return h, false, nil
			}
			d.rec = uint32(at.Child)
			continue
		}
		return h, true, nil
	}
	return h, false, nil
}

// CleanPath turns a path as a user writes it ("/etc/", "./etc", "") into
// the form views and indexes use: no leading or trailing slash, "" for
// the root.
func CleanPath(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// join is path.Join for CleanPath's form.
func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// showPath prints p for messages and line-oriented output, "/" for the
// root, quoted when it holds a newline, tab, backslash or other control
// character.
func showPath(p string) string {
	return output.Name("/" + p)
}
