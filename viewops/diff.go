package viewops

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/opencontainers/go-digest"
)

// Change kinds.
const (
	Added    = 'A'
	Deleted  = 'D'
	Modified = 'M'
)

// Change is one path that differs between two views.
type Change struct {
	Kind byte
	// Path is as CleanPath gives it: "" is the root.
	Path string
	// Changed names what differs in a modified path, in the order of
	// Attributes.
	Changed []string
	// Layer is the layer whose entry the path is, as which names it: of
	// view b for an added or modified path, of view a for a deleted one.
	Layer digest.Digest
}

// Attributes are what Diff compares, as Change.Changed names them:
// owner is the uid or gid, content the bytes' digest, device the
// device numbers, nlink the link count of a path that is a directory on
// neither side (a directory's is 1 in every view): a hardlink made or
// broken changes it and nothing else.
var Attributes = []string{"type", "mode", "owner", "size", "mtime", "content", "link", "device", "xattrs", "nlink"}

func (c Change) String() string {
	p := c.Path
	if p == "" {
		p = "."
	}
	return string(c.Kind) + " " + output.Name(p)
}

// Diff lists every path that differs from view a to view b, sorted by
// path: added, deleted, or modified (type, mode, owner, size, mtime,
// content digest, link target, device numbers, xattrs or link count
// differ). Children
// of an added or deleted directory are listed too, and a path whose type
// changes from or to a directory takes the directory's children with it.
// Only the indexes are read: contents are compared by digest.
func Diff(a, b *stack.View) ([]Change, error) {
	d := &differ{a: a, b: b}
	if a.Kind() == b.Kind() {
		for d.shared < len(a.Layers) && d.shared < len(b.Layers) && a.Layers[d.shared].Digest == b.Layers[d.shared].Digest {
			d.shared++
		}
	}
	na, nb := a.Root(), b.Root()
	if err := d.pair("", na, nb); err != nil {
		return nil, err
	}
	sort.Slice(d.out, func(i, j int) bool { return d.out[i].Path < d.out[j].Path })
	return d.out, nil
}

type differ struct {
	a, b *stack.View
	// shared is how many of the lowest layers the two views have in common.
	shared int
	out    []Change
}

// same reports whether two nodes are made of the same records of layers
// the views share, so that everything beneath them is the same too: a
// directory's subtree depends only on its node's layers and, for
// hardlinks into lower layers, on the layers beneath them.
func (d *differ) same(na, nb view.Node) bool {
	if len(na) != len(nb) {
		return false
	}
	for i := range na {
		if na[i] != nb[i] || na[i].Layer >= d.shared {
			return false
		}
	}
	return true
}

func (d *differ) pair(p string, na, nb view.Node) error {
	if d.same(na, nb) {
		return nil
	}
	ea, err := d.a.Attr(na)
	if err != nil {
		return fmt.Errorf("diff %s: %w", showPath(p), err)
	}
	eb, err := d.b.Attr(nb)
	if err != nil {
		return fmt.Errorf("diff %s: %w", showPath(p), err)
	}
	if changed := changedAttrs(ea, eb); changed != nil {
		d.out = append(d.out, Change{Kind: Modified, Path: p, Changed: changed, Layer: layerOf(d.b, nb)})
	}
	dirA, dirB := ea.Type == view.TypeDir, eb.Type == view.TypeDir
	switch {
	case dirA && dirB:
		return d.dirs(p, na, nb)
	case dirA:
		return d.subtree(d.a, p, na, Deleted)
	case dirB:
		return d.subtree(d.b, p, nb, Added)
	}
	return nil
}

func (d *differ) dirs(p string, na, nb view.Node) error {
	ca, err := d.a.List(na)
	if err != nil {
		return fmt.Errorf("diff %s: %w", showPath(p), err)
	}
	cb, err := d.b.List(nb)
	if err != nil {
		return fmt.Errorf("diff %s: %w", showPath(p), err)
	}
	i, j := 0, 0
	for i < len(ca) || j < len(cb) {
		switch {
		case j == len(cb) || (i < len(ca) && ca[i].Name < cb[j].Name):
			if err := d.one(d.a, p, na, ca[i].Name, Deleted); err != nil {
				return err
			}
			i++
		case i == len(ca) || cb[j].Name < ca[i].Name:
			if err := d.one(d.b, p, nb, cb[j].Name, Added); err != nil {
				return err
			}
			j++
		default:
			name := ca[i].Name
			cp := join(p, name)
			xa, err := lookup(d.a, na, cp, name)
			if err != nil {
				return fmt.Errorf("diff: %w", err)
			}
			xb, err := lookup(d.b, nb, cp, name)
			if err != nil {
				return fmt.Errorf("diff: %w", err)
			}
			if err := d.pair(cp, xa, xb); err != nil {
				return err
			}
			i++
			j++
		}
	}
	return nil
}

// one records a child that only one side has, and all beneath it.
func (d *differ) one(v *stack.View, dir string, n view.Node, name string, kind byte) error {
	p := join(dir, name)
	cn, err := lookup(v, n, p, name)
	if err != nil {
		return fmt.Errorf("diff: %w", err)
	}
	return walkFrom(v, p, cn, d.record(v, kind))
}

// subtree records everything beneath directory p of one side.
func (d *differ) subtree(v *stack.View, p string, n view.Node, kind byte) error {
	return walkDir(v, p, n, d.record(v, kind))
}

// record adds each path walked in v as a change of kind.
func (d *differ) record(v *stack.View, kind byte) WalkFunc {
	return func(q string, n view.Node, _ view.Attr) error {
		d.out = append(d.out, Change{Kind: kind, Path: q, Layer: layerOf(v, n)})
		return nil
	}
}

func layerOf(v *stack.View, n view.Node) digest.Digest {
	return v.Layers[n.Top().Layer].Digest
}

// changedAttrs names the Attributes that differ from a to b; nil when
// none does.
func changedAttrs(a, b view.Attr) []string {
	differs := []bool{
		a.Type != b.Type,
		a.Mode != b.Mode,
		a.UID != b.UID || a.GID != b.GID,
		a.Size != b.Size,
		a.Mtime != b.Mtime || a.MtimeNs != b.MtimeNs,
		a.Object != b.Object,
		a.Link != b.Link,
		a.Major != b.Major || a.Minor != b.Minor,
		!sameXattrs(a.Xattrs, b.Xattrs),
		a.Nlink != b.Nlink && a.Type != view.TypeDir && b.Type != view.TypeDir,
	}
	var changed []string
	for i, d := range differs {
		if d {
			changed = append(changed, Attributes[i])
		}
	}
	return changed
}

func sameXattrs(a, b []view.Xattr) bool {
	if len(a) != len(b) {
		return false
	}
	cmp := func(x, y view.Xattr) int { return strings.Compare(x.Name, y.Name) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmp)
	slices.SortFunc(b, cmp)
	return slices.Equal(a, b)
}
