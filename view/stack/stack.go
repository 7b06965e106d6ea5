// Package stack is the view of a stack of extracted layers: the one place
// that answers what a path shows (docs/semantics.md), from the layers'
// indexes and the merge rules of package whiteout, and explains it
// (Which). Consumers read it through the view.View interface.
package stack

import (
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
)

// Layer is one extracted layer, opened.
type Layer struct {
	Digest digest.Digest
	Index  *index.Reader
}

// Ref and Node name layer records; they are view's, so that consumers
// need not import this package to hold a node.
type (
	Ref  = view.Ref
	Node = view.Node
)

// View is what a stack of layers shows, as its Kind says.
type View struct {
	Layers []Layer // lowest first
	kind   view.Kind
	// links remembers what each hardlink to a lower layer resolved to,
	// shared by the views beneath this one: a chain of such links through
	// N layers would otherwise resolve again beneath every layer above,
	// N³ lookups in all. Nil in a view made by hand: nothing remembered.
	links *linkCache
	// life is shared likewise, so that Close waits for reads through any
	// of them. Nil in a view made by hand: Close does not wait.
	life *lifetime
}

// lifetime lets Close wait for the reads of a view under way. Close
// unmaps the layers' indexes, and reading an unmapped page is a fault no
// recover catches: a read racing Close, as when a program serving the
// view from many goroutines shuts down, would end the process.
type lifetime struct {
	reading atomic.Int64
	closed  atomic.Bool
}

// errClosed is the error of a read of a closed view.
var errClosed = fmt.Errorf("view: %w", fs.ErrClosed)

// enter starts a read of the view's indexes, refused once Close has
// begun; exit ends it. A read may enter again inside another.
func (v *View) enter() error {
	l := v.life
	if l == nil {
		return nil
	}
	l.reading.Add(1)
	if l.closed.Load() {
		l.reading.Add(-1)
		return errClosed
	}
	return nil
}

func (v *View) exit() {
	if v.life != nil {
		v.life.reading.Add(-1)
	}
}

var _ view.View = (*View)(nil)

type linkCache struct {
	mu sync.Mutex
	m  map[Ref]resolvedLink
}

type resolvedLink struct {
	e   index.Entry
	ref Ref
	err error
}

// New makes the view of layers (lowest first) of the given kind. Single
// takes exactly one layer; Overlay shows the highest of its layers, and
// those beneath resolve what it only implies or links to (rule O). The
// view owns the layers: Close closes them.
func New(layers []Layer, kind view.Kind) (*View, error) {
	switch {
	case kind != view.Merged && kind != view.Single && kind != view.Overlay:
		return nil, fmt.Errorf("unknown view %s", kind)
	case len(layers) == 0:
		// Its root would be no layer's record.
		return nil, errors.New("a view takes at least one layer")
	case kind == view.Single && len(layers) != 1:
		return nil, fmt.Errorf("a single-layer view takes one layer, not %d", len(layers))
	}
	return &View{Layers: layers, kind: kind, links: &linkCache{m: map[Ref]resolvedLink{}}, life: &lifetime{}}, nil
}

// Merged is the merged view of the lowest n layers of v, sharing v's
// link cache and its indexes: closing v closes it too.
func (v *View) Merged(n int) *View {
	return &View{Layers: v.Layers[:n], links: v.links, life: v.life}
}

// below is the view of the layers beneath layer k.
func (v *View) below(k int) *View { return v.Merged(k) }

// Kind is how the view shows its layers.
func (v *View) Kind() view.Kind { return v.kind }

// single is whether the view shows one layer's own entries, unmerged:
// the highest, in an overlay-format view given the layers beneath it.
func (v *View) single() bool { return v.kind != view.Merged }

var (
	// ErrCorrupt is wrapped by errors about indexes that cannot be read.
	ErrCorrupt = errors.New("damaged layer index")
	// ErrNotFound is wrapped by errors about a path the view lacks, and
	// by the store's about names and digests it lacks. It is also
	// fs.ErrNotExist, as any io/fs file system's missing file is.
	ErrNotFound error = notFound{}
)

type notFound struct{}

func (notFound) Error() string { return "not found" }

func (notFound) Is(target error) bool { return target == fs.ErrNotExist }

