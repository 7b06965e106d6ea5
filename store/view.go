package store

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"sync"

	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
)

// Layer is one extracted layer, opened.
type Layer struct {
	Digest digest.Digest
	Index  *index.Reader
}

// View is what a stack of layers shows: merged with whiteouts applied, or,
// for a single layer with Single set, the layer's own entries.
type View struct {
	Layers []Layer // lowest first
	Single bool
	// links remembers what each hardlink to a lower layer resolved to,
	// shared by the views beneath this one: a chain of such links through
	// N layers would otherwise resolve again beneath every layer above,
	// N³ lookups in all. Nil in a view made by hand: nothing remembered.
	links *linkCache
}

type linkCache struct {
	mu sync.Mutex
	m  map[Ref]resolvedLink
}

type resolvedLink struct {
	e   index.Entry
	ref Ref
	err error
}

// below is the view of the layers beneath layer k.
func (v *View) below(k int) *View { return &View{Layers: v.Layers[:k], links: v.links} }

// Ref is one layer's record: Layer indexes View.Layers.
type Ref struct {
	Layer int
	Rec   uint32
}

// Node is one path of a view: the layer records that make it up, highest
// first. A non-directory has one; a merged directory one per layer whose
// directory of that path merges into it.
type Node []Ref

// Top is the record that provides the node in the view.
func (n Node) Top() Ref { return n[0] }

// ErrCorrupt is wrapped by errors about indexes that cannot be read.
var ErrCorrupt = errors.New("damaged layer index")

// Close closes every layer's index.
func (v *View) Close() {
	for _, l := range v.Layers {
		l.Index.Close()
	}
}

// Root is the view's root directory.
func (v *View) Root() Node {
	if v.Single {
		return Node{{Layer: 0, Rec: 0}}
	}
	n := make(Node, 0, len(v.Layers))
	for i := len(v.Layers) - 1; i >= 0; i-- {
		n = append(n, Ref{Layer: i, Rec: 0})
	}
	return n
}

// layerDir adapts one layer's directory record to whiteout.Dir, keeping
// the first index error it meets since whiteout's interface has none.
type layerDir struct {
	r   *index.Reader
	rec uint32
	err error
}

func (d *layerDir) Lookup(name string) (int, bool) {
	i, ok, err := d.r.Lookup(d.rec, name)
	if err != nil && d.err == nil {
		d.err = err
	}
	return int(i), ok
}

func (d *layerDir) IsDir(child int) bool {
	t, _ := d.r.TypeOf(uint32(child))
	return t == index.TypeDir
}

// Opaque ignores a layer root's mark, as overlayfs does: a .wh..wh..opq at
// the root of a layer hides nothing.
func (d *layerDir) Opaque() bool {
	_, flags := d.r.TypeOf(d.rec)
	return d.rec != 0 && flags&index.FlagOpaque != 0
}

func (d *layerDir) Each(fn func(string, int)) {
	start, count, err := d.r.Children(d.rec)
	if err != nil {
		d.err = err
		return
	}
	for i := start; i < start+count; i++ {
		name, err := d.r.Name(i)
		if err != nil {
			d.err = err
			return
		}
		fn(string(name), int(i))
	}
}

func (v *View) dirs(n Node) ([]whiteout.Dir, []*layerDir) {
	ds := make([]whiteout.Dir, len(n))
	ls := make([]*layerDir, len(n))
	for i, ref := range n {
		ls[i] = &layerDir{r: v.Layers[ref.Layer].Index, rec: ref.Rec}
		ds[i] = ls[i]
	}
	return ds, ls
}

func firstErr(ls []*layerDir) error {
	for _, l := range ls {
		if l.err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, l.err)
		}
	}
	return nil
}

func (v *View) ref(n Node, s whiteout.Source) Ref {
	return Ref{Layer: n[s.Layer].Layer, Rec: uint32(s.Child)}
}

// Lookup finds name in directory dir.
func (v *View) Lookup(dir Node, name string) (Node, bool, error) {
	if v.Single {
		top := dir.Top()
		rec, ok, err := v.Layers[top.Layer].Index.Lookup(top.Rec, name)
		if err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		if !ok {
			return nil, false, nil
		}
		return Node{{Layer: top.Layer, Rec: rec}}, true, nil
	}
	ds, ls := v.dirs(dir)
	srcs := whiteout.Lookup(ds, name)
	if err := firstErr(ls); err != nil {
		return nil, false, err
	}
	if len(srcs) == 0 {
		return nil, false, nil
	}
	out := make(Node, len(srcs))
	for i, s := range srcs {
		out[i] = v.ref(dir, s)
	}
	return out, true, nil
}

// Child is one entry of a directory listing: its name and the record
// that provides it (the whole Node comes from Lookup).
type Child struct {
	Name string
	Top  Ref
}

// List returns directory dir's children, sorted by name.
func (v *View) List(dir Node) ([]Child, error) {
	if v.Single || len(dir) == 1 {
		// One layer's directory needs no merge: its children are sorted
		// already, and only the markers are left out.
		return v.listLayer(dir.Top(), !v.Single)
	}
	ds, ls := v.dirs(dir)
	entries := whiteout.List(ds)
	if err := firstErr(ls); err != nil {
		return nil, err
	}
	out := make([]Child, len(entries))
	for i, e := range entries {
		out[i] = Child{Name: e.Name, Top: v.ref(dir, e.Top)}
	}
	return out, nil
}

