// Package fs serves a view read-only over FUSE, through go-fuse's raw
// protocol API. What each path shows is the view's answer (package view);
// fs adds only what FUSE needs: node ids, caching, "." and "..", open
// files, statfs and turning failures into errnos.
//
// A node id is the view's own name for a record: its layer and record
// number, so a file the kernel holds costs the server nothing. Only
// directories the kernel holds are kept in a table, since a merged
// directory is several records, found by looking it up from its parent.
//
// A program serves a view of a store as layerfs mount does: it opens the
// view (package view shows how), leases it for the mountpoint
// (store.Store's Lease), checks the mountpoint (CheckMountpoint), then
// Mount(NewTree(v, handles.OpenObject), mountpoint, MountOptions{}),
// handles being the store's OpenHandles of the view's layers. When
// Served's Wait or Unmount returns, nothing reads the view any more:
// close the handles and the view, release the lease, close the store.
package fs

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/layerfs/layerfs/view"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Timeout is how long the kernel may cache entries, attributes and
// negative lookups: a view never changes while it is mounted.
const Timeout = 24 * time.Hour

const blockSize = 4096

// dirBlockSize is the st_blksize of a directory. glibc's opendir sizes
// its getdents buffer by it (32 KiB at least, 1 MiB at most), and the
// kernel asks the server for as much of a listing at once as that buffer
// holds, up to the largest request (deviceMaxWrite): a directory of 100k
// entries is listed in about 130 round trips instead of about 520.
const dirBlockSize = 128 << 10

// Tree is one view, ready to be served.
type Tree struct {
	view       view.View
	openObject view.ObjectOpener
	files      uint64
	bytes      uint64
	// xattrs is false when no node of the view can show an xattr.
	xattrs bool
}

// NewTree makes the tree of v, whose files' contents openObject opens:
// store.Handles' OpenObject, which as root opens each object by its file
// handle without walking its path, or view.ByName of the store's
// OpenObject. The tree reads v until its mount is gone.
func NewTree(v view.View, openObject view.ObjectOpener) *Tree {
	t := &Tree{view: v, openObject: openObject}
	t.files, t.bytes = v.Totals()
	t.xattrs = v.HasXattrs()
	return t
}

// mountOptions are the go-fuse options a view is served with.
func (t *Tree) mountOptions() fuse.MountOptions {
	return fuse.MountOptions{
		// Symlink targets never change either.
		EnableSymlinkCaching: true,
		// OPENDIR is answered ENOSYS (server.OpenDir), which this tells
		// the kernel the server means.
		ExtraCapabilities: fuse.CAP_NO_OPENDIR_SUPPORT,
	}
}

// server answers FUSE requests from the tree's view.
type server struct {
	readOnlyFS
	tree *Tree
	root *dir
	// dirs are the directories the kernel holds, by node id, besides the
	// root.
	mu   sync.Mutex
	dirs map[uint64]*dir
	// device is set once INIT is answered, for passing reads through;
	// unset over virtio-fs.
	device      atomic.Value // a backingFiles
	passthrough atomic.Int32 // passUnknown, passOn or passOff
	// files are the open content objects read through the server.
	filesMu sync.Mutex
	files   map[uint64]*os.File
	nextFh  uint64
	// backing are the passthrough files open, by node id, and those of
	// files closed lately, oldest first, kept for the next open.
	backingMu sync.Mutex
	backing   map[uint64]*backing
	idle      []idleEntry
	idleSeq   uint64
	ahead     *readAhead
}

// backing is a content object handed to the kernel, and how many open
// files of its inode read it.
type backing struct {
	id   int32
	refs int
	// idleSeq tells which entry of the idle list is this one's last.
	idleSeq uint64
}

type idleEntry struct {
	node, seq uint64
}

// idleBacking is how many passthrough files of closed files stay handed
// to the kernel. A walk that reads the view again (mkfs.ext4 -d, rsync, a
// build) opens each file once more, and an open whose object the kernel
// still holds is answered from memory: no object to find and open, no
// backing file to register and, at its close, to drop.
const idleBacking = 4096

const (
	passUnknown = iota
	passOn
	passOff
)

// dir is a directory the kernel holds: the records it merges, and its
// listing while the kernel reads it.
type dir struct {
	n           view.Node
	ino, parent uint64
	lookups     uint64

	mu      sync.Mutex
	listing []view.Child
}

