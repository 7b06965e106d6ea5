package erofs

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"time"

	goerofs "github.com/erofs/go-erofs"
	"github.com/layerfs/layerfs/view"
)

// sourceFS presents a source to go-erofs: it turns each *view.Attr into the
// *goerofs.Stat go-erofs reads, writes each hardlinked file's data once
// (see linkTable), and opens regular files ahead of go-erofs (prefetcher).
type sourceFS struct {
	src   readLinkFS
	links *linkTable
	ahead *prefetcher
	// regular holds what Info gave for each regular file go-erofs has not
	// opened yet, so that Open needs no second lookup by path.
	regular map[string]fs.FileInfo
	// subdirs counts each listed directory's subdirectories: go-erofs
	// gives every directory it copies 2 links, whatever it holds.
	subdirs map[string]uint32
}

// Open defers opening a regular file until go-erofs reads it, or the
// prefetcher gets to it: go-erofs opens every file during its walk and
// reads them all only when the image is written, which would hold a
// descriptor per file of the view at once.
func (s *sourceFS) Open(name string) (fs.File, error) {
	info, ok := s.regular[name]
	if ok {
		delete(s.regular, name)
	} else {
		var err error
		if info, err = fs.Stat(s.src, name); err != nil {
			return nil, err
		}
	}
	if !info.Mode().IsRegular() {
		return s.src.Open(name)
	}
	l := &lazyFile{src: s.src, name: name, info: info, ahead: s.ahead}
	s.ahead.add(l)
	return l, nil
}

// lazyFile opens its file on the first Read, unless the prefetcher has
// already, and closes it at the end.
type lazyFile struct {
	src   fs.FS
	name  string
	info  fs.FileInfo
	ahead *prefetcher
	// index is the file's place in the prefetcher's order.
	index int
	f     fs.File
	read  int64
	done  bool

	// Guarded by ahead.mu: state and what the prefetcher opened.
	state   fileState
	opened  fs.File
	openErr error
}

func (l *lazyFile) Stat() (fs.FileInfo, error) { return l.info, nil }

// contentOpener is a source that opens a file from the FileInfo its
// listing gave, without resolving the path again (view.FS).
type contentOpener interface {
	OpenContent(name string, a *view.Attr) (fs.File, error)
}

func (l *lazyFile) open() (fs.File, error) {
	a, ok := l.info.Sys().(*view.Attr)
	if o, isOpener := l.src.(contentOpener); isOpener && ok {
		return o.OpenContent(l.name, a)
	}
	return l.src.Open(l.name)
}

func (l *lazyFile) Read(p []byte) (int, error) {
	if l.done {
		return 0, io.EOF
	}
	if l.f == nil {
		f, err := l.ahead.take(l)
		if err != nil {
			// The source's error names the file, as an fs.FS's do.
			return 0, err
		}
		l.f = f
	}
	n, err := l.f.Read(p)
	l.read += int64(n)
	// go-erofs pads a file that ends early with zeros where it keeps the
	// bytes inline, and reads no further than the size of one that goes
	// on, so the end is read here: either would be an image with other
	// bytes than the file's.
	size := l.info.Size()
	if l.read == size && err == nil {
		var more [1]byte
		var m int
		m, err = io.ReadFull(l.f, more[:])
		l.read += int64(m)
	}
	if l.read > size || (err == io.EOF && l.read < size) {
		l.Close()
		return n, fmt.Errorf("%s: its size is %d, but %d bytes were read: %w", l.name, size, l.read, view.ErrDamagedObject)
	}
	if err == io.EOF {
		l.done = true
		if cerr := l.Close(); cerr != nil {
			return n, cerr
		}
	}
	return n, err
}

func (l *lazyFile) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("close %s: %w", l.name, err)
	}
	return nil
}

func (s *sourceFS) ReadLink(name string) (string, error) { return s.src.ReadLink(name) }

func (s *sourceFS) Stat(name string) (fs.FileInfo, error) {
	info, err := fs.Stat(s.src, name)
	if err != nil {
		return nil, err
	}
	return s.adapt(name, info)
}

