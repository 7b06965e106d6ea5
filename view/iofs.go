package view

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
)

// FS is a view as an io/fs file system, for Go programs that read an
// image without a mount: a VM runtime building its guest root, a scanner
// walking an image. Symlinks resolve inside the view, an absolute target
// from the view's root and ".." of the root the root, as in a container:
// Open and Stat follow them as os.DirFS does, but never out of the image.
// Each FileInfo's Sys is the node's *Attr: owner, device numbers, xattrs,
// link count and inode.
//
// An open file is an io.Seeker and an io.ReaderAt, a directory an
// fs.ReadDirFile; a device, a FIFO and an empty file read as empty. A
// file that is in the view but whose content cannot be opened (its object
// missing or damaged, the store closed) fails with EIO, never
// fs.ErrNotExist. Names that ValidPath refuses fail with fs.ErrInvalid;
// unlike io/fs's own file systems, an FS takes names that are not UTF-8,
// as an image may hold them.
//
// An FS may be used by many goroutines at once. It reads its view until
// the view is closed, after which its calls fail with fs.ErrClosed; files
// already open read on, as they hold their content open. A file or
// directory once closed fails every call with a *fs.PathError wrapping
// fs.ErrClosed, as an *os.File does.
type FS struct {
	v          View
	openObject ObjectOpener
}

var (
	_ fs.ReadDirFS  = (*FS)(nil)
	_ fs.StatFS     = (*FS)(nil)
	_ fs.ReadLinkFS = (*FS)(nil)
)

// ObjectOpener opens the content of a, a regular file of the view. r is
// one of the file's records, for an opener that finds content by record
// (store.Handles) rather than by a.Object alone. It refuses an object of
// another size than a.Size with an error wrapping ErrDamagedObject, as
// ByName and store.Handles do: a reader would otherwise be given fewer
// or more bytes than Stat says the file has, and no error.
type ObjectOpener func(r Ref, a Attr) (*os.File, error)