func newServer(t *Tree) *server {
	return &server{
		readOnlyFS: readOnlyFS{fuse.NewDefaultRawFileSystem()},
		tree:       t,
		root:       &dir{n: t.view.Root(), ino: 1, parent: 1},
		dirs:       map[uint64]*dir{},
		files:      map[uint64]*os.File{},
		backing:    map[uint64]*backing{},
		ahead:      newReadAhead(t.view, t.openObject),
	}
}

func (s *server) OnUnmount() { s.ahead.close() }

const (
	// layerShift places a record's layer above its number in a node id.
	layerShift = 40
	recMask    = 1<<layerShift - 1
	// backingFh is the file handle of a file read through passthrough.
	backingFh = 1 << 63
)

// nodeID names the node whose top record is r. Record 0 is a layer's
// root, and only the view's own root shows.
func nodeID(r view.Ref) uint64 {
	if r.Rec == 0 {
		return fuse.FUSE_ROOT_ID
	}
	return uint64(r.Layer+1)<<layerShift | uint64(r.Rec)
}

// node is the node the kernel calls id, and its directory if the kernel
// holds it as one.
func (s *server) node(id uint64) (view.Node, *dir) {
	if id == fuse.FUSE_ROOT_ID {
		return s.root.n, s.root
	}
	s.mu.Lock()
	d := s.dirs[id]
	s.mu.Unlock()
	if d != nil {
		return d.n, d
	}
	return view.Node{{Layer: int(id>>layerShift) - 1, Rec: uint32(id & recMask)}}, nil
}

// remember counts one more kernel reference to node n, of attributes a,
// found in the directory of inode number parent, and returns its id.
func (s *server) remember(n view.Node, a view.Attr, parent uint64) uint64 {
	id := nodeID(n.Top())
	if a.Type != view.TypeDir || id == fuse.FUSE_ROOT_ID {
		return id
	}
	s.mu.Lock()
	d := s.dirs[id]
	if d == nil {
		d = &dir{n: slices.Clone(n), ino: a.Ino, parent: parent}
		s.dirs[id] = d
	}
	d.lookups++
	s.mu.Unlock()
	return id
}

func (s *server) Forget(id, nlookup uint64) {
	s.mu.Lock()
	if d := s.dirs[id]; d != nil {
		if d.lookups <= nlookup {
			delete(s.dirs, id)
		} else {
			d.lookups -= nlookup
		}
	}
	s.mu.Unlock()
}

// backingFiles registers passthrough files with the kernel, on the FUSE
// device of the server that answered INIT.
type backingFiles interface {
	passthroughOffered() bool
	RegisterBackingFd(*fuse.BackingMap) (int32, syscall.Errno)
	UnregisterBackingFd(int32) syscall.Errno
}

// goFuseServer is go-fuse's server as backingFiles.
type goFuseServer struct{ *fuse.Server }

func (g goFuseServer) passthroughOffered() bool {
	return g.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH != 0
}

// Init is called by go-fuse's server once INIT is answered.
func (s *server) Init(srv *fuse.Server) { s.device.Store(backingFiles(goFuseServer{srv})) }

// backingDevice is the device passthrough files are registered on, nil
// before INIT and over virtio-fs.
func (s *server) backingDevice() backingFiles {
	b, _ := s.device.Load().(backingFiles)
	return b
}

func (s *server) String() string { return FSType }

// guard turns a panic in an operation into EIO and a log line: a bad
// index must cost one answer, never the server. An index is mapped, so a
// file truncated under a live mount faults on access: SetPanicOnFault
// makes that fault a panic of this goroutine, which the deferred function
// guard returns recovers. Use as: defer guard(op, &status)().
func guard(op string, st *fuse.Status) func() {
	debug.SetPanicOnFault(true)
	return func() {
		if r := recover(); r != nil {
			logrus.WithField("op", op).Errorf("answered EIO: %v (a damaged or truncated index faults this way)", r)
			logrus.Debugf("%s", debug.Stack())
			*st = fuse.EIO
		}
	}
}