// indexError is the view's error for err, from reading an index: reading
// a closed one is the caller's mistake and says so; anything else is
// damage.
func indexError(err error) error {
	if errors.Is(err, fs.ErrClosed) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrCorrupt, err)
}

// Close closes every layer's index, once the reads under way in other
// goroutines have returned; reading the view after it is an error that
// wraps fs.ErrClosed. A second Close does nothing.
func (v *View) Close() {
	if l := v.life; l != nil {
		if l.closed.Swap(true) {
			return
		}
		for l.reading.Load() != 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	for _, l := range v.Layers {
		l.Index.Close()
	}
}

// Totals counts the entries and content bytes of the view's layers.
func (v *View) Totals() (entries, contentBytes uint64) {
	for _, l := range v.Layers {
		info := l.Index.Info()
		entries += uint64(info.Entries)
		contentBytes += uint64(info.ContentBytes)
	}
	return entries, contentBytes
}

// HasXattrs is false when no record of the view's layers carries an
// xattr, as their indexes count. The overlay format makes xattrs of the
// markers.
func (v *View) HasXattrs() bool {
	if v.kind == view.Overlay {
		return true
	}
	for _, l := range v.Layers {
		if l.Index.Info().XattrEntries != 0 {
			return true
		}
	}
	return false
}

// Root is the view's root directory.
func (v *View) Root() Node {
	if v.single() {
		return Node{{Layer: len(v.Layers) - 1, Rec: index.Root}}
	}
	n := make(Node, 0, len(v.Layers))
	for i := len(v.Layers) - 1; i >= 0; i-- {
		n = append(n, Ref{Layer: i, Rec: index.Root})
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
	return d.rec != index.Root && flags&index.FlagOpaque != 0
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
			return indexError(l.err)
		}
	}
	return nil
}

func (v *View) ref(n Node, s whiteout.Source) Ref {
	return Ref{Layer: n[s.Layer].Layer, Rec: uint32(s.Child)}
}

// Lookup finds name in directory dir. In the overlay format (rule O) the
// markers are never found, and a name with no entry of its own is found
// as its whiteout device when the layer has a .wh.NAME.
func (v *View) Lookup(dir Node, name string) (Node, bool, error) {
	if err := v.enter(); err != nil {
		return nil, false, err
	}
	defer v.exit()
	if v.kind != view.Overlay {
		return v.lookup(dir, name)
	}
	if whiteout.IsMarker(name) {
		return nil, false, nil
	}
	n, ok, err := v.lookup(dir, name)
	if err != nil || ok {
		return n, ok, err
	}
	return v.lookup(dir, whiteout.Prefix+name)
}