// ByName is the ObjectOpener that knows objects by their digests alone,
// such as store.Store's OpenObject. It checks the object's size against
// the file's.
func ByName(open func(digest.Digest) (*os.File, error)) ObjectOpener {
	return func(_ Ref, a Attr) (*os.File, error) {
		f, err := open(a.Object)
		if err != nil {
			return nil, err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if st.Size() != a.Size {
			f.Close()
			return nil, fmt.Errorf("holds %d bytes where the index says %d: %w (\"layerfs verify\" re-hashes every object)", st.Size(), a.Size, ErrDamagedObject)
		}
		return f, nil
	}
}

// NewFS makes the file system of v, reading contents through openObject.
func NewFS(v View, openObject ObjectOpener) *FS {
	return &FS{v: v, openObject: openObject}
}

// maxSymlinks is how many symlinks one path may cross, as Linux's
// MAXSYMLINKS.
const maxSymlinks = 40

// ValidPath is fs.ValidPath without its demand of UTF-8: a Linux name is
// bytes, and an image made under another locale holds names that are not
// UTF-8, which every view must serve.
func ValidPath(name string) bool {
	if name == "." {
		return true
	}
	for elem := range strings.SplitSeq(name, "/") {
		if elem == "" || elem == "." || elem == ".." {
			return false
		}
	}
	return true
}

// resolve finds name; follow resolves a symlink at its end too.
func (f *FS) resolve(op, name string, follow bool) (Node, Attr, error) {
	if !ValidPath(name) {
		return nil, Attr{}, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	r, err := ResolvePath(f.v, name, follow)
	if err != nil {
		return nil, Attr{}, &fs.PathError{Op: op, Path: name, Err: err}
	}
	return r.Node, r.Attr, nil
}

// Resolved is a path of a view as ResolvePath found it.
type Resolved struct {
	Node Node
	Attr Attr
	// Path is where the path leads in the view, with no symlink, "."
	// or ".." in it, relative to the root: "" for the root.
	Path string
}

// ResolvePath finds the slash-separated path p in v as the kernel
// resolves a path in a mount of v, chrooted to it: a symlink on the way
// is followed inside the view, an absolute target from the view's root,
// and ".." of the root is the root. followLast follows a symlink at the
// end too, as does a trailing slash, which asks for a directory. A
// missing entry is fs.ErrNotExist; a non-directory on the way ("." and
// ".." included) or before a trailing slash, syscall.ENOTDIR; more than
// 40 symlinks, syscall.ELOOP.
func ResolvePath(v View, p string, followLast bool) (Resolved, error) {
	// The kernel takes "file/" as "file/.": a directory is asked for,
	// so a symlink at the end is followed and a file is ENOTDIR.
	dirOnly := strings.HasSuffix(p, "/")
	followLast = followLast || dirOnly
	root := v.Root()
	rootAttr, err := v.Attr(root)
	if err != nil {
		return Resolved{}, err
	}
	// dirs are the nodes from the root down to the current directory,
	// which ".." in a symlink's target climbs, and names their names.
	dirs := []Node{root}
	var names []string
	n, a := root, rootAttr
	todo := components(p)
	links := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		// "." and ".." are names looked up in a directory like any
		// other: after a file they are ENOTDIR, never dropped as a
		// lexical clean would drop them.
		if a.Type != TypeDir {
			return Resolved{}, syscall.ENOTDIR
		}
		switch c {
		case ".":
			continue
		case "..":
			if len(dirs) > 1 {
				dirs, names = dirs[:len(dirs)-1], names[:len(names)-1]
			}
			n = dirs[len(dirs)-1]
			if a, err = v.Attr(n); err != nil {
				return Resolved{}, err
			}
			continue
		}
		cn, ok, err := v.Lookup(n, c)
		if err != nil {
			return Resolved{}, err
		}
		if !ok {
			return Resolved{}, fs.ErrNotExist
		}
		ca, err := v.Attr(cn)
		if err != nil {
			return Resolved{}, err
		}
		if ca.Type == TypeSymlink && (len(todo) > 0 || followLast) {
			if links++; links > maxSymlinks {
				return Resolved{}, syscall.ELOOP
			}
			if strings.HasPrefix(ca.Link, "/") {
				dirs, names, n, a = dirs[:1], nil, root, rootAttr
			}
			todo = append(components(ca.Link), todo...)
			continue
		}
		dirs, names = append(dirs, cn), append(names, c)
		n, a = cn, ca
	}
	if dirOnly && a.Type != TypeDir {
		return Resolved{}, syscall.ENOTDIR
	}
	return Resolved{Node: n, Attr: a, Path: strings.Join(names, "/")}, nil
}

func components(p string) []string {
	return strings.FieldsFunc(p, func(r rune) bool { return r == '/' })
}

// Open opens name, following symlinks.
func (f *FS) Open(name string) (fs.File, error) {
	n, a, err := f.resolve("open", name, true)
	if err != nil {
		return nil, err
	}
	if a.Type != TypeDir {
		return f.OpenContent(name, &a)
	}
	children, err := f.v.List(n)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	info := &fileInfo{name: path.Base(name), a: a}
	return &dir{fsys: f, info: info, closable: closable{path: name}, node: n, children: children}, nil
}

// OpenContent opens the bytes of the file a describes, named name, as
// Open of its path does but without resolving the path again: a walker
// that has listed the view holds every file's Attr already.
func (f *FS) OpenContent(name string, a *Attr) (fs.File, error) {
	info := &fileInfo{name: path.Base(name), a: *a}
	if a.Type != TypeReg || a.Object == "" {
		// An empty file, a device or a FIFO: the view holds no bytes
		// for it.
		return newEmpty(name, info), nil
	}
	o, err := f.openObject(a.Source, *a)
	if err != nil {
		if OutOfResources(err) {
			// The bytes are there; this process cannot open them now.
			return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("object %s: %w", a.Object, err)}
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: &objectError{object: a.Object, err: err}}
	}
	return &file{f: o, closable: closable{path: name}, info: info}, nil
}

// objectError is the failure to open the object of a file that is in
// the view: its bytes are not to be had. It is EIO, as the mount
// answers, and never fs.ErrNotExist, which walkers skip as a file gone
// meanwhile; whether the object is damaged (ErrDamagedObject) or the
// store closed (fs.ErrClosed) still shows to errors.Is.
type objectError struct {
	object digest.Digest
	err    error
}

func (e *objectError) Error() string {
	return fmt.Sprintf("%v: object %s: %v", syscall.EIO, e.object, e.err)
}

func (e *objectError) Is(target error) bool {
	if target == syscall.EIO {
		return true
	}
	return !errors.Is(target, fs.ErrNotExist) && errors.Is(e.err, target)
}