// fail logs why op on node id failed and answers EIO, the answer for a
// file whose bytes or metadata cannot be had; but a server out of file
// descriptors or memory answers ENFILE or ENOMEM, which tell the caller
// to try again later rather than that the file is damaged, and says so
// once a while, not for every request it refuses.
func fail(op string, id uint64, err error) fuse.Status {
	log := logrus.WithFields(logrus.Fields{"op": op, "node": fmt.Sprintf("%#x", id)})
	if !view.OutOfResources(err) {
		log.Warn(err)
		return fuse.EIO
	}
	if now := time.Now().UnixNano(); now-lastShortage.Load() >= int64(shortageEvery) {
		lastShortage.Store(now)
		log.Warnf("%v (requests fail so until the server has some free again; raise its limit of open files, ulimit -n, if this goes on)", err)
	} else {
		log.Debug(err)
	}
	if errors.Is(err, syscall.ENOMEM) {
		return fuse.Status(syscall.ENOMEM)
	}
	// ENFILE, not EMFILE: the limit met is the server's, not the caller's.
	return fuse.Status(syscall.ENFILE)
}

// lastShortage is when fail last logged a shortage of descriptors or
// memory at warning level; shortageEvery how often it does at most.
var lastShortage atomic.Int64

const shortageEvery = 10 * time.Second

func (s *server) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) (st fuse.Status) {
	defer guard("lookup", &st)()
	parent, pd := s.node(h.NodeId)
	n, ok, err := s.tree.view.Lookup(parent, name)
	if err != nil {
		return fail("lookup "+name, h.NodeId, err)
	}
	if !ok {
		// Node id 0 is a negative entry, which the kernel keeps as long.
		out.NodeId = 0
		out.SetEntryTimeout(Timeout)
		return fuse.OK
	}
	parentIno := uint64(fuse.FUSE_ROOT_ID)
	if pd != nil {
		parentIno = pd.ino
	}
	if err := s.entry(n, parentIno, out); err != nil {
		return fail("lookup "+name, h.NodeId, err)
	}
	return fuse.OK
}

// entry fills out with node n, found in the directory of inode number
// parent, and counts the kernel's reference to it.
func (s *server) entry(n view.Node, parent uint64, out *fuse.EntryOut) error {
	a, err := s.tree.view.Attr(n)
	if err != nil {
		return err
	}
	out.NodeId = s.remember(n, a, parent)
	out.Generation = 0
	setAttr(&out.Attr, a)
	out.SetEntryTimeout(Timeout)
	out.SetAttrTimeout(Timeout)
	return nil
}

func (s *server) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) (st fuse.Status) {
	defer guard("getattr", &st)()
	n, _ := s.node(in.NodeId)
	a, err := s.tree.view.Attr(n)
	if err != nil {
		return fail("getattr", in.NodeId, err)
	}
	setAttr(&out.Attr, a)
	out.SetTimeout(Timeout)
	return fuse.OK
}

func setAttr(fa *fuse.Attr, a view.Attr) {
	*fa = fuse.Attr{
		Ino:     a.Ino,
		Mode:    a.Type.Bits() | a.Mode,
		Owner:   fuse.Owner{Uid: a.UID, Gid: a.GID},
		Size:    uint64(a.Size),
		Nlink:   a.Nlink,
		Rdev:    uint32(unix.Mkdev(a.Major, a.Minor)),
		Blksize: blockSize,
	}
	fa.Blocks = (fa.Size + blockSize - 1) / blockSize * (blockSize / 512)
	if a.Type == view.TypeDir {
		fa.Blksize = dirBlockSize
	}
	mt := uint64(a.Mtime)
	fa.Mtime, fa.Mtimensec = mt, a.MtimeNs
	fa.Atime, fa.Atimensec = mt, a.MtimeNs
	fa.Ctime, fa.Ctimensec = mt, a.MtimeNs
}

func (s *server) Readlink(cancel <-chan struct{}, h *fuse.InHeader) (target []byte, st fuse.Status) {
	defer guard("readlink", &st)()
	n, _ := s.node(h.NodeId)
	a, err := s.tree.view.Attr(n)
	if err != nil {
		return nil, fail("readlink", h.NodeId, err)
	}
	if a.Type != view.TypeSymlink {
		return nil, fuse.EINVAL
	}
	return []byte(a.Link), fuse.OK
}

// xattrs are node id's xattrs. The kernel caches none for FUSE, so every
// xattr call of a tool is a round trip: ls -l asks for two per entry, and
// rsync -A, and every exec, for one.
func (s *server) xattrs(op string, id uint64) ([]view.Xattr, fuse.Status) {
	n, _ := s.node(id)
	a, err := s.tree.view.Attr(n)
	if err != nil {
		return nil, fail(op, id, err)
	}
	return a.Xattrs, fuse.OK
}

