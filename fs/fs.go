// Package fs serves a view as a read-only go-fuse node tree. What each
// path shows is the view's answer (package view); fs adds only what FUSE
// needs: caching, "." and "..", open files, statfs and turning failures
// into errnos.
package fs

import (
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Timeout is how long the kernel may cache entries, attributes and
// negative lookups: a view never changes while it is mounted.
const Timeout = 24 * time.Hour

const blockSize = 4096

// Tree is one view, ready to be served.
type Tree struct {
	view view.View
	// openObject opens a regular file's content.
	openObject func(digest.Digest) (*os.File, error)
	files      uint64
	bytes      uint64
}

// NewTree makes the node tree of v.
func NewTree(v view.View, openObject func(digest.Digest) (*os.File, error)) *Tree {
	t := &Tree{view: v, openObject: openObject}
	t.files, t.bytes = v.Totals()
	return t
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
	n    view.Node
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

func (nd *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (in *gofs.Inode, errno syscall.Errno) {
	defer guard("lookup", &errno)()
	n, ok, err := nd.tree.view.Lookup(nd.n, name)
	if err != nil {
		return nil, nd.fail("lookup "+name, err)
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	a, err := nd.tree.view.Attr(n)
	if err != nil {
		return nil, nd.fail("lookup "+name, err)
	}
	out.Attr = fuseAttr(a)
	return nd.NewInode(ctx, &node{tree: nd.tree, n: n}, gofs.StableAttr{Mode: a.Type.Bits(), Ino: a.Ino}), 0
}

// OpendirHandle lists the directory once per open. The listing never
// changes, so the kernel may keep it cached (FOPEN_CACHE_DIR) and answer
// later readdirs of the directory itself.
func (nd *node) OpendirHandle(ctx context.Context, flags uint32) (fh gofs.FileHandle, fuseFlags uint32, errno syscall.Errno) {
	defer guard("opendir", &errno)()
	children, err := nd.tree.view.List(nd.n)
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
		entries = append(entries, fuse.DirEntry{Name: c.Name, Mode: c.Type.Bits(), Ino: c.Ino})
	}
	return gofs.NewListDirStream(entries), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (nd *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) (errno syscall.Errno) {
	defer guard("getattr", &errno)()
	a, err := nd.tree.view.Attr(nd.n)
	if err != nil {
		return nd.fail("getattr", err)
	}
	out.Attr = fuseAttr(a)
	return 0
}

func fuseAttr(a view.Attr) fuse.Attr {
	fa := fuse.Attr{
		Ino:     a.Ino,
		Mode:    a.Type.Bits() | a.Mode,
		Owner:   fuse.Owner{Uid: a.UID, Gid: a.GID},
		Size:    uint64(a.Size),
		Nlink:   a.Nlink,
		Rdev:    uint32(unix.Mkdev(a.Major, a.Minor)),
		Blksize: blockSize,
	}
	fa.Blocks = (fa.Size + blockSize - 1) / blockSize * (blockSize / 512)
	mt := uint64(a.Mtime)
	fa.Mtime, fa.Mtimensec = mt, a.MtimeNs
	fa.Atime, fa.Atimensec = mt, a.MtimeNs
	fa.Ctime, fa.Ctimensec = mt, a.MtimeNs
	return fa
}

func (nd *node) Readlink(ctx context.Context) (target []byte, errno syscall.Errno) {
	defer guard("readlink", &errno)()
	a, err := nd.tree.view.Attr(nd.n)
	if err != nil {
		return nil, nd.fail("readlink", err)
	}
	if a.Type != view.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(a.Link), 0
}

func (nd *node) xattrs() ([]view.Xattr, error) {
	a, err := nd.tree.view.Attr(nd.n)
	return a.Xattrs, err
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
	a, err := nd.tree.view.Attr(nd.n)
	if err != nil {
		return nil, 0, nd.fail("open", err)
	}
	if a.Type != view.TypeReg {
		return nil, 0, syscall.EINVAL
	}
	if a.Object == "" {
		return emptyFile{}, fuse.FOPEN_KEEP_CACHE, 0
	}
	f, err := nd.tree.openObject(a.Object)
	if err != nil {
		return nil, 0, nd.fail("open", fmt.Errorf("object %s: %w", a.Object, err))
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