// OutOfResources tells whether err is an open refused for want of
// something that frees up (a file descriptor of the process or the
// system, memory), not for anything wrong with the file: it is told as
// what it is, not as EIO.
func OutOfResources(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOMEM)
}

// Stat describes name, following symlinks.
func (f *FS) Stat(name string) (fs.FileInfo, error) {
	_, a, err := f.resolve("stat", name, true)
	if err != nil {
		return nil, err
	}
	return &fileInfo{name: path.Base(name), a: a}, nil
}

// Lstat describes name itself, a symlink included.
func (f *FS) Lstat(name string) (fs.FileInfo, error) {
	_, a, err := f.resolve("lstat", name, false)
	if err != nil {
		return nil, err
	}
	return &fileInfo{name: path.Base(name), a: a}, nil
}

// ReadLink returns the target of symlink name.
func (f *FS) ReadLink(name string) (string, error) {
	_, a, err := f.resolve("readlink", name, false)
	if err != nil {
		return "", err
	}
	if a.Type != TypeSymlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: notSymlinkError{}}
	}
	return a.Link, nil
}

// notSymlinkError is ReadLink's of a name that is no symlink: EINVAL, as
// readlink(2) and os.DirFS answer, and fs.ErrInvalid, as the FS always
// has.
type notSymlinkError struct{}

func (notSymlinkError) Error() string { return syscall.EINVAL.Error() }

func (notSymlinkError) Is(target error) bool {
	return target == syscall.EINVAL || target == fs.ErrInvalid
}

// ReadDir lists directory name, sorted by name.
func (f *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	n, a, err := f.resolve("readdir", name, true)
	if err != nil {
		return nil, err
	}
	if a.Type != TypeDir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: syscall.ENOTDIR}
	}
	children, err := f.v.List(n)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	return f.entries(n, name, children), nil
}

func (f *FS) entries(dir Node, dirPath string, children []Child) []fs.DirEntry {
	out := make([]fs.DirEntry, len(children))
	for i, c := range children {
		out[i] = &dirEntry{fsys: f, dir: dir, dirPath: dirPath, c: c}
	}
	return out
}

// fileMode is the io/fs form of a type and permission bits.
func fileMode(t Type, perm uint32) fs.FileMode {
	m := fs.FileMode(perm & 0o777)
	if perm&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if perm&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if perm&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	switch t {
	case TypeDir:
		m |= fs.ModeDir
	case TypeSymlink:
		m |= fs.ModeSymlink
	case TypeChar:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case TypeBlock:
		m |= fs.ModeDevice
	case TypeFifo:
		m |= fs.ModeNamedPipe
	}
	return m
}

type fileInfo struct {
	name string
	a    Attr
}

func (i *fileInfo) Name() string       { return i.name }
func (i *fileInfo) Size() int64        { return i.a.Size }
func (i *fileInfo) Mode() fs.FileMode  { return fileMode(i.a.Type, i.a.Mode) }
func (i *fileInfo) ModTime() time.Time { return time.Unix(i.a.Mtime, int64(i.a.MtimeNs)) }
func (i *fileInfo) IsDir() bool        { return i.a.Type == TypeDir }
func (i *fileInfo) Sys() any           { return &i.a }

type dirEntry struct {
	fsys    *FS
	dir     Node
	dirPath string
	c       Child
}

func (e *dirEntry) Name() string      { return e.c.Name }
func (e *dirEntry) IsDir() bool       { return e.c.Type == TypeDir }
func (e *dirEntry) Type() fs.FileMode { return fileMode(e.c.Type, 0).Type() }

func (e *dirEntry) Info() (fs.FileInfo, error) {
	n, ok, err := ChildNode(e.fsys.v, e.dir, e.c)
	if err == nil && !ok {
		err = fs.ErrNotExist
	}
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path.Join(e.dirPath, e.c.Name), Err: err}
	}
	a, err := e.fsys.v.Attr(n)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path.Join(e.dirPath, e.c.Name), Err: err}
	}
	return &fileInfo{name: e.c.Name, a: a}, nil
}

// closable is the Close of an open file of an FS: after it, every call
// fails as on a closed *os.File, with a *fs.PathError wrapping
// fs.ErrClosed and naming the file by its path in the view.
type closable struct {
	path   string
	closed atomic.Bool
}