func (v *View) listLayer(top Ref, skipMarkers bool) ([]Child, error) {
	r := v.Layers[top.Layer].Index
	start, count, err := r.Children(top.Rec)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	out := make([]Child, 0, count)
	for i := start; i < start+count; i++ {
		name, err := r.Name(i)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		if skipMarkers && whiteout.IsMarker(string(name)) {
			continue
		}
		out = append(out, Child{Name: string(name), Top: Ref{Layer: top.Layer, Rec: i}})
	}
	return out, nil
}

// Entry returns the attributes a node shows, and the record they come
// from. A directory a layer only implies shows what the view beneath that
// layer shows at its path, when that is a directory (rule 6 of the
// semantics: the attributes a runtime's copy-up would keep); a hardlink to
// a lower layer's file shows that file.
func (v *View) Entry(n Node) (index.Entry, Ref, error) {
	top := n.Top()
	e, err := v.record(top)
	if err != nil {
		return e, top, err
	}
	if v.Single {
		if e.Type == index.TypeLowerLink {
			// Nothing beneath a single layer to resolve the link in.
			e.Type, e.Size, e.Link = index.TypeReg, 0, ""
		}
		return e, top, nil
	}
	switch {
	case e.Type == index.TypeLowerLink:
		return v.lowerLinkTarget(top, e)
	case e.Type != index.TypeDir || e.Flags&index.FlagImplied == 0:
		return e, top, nil
	}
	if top.Rec != 0 {
		p, err := v.Layers[top.Layer].Index.Path(top.Rec)
		if err != nil {
			return e, top, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		below := v.below(top.Layer)
		if bn, ok, err := below.Resolve(p); err != nil {
			return e, top, err
		} else if ok && below.Type(bn.Top()) == index.TypeDir {
			be, _, err := below.Entry(bn)
			be.Name = e.Name
			return be, top, err
		}
	} else if top.Layer > 0 {
		be, _, err := v.below(top.Layer).Entry(Node{{Layer: top.Layer - 1, Rec: 0}})
		return be, top, err
	}
	e.Mode, e.UID, e.GID, e.Mtime, e.MtimeNs, e.Xattrs = 0o755, 0, 0, 0, 0, nil
	return e, top, nil
}

func (v *View) record(ref Ref) (index.Entry, error) {
	e, err := v.Layers[ref.Layer].Index.Entry(ref.Rec)
	if err != nil {
		return e, fmt.Errorf("%w: layer %s: %v", ErrCorrupt, v.Layers[ref.Layer].Digest, err)
	}
	return e, nil
}

// lowerLinkTarget resolves a hardlink to a file of a lower layer in the
// view beneath the link's own layer.
func (v *View) lowerLinkTarget(ref Ref, link index.Entry) (index.Entry, Ref, error) {
	if v.links == nil {
		return v.resolveLowerLink(ref, link)
	}
	v.links.mu.Lock()
	r, ok := v.links.m[ref]
	v.links.mu.Unlock()
	if !ok {
		r.e, r.ref, r.err = v.resolveLowerLink(ref, link)
		v.links.mu.Lock()
		v.links.m[ref] = r
		v.links.mu.Unlock()
	}
	return r.e, r.ref, r.err
}

func (v *View) resolveLowerLink(ref Ref, link index.Entry) (index.Entry, Ref, error) {
	below := v.below(ref.Layer)
	n, ok, err := below.Resolve(link.Link)
	if err != nil {
		return link, ref, err
	}
	if !ok {
		return link, ref, fmt.Errorf("hardlink to %q: %w in the layers beneath", link.Link, ErrNotFound)
	}
	e, _, err := below.Entry(n)
	if err != nil {
		return e, ref, err
	}
	if e.Type == index.TypeDir {
		return link, ref, fmt.Errorf("hardlink to directory %q", link.Link)
	}
	// The link is a file of its own, with the target's bytes and
	// attributes: the lower file may be hidden, replaced or linked again
	// above, so no link count could hold for both.
	e.Name, e.Nlink = link.Name, 1
	return e, ref, nil
}

// Resolve walks a slash-separated path from the root.
func (v *View) Resolve(p string) (Node, bool, error) {
	if len(v.Layers) == 0 {
		return nil, false, nil
	}
	n := v.Root()
	for _, name := range strings.Split(path.Clean("/"+p), "/") {
		if name == "" {
			continue
		}
		if t, _ := v.Layers[n.Top().Layer].Index.TypeOf(n.Top().Rec); t != index.TypeDir {
			return nil, false, nil
		}
		next, ok, err := v.Lookup(n, name)
		if err != nil || !ok {
			return nil, false, err
		}
		n = next
	}
	return n, true, nil
}

// Type is the type of the record that provides a node, cheaply.
func (v *View) Type(r Ref) index.Type {
	t, _ := v.Layers[r.Layer].Index.TypeOf(r.Rec)
	return t
}
