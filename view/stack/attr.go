package stack

import (
	"slices"
	"strings"

	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/whiteout"
)

const (
	// layerShift places the layer's position above the record number in
	// an inode number, so every record of every layer has its own.
	layerShift  = 40
	opaqueXattr = "trusted.overlay.opaque"
)

// Attr computes everything node n shows (rules 6 and 10, A, S and O).
func (v *View) Attr(n Node) (view.Attr, error) {
	if err := v.enter(); err != nil {
		return view.Attr{}, err
	}
	defer v.exit()
	e, ref, err := v.entry(n)
	if err != nil {
		return view.Attr{}, err
	}
	if v.kind == view.Overlay && whiteout.IsMarker(e.Name) {
		// Lookup finds a marker only as the whiteout device it stands for.
		return view.Attr{Type: view.TypeChar, Nlink: 1, Ino: v.ino(ref), Mtime: e.Mtime, MtimeNs: e.MtimeNs, Source: ref}, nil
	}
	a := view.Attr{
		Type:    viewType(e.Type),
		Mode:    e.Mode,
		UID:     e.UID,
		GID:     e.GID,
		Size:    shownSize(e),
		Nlink:   shownNlink(e),
		Ino:     v.ino(ref),
		Mtime:   e.Mtime,
		MtimeNs: e.MtimeNs,
		Link:    e.Link,
		Object:  e.Object,
		Source:  ref,
	}
	if e.Type == index.TypeChar || e.Type == index.TypeBlock {
		a.Major, a.Minor = e.Major, e.Minor
	}
	if e.Type == index.TypeSymlink {
		// Linux gives every symlink 0777 and no call changes it, so no
		// unpacked layer shows the mode a tar header gives one.
		a.Mode = 0o777
	}
	xs := e.Xattrs
	if v.kind == view.Overlay {
		if xs, err = v.overlayXattrs(n, e); err != nil {
			return view.Attr{}, err
		}
	}
	if len(xs) > 0 {
		a.Xattrs = make([]view.Xattr, len(xs))
		for i, x := range xs {
			a.Xattrs[i] = view.Xattr(x)
		}
	}
	return a, nil
}

// ino is the inode number of the file record r provides.
func (v *View) ino(r Ref) uint64 {
	if r.Rec == index.Root {
		// Record 0 is a layer's root, and only the view's own root shows.
		return 1
	}
	return uint64(r.Layer+1)<<layerShift | uint64(v.Layers[r.Layer].Index.InodeOf(r.Rec))
}

func viewType(t index.Type) view.Type {
	switch t {
	case index.TypeDir:
		return view.TypeDir
	case index.TypeSymlink:
		return view.TypeSymlink
	case index.TypeChar:
		return view.TypeChar
	case index.TypeBlock:
		return view.TypeBlock
	case index.TypeFifo:
		return view.TypeFifo
	}
	return view.TypeReg
}

// shownSize is the size a view shows for the entry (rule A).
func shownSize(e index.Entry) int64 {
	switch e.Type {
	case index.TypeReg:
		return e.Size
	case index.TypeSymlink:
		return int64(len(e.Link))
	case index.TypeDir:
		return index.DirSize
	}
	return 0
}

// shownNlink is the link count a view shows: the names of a file, a
// symlink, a device or a FIFO within its layer (rule 10), and 1 for a
// directory (rule A: tools take that as "not counted").
func shownNlink(e index.Entry) uint32 {
	if e.Type == index.TypeDir {
		return 1
	}
	return max(e.Nlink, 1)
}

// overlayXattrs are the xattrs of the overlay format (rule O): the
// image's own overlay xattrs escaped, and the opaque mark.
func (v *View) overlayXattrs(n Node, e index.Entry) ([]index.Xattr, error) {
	xs := escapeOverlayXattrs(e.Xattrs)
	top := n.Top()
	if e.Type != index.TypeDir || top.Rec == index.Root {
		// overlayfs never reads a layer root's opaque mark.
		return xs, nil
	}
	// A directory the layer makes opaque, or replaces after whiting it
	// out, hides what lies beneath it. That is the layer's own record's
	// to say: e holds the attributes of the layers beneath when the layer
	// only implies the directory.
	r := v.Layers[top.Layer].Index
	own, err := r.Entry(top.Rec)
	if err != nil {
		return nil, err
	}
	opaque := own.Flags&index.FlagOpaque != 0
	if !opaque {
		_, opaque, _ = r.Lookup(own.Parent, whiteout.Prefix+own.Name)
	}
	if opaque {
		return append(xs[:len(xs):len(xs)], index.Xattr{Name: opaqueXattr, Value: "y"}), nil
	}
	return xs, nil
}

// overlayPrefixes are the xattr namespaces overlayfs keeps for itself:
// trusted.overlay. when mounted by root, user.overlay. with userxattr.
var overlayPrefixes = []string{"trusted.overlay.", "user.overlay."}

// escapeOverlayXattrs renames the image's own xattrs in overlayfs's
// namespaces, X.overlay.Y to X.overlay.overlay.Y, the escape overlayfs
// (Linux 6.7+) and composefs use: overlayfs stacked over the
// overlay-format view then shows them as the image has them, rather than
// obeying them as redirects, opaque or whiteout marks or metacopy.
func escapeOverlayXattrs(xs []index.Xattr) []index.Xattr {
	var out []index.Xattr
	for i, x := range xs {
		for _, p := range overlayPrefixes {
			if rest, ok := strings.CutPrefix(x.Name, p); ok {
				if out == nil {
					out = slices.Clone(xs)
				}
				out[i].Name = p + "overlay." + rest
			}
		}
	}
	if out == nil {
		return xs
	}
	return out
}