func (v *View) lookup(dir Node, name string) (Node, bool, error) {
	if v.single() {
		top := dir.Top()
		rec, ok, err := v.Layers[top.Layer].Index.Lookup(top.Rec, name)
		if err != nil {
			return nil, false, indexError(err)
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

// List returns directory dir's children, sorted by name.
func (v *View) List(dir Node) ([]view.Child, error) {
	if err := v.enter(); err != nil {
		return nil, err
	}
	defer v.exit()
	if v.single() || len(dir) == 1 {
		// One layer's directory needs no merge: its children are sorted
		// already, and only the markers are left out or, in the overlay
		// format, shown as devices.
		return v.listLayer(dir.Top())
	}
	ds, ls := v.dirs(dir)
	entries := whiteout.List(ds)
	if err := firstErr(ls); err != nil {
		return nil, err
	}
	out := make([]view.Child, len(entries))
	for i, e := range entries {
		out[i] = v.child(e.Name, v.ref(dir, e.Top))
	}
	return out, nil
}

// child is a listed name: a lower hardlink is listed as a regular file,
// whatever it resolves to.
func (v *View) child(name string, r Ref) view.Child {
	t := v.typeOf(r)
	if t == index.TypeLowerLink {
		t = index.TypeReg
	}
	return view.Child{Name: name, Type: viewType(t), Ino: v.ino(r), Top: r}
}

func (v *View) listLayer(top Ref) ([]view.Child, error) {
	r := v.Layers[top.Layer].Index
	start, count, err := r.Children(top.Rec)
	if err != nil {
		return nil, indexError(err)
	}
	out := make([]view.Child, 0, count)
	renamed := false
	for i := start; i < start+count; i++ {
		name, err := r.Name(i)
		if err != nil {
			return nil, indexError(err)
		}
		c := v.child(string(name), Ref{Layer: top.Layer, Rec: i})
		if v.kind != view.Single && whiteout.IsMarker(c.Name) {
			hidden, ok := whiteout.Hidden(c.Name)
			if v.kind == view.Merged || !ok {
				continue
			}
			// Overlay format: .wh.X is the device X, unless X is there too.
			if _, real, err := r.Lookup(top.Rec, hidden); err != nil {
				return nil, indexError(err)
			} else if real {
				continue
			}
			c.Name, c.Type, renamed = hidden, view.TypeChar, true
		}
		out = append(out, c)
	}
	if renamed {
		slices.SortFunc(out, func(a, b view.Child) int { return strings.Compare(a.Name, b.Name) })
	}
	return out, nil
}

// entry returns the attributes a node shows, and the record they come
// from. A directory a layer only implies shows what the view beneath that
// layer shows at its path, when that is a directory (rule 6 of the
// semantics: the attributes a runtime's copy-up would keep); a hardlink to
// a lower layer's file shows that file.
func (v *View) entry(n Node) (index.Entry, Ref, error) {
	top := n.Top()
	e, err := v.record(top)
	if err != nil {
		return e, top, err
	}
	if v.single() && top.Layer == 0 {
		if e.Type == index.TypeLowerLink {
			// Nothing beneath a single layer to resolve the link in.
			e.Type, e.Size, e.Link = index.TypeReg, 0, ""
		}
		return e, top, nil
	}
	// An overlay-format layer given the layers beneath it resolves what it
	// implies and links to in them, as the merged view does.
	switch {
	case e.Type == index.TypeLowerLink:
		return v.lowerLinkTarget(top, e)
	case e.Type != index.TypeDir || e.Flags&index.FlagImplied == 0:
		return e, top, nil
	}
	if top.Rec != index.Root {
		p, err := v.Layers[top.Layer].Index.Path(top.Rec)
		if err != nil {
			return e, top, indexError(err)
		}
		below := v.below(top.Layer)
		if bn, ok, err := below.Resolve(p); err != nil {
			return e, top, err
		} else if ok && below.typeOf(bn.Top()) == index.TypeDir {
			be, _, err := below.entry(bn)
			be.Name = e.Name
			return be, top, err
		}
	} else if top.Layer > 0 {
		be, _, err := v.below(top.Layer).entry(Node{{Layer: top.Layer - 1, Rec: index.Root}})
		return be, top, err
	}
	e.Mode, e.UID, e.GID, e.Mtime, e.MtimeNs, e.Xattrs = 0o755, 0, 0, 0, 0, nil
	return e, top, nil
}

func (v *View) record(ref Ref) (index.Entry, error) {
	e, err := v.Layers[ref.Layer].Index.Entry(ref.Rec)
	if err != nil {
		return e, indexError(fmt.Errorf("layer %s: %w", v.Layers[ref.Layer].Digest, err))
	}
	return e, nil
}

// ResolveLowerLink resolves the hardlink to a lower layer's file at r,
// failing as the view would (rule R7).
func (v *View) ResolveLowerLink(r Ref) error {
	if err := v.enter(); err != nil {
		return err
	}
	defer v.exit()
	e, err := v.record(r)
	if err == nil {
		_, _, err = v.lowerLinkTarget(r, e)
	}
	return err
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
	e, _, err := below.entry(n)
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
	if err := v.enter(); err != nil {
		return nil, false, err
	}
	defer v.exit()
	if len(v.Layers) == 0 {
		return nil, false, nil
	}
	n := v.Root()
	for _, name := range strings.Split(path.Clean("/"+p), "/") {
		if name == "" {
			continue
		}
		if v.typeOf(n.Top()) != index.TypeDir {
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

// typeOf is the type of the record that provides a node, cheaply.
func (v *View) typeOf(r Ref) index.Type {
	t, _ := v.Layers[r.Layer].Index.TypeOf(r.Rec)
	return t
}