func (s *server) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (size uint32, st fuse.Status) {
	defer guard("getxattr", &st)()
	if !s.tree.xattrs {
		// A view without xattrs answers the first GETXATTR with ENOSYS,
		// after which the kernel answers EOPNOTSUPP itself, as for a
		// file system without them. LISTXATTR still answers an empty
		// list: mkfs.erofs takes EOPNOTSUPP from llistxattr as an error.
		return 0, fuse.ENOSYS
	}
	xs, st := s.xattrs("getxattr", h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	for _, x := range xs {
		if x.Name != attr {
			continue
		}
		if len(dest) == 0 {
			return uint32(len(x.Value)), fuse.OK
		}
		if len(dest) < len(x.Value) {
			return uint32(len(x.Value)), fuse.ERANGE
		}
		return uint32(copy(dest, x.Value)), fuse.OK
	}
	return 0, fuse.ENOATTR
}

func (s *server) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (size uint32, st fuse.Status) {
	defer guard("listxattr", &st)()
	xs, st := s.xattrs("listxattr", h.NodeId)
	if !st.Ok() {
		return 0, st
	}
	for _, x := range xs {
		size += uint32(len(x.Name)) + 1
	}
	if len(dest) == 0 {
		return size, fuse.OK
	}
	if len(dest) < int(size) {
		return size, fuse.ERANGE
	}
	dest = dest[:0]
	for _, x := range xs {
		dest = append(append(dest, x.Name...), 0)
	}
	return size, fuse.OK
}

func (s *server) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	t := s.tree
	*out = fuse.StatfsOut{}
	out.Bsize, out.Frsize, out.NameLen = blockSize, blockSize, 255
	out.Blocks = (t.bytes + blockSize - 1) / blockSize
	out.Files = t.files
	return fuse.OK
}

// OpenDir answers ENOSYS, which the kernel takes as "no OPENDIR or
// RELEASEDIR for this mount, ever": a directory then opens with no round
// trip, and the kernel caches its listing (FOPEN_CACHE_DIR and
// FOPEN_KEEP_CACHE) for as long as it holds the directory. READDIR then
// names a directory by node id alone.
func (s *server) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (s *server) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return s.readDir(in, out, false)
}

func (s *server) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return s.readDir(in, out, true)
}

// readDir lists a directory from in.Offset on: "." and ".." at offsets 0
// and 1, as every disk filesystem, overlayfs included, lists them, then
// the view's children. With plus, every child's entry is given too, so
// that a walk that stats each entry needs no LOOKUP. The listing is kept
// while the kernel reads it, and dropped at its end.
func (s *server) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) (st fuse.Status) {
	defer guard("readdir", &st)()
	n, d := s.node(in.NodeId)
	if d == nil {
		return fuse.ENOTDIR
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.listing == nil || in.Offset == 0 {
		children, err := s.tree.view.List(n)
		if err != nil {
			return fail("readdir", in.NodeId, err)
		}
		d.listing = children
		if in.Offset == 0 {
			s.ahead.listed(in.NodeId, children)
		}
	}
	for off := in.Offset; ; off++ {
		var de fuse.DirEntry
		switch {
		case off == 0:
			de = fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: d.ino}
		case off == 1:
			de = fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: d.parent}
		case off-2 < uint64(len(d.listing)):
			c := d.listing[off-2]
			de = fuse.DirEntry{Name: c.Name, Mode: c.Type.Bits(), Ino: c.Ino}
		default:
			if off == in.Offset {
				// The kernel has read it all.
				d.listing = nil
			}
			return fuse.OK
		}
		de.Off = off + 1
		if !plus {
			if !out.AddDirEntry(de) {
				return fuse.OK
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			return fuse.OK
		}
		if off < 2 {
			// The kernel ignores entries of node id 0: "." and ".." are
			// its own.
			continue
		}
		child, ok, err := view.ChildNode(s.tree.view, n, d.listing[off-2])
		if err == nil && ok {
			err = s.entry(child, d.ino, eo)
		}
		if err != nil || !ok {
			// Listed without attributes: a stat of it will LOOKUP, and
			// fail there as it should.
			*eo = fuse.EntryOut{}
			if err != nil {
				logrus.WithFields(logrus.Fields{"op": "readdirplus " + de.Name, "node": fmt.Sprintf("%#x", in.NodeId)}).Warn(err)
			}
		}
	}
}

