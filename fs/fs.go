// Package fs serves a store view as a read-only go-fuse node tree: the
// merged view of a stack of layers, one layer as it was built, or one
// layer in the format kernel overlayfs stacks (whiteouts as 0/0 character
// devices, opaque directories marked with trusted.overlay.opaque).
package fs

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Timeout is how long the kernel may cache entries, attributes and
// negative lookups: a view never changes while it is mounted.
const Timeout = 24 * time.Hour

const (
	blockSize = 4096
	// layerShift places the layer's position above the record number in
	// an inode number, so every record of every layer has its own.
	layerShift  = 40
	opaqueXattr = "trusted.overlay.opaque"
)

// Tree is one view, ready to be served.
type Tree struct {
	view *store.View
	// openObject opens a regular file's content.
	openObject func(digest.Digest) (*os.File, error)
	// overlay shows a single layer in overlayfs's on-disk format.
	overlay bool
	files   uint64
	bytes   uint64
}

// NewTree makes the node tree of view. overlay asks for the
// overlay-format view and needs a single-layer view.
func NewTree(view *store.View, openObject func(digest.Digest) (*os.File, error), overlay bool) (*Tree, error) {
	if overlay && !view.Single {
		return nil, fmt.Errorf("the overlay-format view shows one layer")
	}
	t := &Tree{view: view, openObject: openObject, overlay: overlay}
	for _, l := range view.Layers {
		info := l.Index.Info()
		t.files += uint64(info.Entries)
		t.bytes += uint64(info.ContentBytes)
	}
	return t, nil
}

// Root is the root node to mount.
func (t *Tree) Root() gofs.InodeEmbedder {
	return &node{tree: t, n: t.view.Root()}
}

// Options are the go-fuse options a view is served with.
func (t *Tree) Options() *gofs.Options {
	timeout := Timeout
	return &gofs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		RootStableAttr:  &gofs.StableAttr{Ino: 1, Mode: syscall.S_IFDIR},
		// An image may hold files of mode 0; go-fuse would show them 0644.
		NullPermissions: true,
		// READDIRPLUS always, not the kernel's AUTO mode: AUTO makes ls -f
		// of a 100k directory 6x faster but find, tar, rsync and mkfs,
		// which stat every entry, 3x slower with a LOOKUP for each.
		MountOptions: fuse.MountOptions{
			// Symlink targets never change either.
			EnableSymlinkCaching: true,
		},
	}
}

// node is one path of the view. For a directory n holds every layer
// record that merges into it; for anything else, the one that provides it.
type node struct {
	gofs.Inode
	tree *Tree
	n    store.Node
}

var (
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeGetxattrer     = (*node)(nil)
	_ gofs.NodeListxattrer    = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeSetxattrer     = (*node)(nil)
)

// guard turns a panic in an operation into EIO and a log line: a bad
// index must cost one answer, never the server. An index is mapped, so a
// file truncated under a live mount faults on access: SetPanicOnFault
// makes that fault a panic of this goroutine, which the deferred function
// guard returns recovers. Use as: defer guard(op, &errno)().
func guard(op string, errno *syscall.Errno) func() {
	debug.SetPanicOnFault(true)
	return func() {
		if r := recover(); r != nil {
			logrus.WithField("op", op).Errorf("answered EIO: %v (a damaged or truncated index faults this way)", r)
			logrus.Debugf("%s", debug.Stack())
			*errno = syscall.EIO
		}
	}
}

func (nd *node) fail(op string, err error) syscall.Errno {
	logrus.WithFields(logrus.Fields{"op": op, "path": nd.Path(nil)}).Warn(err)
	return syscall.EIO
}

// markerKind tells how the overlay-format view shows a single-layer name.
type markerKind int

const (
	plainEntry markerKind = iota
	hiddenMarker
	whiteoutDevice
)

func (t *Tree) overlayKind(name string) markerKind {
	if !t.overlay || !whiteout.IsMarker(name) {
		return plainEntry
	}
	if _, ok := whiteout.Hidden(name); ok {
		return whiteoutDevice
	}
	return hiddenMarker
}

// child is a name of a directory as the view shows it.
type child struct {
	name   string
	n      store.Node
	device bool // an overlay-format whiteout: a 0/0 character device
}

func (nd *node) lookupChild(name string) (child, bool, error) {
	t := nd.tree
	if t.overlay && whiteout.IsMarker(name) {
		return child{}, false, nil
	}
	n, ok, err := t.view.Lookup(nd.n, name)
	if err != nil || ok || !t.overlay {
		return child{name: name, n: n}, ok, err
	}
	n, ok, err = t.view.Lookup(nd.n, whiteout.Prefix+name)
	return child{name: name, n: n, device: true}, ok, err
}