// use is the error of op on the file once it is closed, else nil.
func (c *closable) use(op string) error {
	if c.closed.Load() {
		return &fs.PathError{Op: op, Path: c.path, Err: fs.ErrClosed}
	}
	return nil
}

func (c *closable) Close() error {
	if c.closed.Swap(true) {
		return &fs.PathError{Op: "close", Path: c.path, Err: fs.ErrClosed}
	}
	return nil
}

// file is a regular file with content: its object, open read-only. It
// reads, seeks and reads at offsets (io.ReaderAt) as an *os.File does,
// but offers none of the methods that would change the object (Chmod,
// Chown): the object is the store's, the bytes of every file of every
// image that has them. Its errors name the file by its path in the view,
// not the object's in the store.
type file struct {
	f *os.File
	closable
	info *fileInfo
}

func (f *file) Stat() (fs.FileInfo, error) {
	if err := f.use("stat"); err != nil {
		return nil, err
	}
	return f.info, nil
}

func (f *file) Read(p []byte) (int, error) {
	n, err := f.f.Read(p)
	return n, f.named(err)
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.f.ReadAt(p, off)
	return n, f.named(err)
}

func (f *file) Seek(offset int64, whence int) (int64, error) {
	n, err := f.f.Seek(offset, whence)
	return n, f.named(err)
}

// WriteTo copies the rest of the file to w, as io.Copy from the file
// does, with sendfile or splice where the kernel can (w a socket or a
// pipe), as an *os.File does.
func (f *file) WriteTo(w io.Writer) (int64, error) {
	n, err := f.f.WriteTo(w)
	return n, f.named(err)
}

func (f *file) Close() error {
	if err := f.closable.Close(); err != nil {
		return err
	}
	return f.named(f.f.Close())
}

// Fd is the descriptor of the file's object, open read-only and valid
// until Close, for advice to the kernel (posix_fadvise) or a zero-copy
// read; package erofs asks for read-ahead with it.
func (f *file) Fd() uintptr { return f.f.Fd() }

// named is err with the file's path in the view for the object's.
func (f *file) named(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return &fs.PathError{Op: pe.Op, Path: f.path, Err: pe.Err}
	}
	return err
}

// empty is an open file the view holds no bytes for. It seeks and reads
// at offsets as a file with content does (an *os.File), so that a reader
// such as http.FS, which seeks to learn a file's size, takes both alike.
type empty struct {
	*io.SectionReader
	closable
	info *fileInfo
}

func newEmpty(name string, info *fileInfo) *empty {
	return &empty{SectionReader: io.NewSectionReader(nil, 0, 0), closable: closable{path: name}, info: info}
}

func (e *empty) Stat() (fs.FileInfo, error) {
	if err := e.use("stat"); err != nil {
		return nil, err
	}
	return e.info, nil
}

func (e *empty) Read(p []byte) (int, error) {
	if err := e.use("read"); err != nil {
		return 0, err
	}
	return e.SectionReader.Read(p)
}

func (e *empty) ReadAt(p []byte, off int64) (int, error) {
	if err := e.use("read"); err != nil {
		return 0, err
	}
	return e.SectionReader.ReadAt(p, off)
}

func (e *empty) Seek(offset int64, whence int) (int64, error) {
	if err := e.use("seek"); err != nil {
		return 0, err
	}
	return e.SectionReader.Seek(offset, whence)
}

// dir is an open directory; ReadDir goes through its listing once.
type dir struct {
	fsys *FS
	info *fileInfo
	closable
	node     Node
	children []Child
	next     int
}

func (d *dir) Stat() (fs.FileInfo, error) {
	if err := d.use("stat"); err != nil {
		return nil, err
	}
	return d.info, nil
}

func (d *dir) Read([]byte) (int, error) {
	if err := d.use("read"); err != nil {
		return 0, err
	}
	return 0, &fs.PathError{Op: "read", Path: d.path, Err: syscall.EISDIR}
}

// ReadDir's error after Close is *os.File's, but wrapping fs.ErrClosed,
// which os's own ("use of closed file") does not.
func (d *dir) ReadDir(count int) ([]fs.DirEntry, error) {
	if err := d.use("readdirent"); err != nil {
		return nil, err
	}
	rest := d.children[d.next:]
	if count > 0 {
		if len(rest) == 0 {
			return nil, io.EOF
		}
		rest = rest[:min(count, len(rest))]
	}
	d.next += len(rest)
	return d.fsys.entries(d.node, d.path, rest), nil
}