func (s *server) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (st fuse.Status) {
	defer guard("open", &st)()
	if in.Flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return fuse.EROFS
	}
	n, _ := s.node(in.NodeId)
	a, err := s.tree.view.Attr(n)
	if err != nil {
		return fail("open", in.NodeId, err)
	}
	if a.Type != view.TypeReg {
		return fuse.EINVAL
	}
	// FOPEN_NOFLUSH: no FLUSH round trip on every close(2). A read-only
	// file has nothing to write back, and the mount takes no locks.
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH
	if a.Object == "" {
		// An empty file: file handle 0 reads nothing.
		return fuse.OK
	}
	// Every open of one inode must pass through to the same backing file,
	// or the kernel refuses it: an open file's backing id is shared.
	if s.passthrough.Load() != passOff {
		s.backingMu.Lock()
		defer s.backingMu.Unlock()
		if b := s.backing[in.NodeId]; b != nil {
			b.refs++
			out.Fh, out.BackingID = backingFh, b.id
			out.OpenFlags = fuse.FOPEN_PASSTHROUGH | fuse.FOPEN_NOFLUSH
			return fuse.OK
		}
	}
	f := s.ahead.take(n.Top(), a.Object)
	if f == nil {
		if f, err = s.tree.openObject(n.Top(), a); err != nil {
			return fail("open", in.NodeId, fmt.Errorf("object %s: %w", a.Object, err))
		}
		s.ahead.missed(n.Top(), f)
	}
	if id, ok := s.passThrough(f); ok {
		// The kernel holds the object now, and reads it without us.
		f.Close()
		s.backing[in.NodeId] = &backing{id: id, refs: 1}
		out.Fh, out.BackingID = backingFh, id
		out.OpenFlags = fuse.FOPEN_PASSTHROUGH | fuse.FOPEN_NOFLUSH
		return fuse.OK
	}
	s.filesMu.Lock()
	s.nextFh++
	out.Fh = s.nextFh
	s.files[out.Fh] = f
	s.filesMu.Unlock()
	return fuse.OK
}

// passThrough hands f to the kernel, which then reads it itself: with
// root, where the kernel allows it. The first refusal ends the attempts.
func (s *server) passThrough(f *os.File) (int32, bool) {
	dev := s.backingDevice()
	if dev == nil || s.passthrough.Load() == passOff {
		return 0, false
	}
	if !dev.passthroughOffered() {
		s.passthrough.Store(passOff)
		return 0, false
	}
	id, errno := dev.RegisterBackingFd(&fuse.BackingMap{Fd: int32(f.Fd())})
	if errno != 0 {
		if s.passthrough.Swap(passOff) != passOff {
			logrus.Debugf("reads served without passthrough: %v", errno)
		}
		return 0, false
	}
	s.passthrough.Store(passOn)
	return id, true
}

// unregister takes back the passthrough file id from the kernel.
func (s *server) unregister(id int32) {
	if dev := s.backingDevice(); dev != nil {
		if errno := dev.UnregisterBackingFd(id); errno != 0 {
			logrus.Warnf("release passthrough file %d: %v", id, errno)
		}
	}
}

// Flush answers ENOSYS, which makes a kernel that ignores FOPEN_NOFLUSH
// stop sending FLUSH for the rest of the mount.
func (s *server) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

func (s *server) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if in.Fh == 0 {
		return fuse.ReadResultData(nil), fuse.OK
	}
	s.filesMu.Lock()
	f := s.files[in.Fh]
	s.filesMu.Unlock()
	if f == nil {
		return nil, fuse.EBADF
	}
	return fuse.ReadResultFd(f.Fd(), int64(in.Offset), int(in.Size)), fuse.OK
}

func (s *server) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	switch {
	case in.Fh == 0:
	case in.Fh == backingFh:
		s.backingMu.Lock()
		defer s.backingMu.Unlock()
		b := s.backing[in.NodeId]
		if b == nil {
			return
		}
		if b.refs--; b.refs > 0 {
			return
		}
		s.idleSeq++
		b.idleSeq = s.idleSeq
		s.idle = append(s.idle, idleEntry{in.NodeId, s.idleSeq})
		for len(s.idle) > idleBacking {
			e := s.idle[0]
			s.idle = s.idle[1:]
			if b := s.backing[e.node]; b != nil && b.refs == 0 && b.idleSeq == e.seq {
				delete(s.backing, e.node)
				s.unregister(b.id)
			}
		}
	default:
		s.filesMu.Lock()
		f := s.files[in.Fh]
		delete(s.files, in.Fh)
		s.filesMu.Unlock()
		if f != nil {
			f.Close()
		}
	}
}