func (nd *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (in *gofs.Inode, errno syscall.Errno) {
	defer guard("lookup", &errno)()
	c, ok, err := nd.lookupChild(name)
	if err != nil {
		return nil, nd.fail("lookup "+name, err)
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	cn := &node{tree: nd.tree, n: c.n}
	attr, err := nd.tree.attr(c)
	if err != nil {
		return nil, nd.fail("lookup "+name, err)
	}
	out.Attr = attr
	return nd.NewInode(ctx, cn, gofs.StableAttr{Mode: attr.Mode & syscall.S_IFMT, Ino: attr.Ino}), 0
}

// OpendirHandle lists the directory once per open. The listing never
// changes, so the kernel may keep it cached (FOPEN_CACHE_DIR) and answer
// later readdirs of the directory itself.
func (nd *node) OpendirHandle(ctx context.Context, flags uint32) (fh gofs.FileHandle, fuseFlags uint32, errno syscall.Errno) {
	defer guard("opendir", &errno)()
	t := nd.tree
	children, err := t.view.List(nd.n)
	if err != nil {
		return nil, 0, nd.fail("readdir", err)
	}
	// Every disk filesystem, overlayfs included, lists "." and "..";
	// ls -a and readdir(3) users expect them.
	parent := nd.StableAttr().Ino
	if _, p := nd.Parent(); p != nil {
		parent = p.StableAttr().Ino
	}
	entries := make([]fuse.DirEntry, 0, len(children)+2)
	entries = append(entries,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: nd.StableAttr().Ino},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: parent})
	for _, c := range children {
		name, typ := c.Name, t.view.Type(c.Top)
		switch t.overlayKind(name) {
		case hiddenMarker:
			continue
		case whiteoutDevice:
			hidden, _ := whiteout.Hidden(name)
			if _, real, _ := t.view.Lookup(nd.n, hidden); real {
				continue
			}
			name, typ = hidden, index.TypeChar
		}
		entries = append(entries, fuse.DirEntry{Name: name, Mode: typeBits(typ), Ino: t.ino(c.Top)})
	}
	return gofs.NewListDirStream(entries), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (nd *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) (errno syscall.Errno) {
	defer guard("getattr", &errno)()
	attr, err := nd.tree.attr(nd.self())
	if err != nil {
		return nd.fail("getattr", err)
	}
	out.Attr = attr
	return 0
}

// self describes the node as lookupChild would.
func (nd *node) self() child {
	c := child{n: nd.n}
	if nd.tree.overlay {
		if name, err := nd.tree.view.Layers[0].Index.Name(nd.n.Top().Rec); err == nil && whiteout.IsMarker(string(name)) {
			c.device = true
		}
	}
	return c
}

func (t *Tree) ino(r store.Ref) uint64 {
	if r.Rec == 0 {
		// Record 0 is a layer's root, and only the view's own root shows.
		return 1
	}
	return uint64(r.Layer+1)<<layerShift | uint64(t.view.Layers[r.Layer].Index.InodeOf(r.Rec))
}

func typeBits(t index.Type) uint32 {
	switch t {
	case index.TypeDir:
		return syscall.S_IFDIR
	case index.TypeSymlink:
		return syscall.S_IFLNK
	case index.TypeChar:
		return syscall.S_IFCHR
	case index.TypeBlock:
		return syscall.S_IFBLK
	case index.TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

// entry returns the attributes a child shows and the record they come from.
func (t *Tree) entry(c child) (index.Entry, store.Ref, error) {
	e, ref, err := t.view.Entry(c.n)
	if err != nil {
		return e, ref, err
	}
	if c.device {
		return index.Entry{Type: index.TypeChar, Mode: 0, Mtime: e.Mtime, MtimeNs: e.MtimeNs, Nlink: 1}, ref, nil
	}
	return e, ref, nil
}

func (t *Tree) attr(c child) (fuse.Attr, error) {
	e, ref, err := t.entry(c)
	if err != nil {
		return fuse.Attr{}, err
	}
	a := fuse.Attr{
		Ino:     t.ino(ref),
		Mode:    typeBits(e.Type) | e.Mode,
		Owner:   fuse.Owner{Uid: e.UID, Gid: e.GID},
		Size:    uint64(e.ShownSize()),
		Nlink:   e.ShownNlink(),
		Blksize: blockSize,
	}
	switch e.Type {
	case index.TypeChar, index.TypeBlock:
		a.Rdev = uint32(unix.Mkdev(e.Major, e.Minor))
	}
	a.Blocks = (a.Size + blockSize - 1) / blockSize * (blockSize / 512)
	mt := uint64(e.Mtime)
	a.Mtime, a.Mtimensec = mt, e.MtimeNs
	a.Atime, a.Atimensec = mt, e.MtimeNs
	a.Ctime, a.Ctimensec = mt, e.MtimeNs
	return a, nil
}

func (nd *node) Readlink(ctx context.Context) (target []byte, errno syscall.Errno) {
	defer guard("readlink", &errno)()
	e, _, err := nd.tree.entry(nd.self())
	if err != nil {
		return nil, nd.fail("readlink", err)
	}
	if e.Type != index.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(e.Link), 0
}

func (nd *node) xattrs() ([]index.Xattr, error) {
	c := nd.self()
	e, _, err := nd.tree.entry(c)
	if err != nil || !nd.tree.overlay {
		return e.Xattrs, err
	}
	xs := escapeOverlayXattrs(e.Xattrs)
	if e.Type != index.TypeDir || e.Name == "" {
		// overlayfs never reads a layer root's opaque mark.
		return xs, nil
	}
	// In overlay format, a directory the layer makes opaque, or replaces
	// after whiting it out, hides what lies beneath it.
	opaque := e.Flags&index.FlagOpaque != 0
	if !opaque {
		parent := nd.tree.view.Layers[0].Index
		pe, err := parent.Entry(nd.n.Top().Rec)
		if err != nil {
			return nil, err
		}
		_, opaque, _ = parent.Lookup(pe.Parent, whiteout.Prefix+e.Name)
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

func (nd *node) Getxattr(ctx context.Context, attr string, dest []byte) (size uint32, errno syscall.Errno) {
	defer guard("getxattr", &errno)()
	xs, err := nd.xattrs()
	if err != nil {
		return 0, nd.fail("getxattr", err)
	}
	for _, x := range xs {
		if x.Name != attr {
			continue
		}
		if len(dest) == 0 {
			return uint32(len(x.Value)), 0
		}
		if len(dest) < len(x.Value) {
			return uint32(len(x.Value)), syscall.ERANGE
		}
		return uint32(copy(dest, x.Value)), 0
	}
	return 0, syscall.ENODATA
}

func (nd *node) Listxattr(ctx context.Context, dest []byte) (size uint32, errno syscall.Errno) {
	defer guard("listxattr", &errno)()
	xs, err := nd.xattrs()
	if err != nil {
		return 0, nd.fail("listxattr", err)
	}
	var names []byte
	for _, x := range xs {
		names = append(append(names, x.Name...), 0)
	}
	if len(dest) == 0 {
		return uint32(len(names)), 0
	}
	if len(dest) < len(names) {
		return uint32(len(names)), syscall.ERANGE
	}
	return uint32(copy(dest, names)), 0
}

func (nd *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	t := nd.tree
	out.Bsize, out.Frsize, out.NameLen = blockSize, blockSize, 255
	out.Blocks = (t.bytes + blockSize - 1) / blockSize
	out.Files = t.files
	return 0
}

func (nd *node) Setattr(context.Context, gofs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (nd *node) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}

func (nd *node) Open(ctx context.Context, flags uint32) (fh gofs.FileHandle, fuseFlags uint32, errno syscall.Errno) {
	defer guard("open", &errno)()
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	e, _, err := nd.tree.entry(nd.self())
	if err != nil {
		return nil, 0, nd.fail("open", err)
	}
	if e.Type != index.TypeReg {
		return nil, 0, syscall.EINVAL
	}
	if e.Object == "" {
		return emptyFile{}, fuse.FOPEN_KEEP_CACHE, 0
	}
	f, err := nd.tree.openObject(e.Object)
	if err != nil {
		return nil, 0, nd.fail("open", fmt.Errorf("object %s: %w", e.Object, err))
	}
	return &objectFile{f: f}, fuse.FOPEN_KEEP_CACHE, 0
}

// objectFile reads a content object. With root, go-fuse hands its
// descriptor to the kernel (passthrough) and reads never reach us.
type objectFile struct {
	f *os.File
}

var (
	_ gofs.FilePassthroughFder = (*objectFile)(nil)
	_ gofs.FileReader          = (*objectFile)(nil)
	_ gofs.FileReleaser        = (*objectFile)(nil)
	_ gofs.FileFlusher         = (*objectFile)(nil)
	_ gofs.FileFlusher         = emptyFile{}
)

func (o *objectFile) PassthroughFd() (int, bool) { return int(o.f.Fd()), true }

func (o *objectFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultFd(o.f.Fd(), off, len(dest)), 0
}

func (o *objectFile) Release(ctx context.Context) syscall.Errno {
	o.f.Close()
	return 0
}

// Flush answers ENOSYS, which makes the kernel stop sending FLUSH, a
// round trip on every close(2), for the rest of the mount: a read-only
// file has nothing to write back, and the mount takes no locks.
func (o *objectFile) Flush(ctx context.Context) syscall.Errno { return syscall.ENOSYS }

// emptyFile is an empty regular file: it has no object.
type emptyFile struct{}

func (emptyFile) Flush(ctx context.Context) syscall.Errno { return syscall.ENOSYS }

func (emptyFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(nil), 0
}