func (s *sourceFS) ReadDir(name string) ([]fs.DirEntry, error) {
	entries, err := fs.ReadDir(s.src, name)
	if err != nil {
		return nil, err
	}
	out := make([]fs.DirEntry, len(entries))
	var dirs uint32
	for i, e := range entries {
		out[i] = &dirEntry{DirEntry: e, fsys: s, path: path.Join(name, e.Name())}
		if e.IsDir() {
			dirs++
		}
	}
	s.subdirs[name] = dirs
	return out, nil
}

// setDirLinks gives each directory w holds 2 links and one per
// subdirectory, as mkfs.erofs and the metadata-only writer do.
func (s *sourceFS) setDirLinks(w *goerofs.Writer) error {
	for name, dirs := range s.subdirs {
		if err := w.SetNlink(name, 2+dirs); err != nil {
			return fmt.Errorf("link count of %s: %w", name, err)
		}
	}
	return nil
}

type dirEntry struct {
	fs.DirEntry
	fsys *sourceFS
	path string
}

func (d *dirEntry) Info() (fs.FileInfo, error) {
	info, err := d.DirEntry.Info()
	if err != nil {
		return nil, err
	}
	adapted, err := d.fsys.adapt(d.path, info)
	if err == nil && adapted.Mode().IsRegular() && adapted.Size() > 0 {
		// go-erofs opens exactly these, right after.
		d.fsys.regular[d.path] = info
	}
	return adapted, err
}

// fileInfo is a source FileInfo with go-erofs's metadata as its Sys.
type fileInfo struct {
	fs.FileInfo
	stat *goerofs.Stat
	size int64
}

func (f *fileInfo) Size() int64        { return f.size }
func (f *fileInfo) Sys() any           { return f.stat }
func (f *fileInfo) ModTime() time.Time { return time.Unix(int64(f.stat.Mtime), int64(f.stat.MtimeNs)) }

// attrOf is the source's attributes of name, which every image holds. An
// mtime before 1970 is stored as its 64-bit two's complement, which the
// kernel, erofs-utils and go-erofs read back as the signed time it was.
func attrOf(name string, info fs.FileInfo) (*view.Attr, error) {
	m, ok := info.Sys().(*view.Attr)
	if !ok {
		return nil, fmt.Errorf("%s: Sys() is %T, not *view.Attr", name, info.Sys())
	}
	return m, nil
}

func (s *sourceFS) adapt(name string, info fs.FileInfo) (fs.FileInfo, error) {
	m, err := attrOf(name, info)
	if err != nil {
		return nil, err
	}
	st := &goerofs.Stat{
		UID:     m.UID,
		GID:     m.GID,
		Mtime:   uint64(m.Mtime),
		MtimeNs: m.MtimeNs,
		Nlink:   int(m.Nlink),
		Rdev:    encodeDev(m.Major, m.Minor),
	}
	st.Xattrs, err = xattrMap(name, m)
	if err != nil {
		return nil, err
	}
	fi := &fileInfo{FileInfo: info, stat: st, size: info.Size()}
	if info.IsDir() {
		st.Nlink = 0
		return fi, nil
	}
	if s.links.add(name, m.Ino, m.Nlink) {
		// A later name of a hardlinked file: its inode is dropped once the
		// directory entry points at the first name's, so it carries nothing.
		fi.size = 0
		st.Xattrs = nil
	}
	return fi, nil
}

// xattrMap is the source's xattrs as the map go-erofs writes (sorted by
// it). go-erofs finds the ACLs' name indexes only under names with a dot
// after them, and would store the kernel's names under no index, which the
// kernel does not list: they are given as go-erofs spells them.
func xattrMap(name string, m *view.Attr) (map[string]string, error) {
	if len(m.Xattrs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(m.Xattrs))
	for _, x := range m.Xattrs {
		key := x.Name
		if key == "system.posix_acl_access" || key == "system.posix_acl_default" {
			key += "."
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("%s: xattr %q given twice", name, x.Name)
		}
		out[key] = x.Value
	}
	return out, nil
}

// encodeDev packs a device number as the kernel's new_encode_dev, which is
// how EROFS stores it and how the kernel decodes it.
func encodeDev(major, minor uint32) uint32 {
	return minor&0xff | major<<8 | (minor&^0xff)<<12
}
