package erofs

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// DirFS is a directory on the host as a source for Build and BuildMeta:
// every attribute as lstat and the xattr calls give it, without following
// symlinks. With objects set, each regular file's content is hashed into
// the Object of its *view.Attr (FileInfo.Sys), which BuildMeta names in
// the file's redirect.
func DirFS(dir string, objects bool) fs.FS {
	return &dirFS{root: dir, objects: objects}
}

type dirFS struct {
	root    string
	objects bool
}

func (d *dirFS) path(op, name string) (string, error) {
	if !view.ValidPath(name) {
		return "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return filepath.Join(d.root, filepath.FromSlash(name)), nil
}

func (d *dirFS) Open(name string) (fs.File, error) {
	p, err := d.path("open", name)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	return f, nil
}

func (d *dirFS) ReadLink(name string) (string, error) {
	p, err := d.path("readlink", name)
	if err != nil {
		return "", err
	}
	return os.Readlink(p)
}

func (d *dirFS) Stat(name string) (fs.FileInfo, error) {
	p, err := d.path("stat", name)
	if err != nil {
		return nil, err
	}
	return d.lstat(p)
}

func (d *dirFS) ReadDir(name string) ([]fs.DirEntry, error) {
	p, err := d.path("readdir", name)
	if err != nil {
		return nil, err
	}
	names, err := readNames(p)
	if err != nil {
		return nil, err
	}
	out := make([]fs.DirEntry, 0, len(names))
	for _, n := range names {
		info, err := d.lstat(filepath.Join(p, n))
		if err != nil {
			return nil, err
		}
		out = append(out, fs.FileInfoToDirEntry(info))
	}
	return out, nil
}

// readNames lists dir sorted by name, as fs.ReadDirFS promises and as
// reproducible images need: go-erofs walks in that order.
func readNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}

type hostInfo struct {
	fs.FileInfo
	meta *view.Attr
}

func (h *hostInfo) Sys() any { return h.meta }

func (d *dirFS) lstat(p string) (fs.FileInfo, error) {
	info, err := os.Lstat(p)
	if err != nil {
		return nil, err
	}
	// One lstat for the mode and the rest, so that they are of one file.
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil, fmt.Errorf("lstat %s: no stat_t", p)
	}
	m := &view.Attr{
		UID: st.Uid, GID: st.Gid,
		Mtime: st.Mtim.Sec, MtimeNs: uint32(st.Mtim.Nsec),
		Nlink: uint32(st.Nlink), Ino: st.Ino,
	}
	if info.Mode()&fs.ModeDevice != 0 {
		m.Major, m.Minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	}
	if m.Xattrs, err = listXattrs(p); err != nil {
		return nil, err
	}
	if d.objects && info.Mode().IsRegular() && info.Size() > 0 {
		if m.Object, err = hashFile(p); err != nil {
			return nil, err
		}
	}
	return &hostInfo{FileInfo: info, meta: m}, nil
}

func listXattrs(p string) ([]view.Xattr, error) {
	buf := make([]byte, 64*1024)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil, &fs.PathError{Op: "llistxattr", Path: p, Err: err}
	}
	var out []view.Xattr
	val := make([]byte, 64*1024)
	for _, name := range strings.Split(string(bytes.TrimRight(buf[:n], "\x00")), "\x00") {
		if name == "" {
			continue
		}
		vn, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return nil, &fs.PathError{Op: "lgetxattr " + name, Path: p, Err: err}
		}
		out = append(out, view.Xattr{Name: name, Value: string(val[:vn])})
	}
	return out, nil
}

func hashFile(p string) (digest.Digest, error) {
	// Hashed as the regular file lstat saw, never what a symlink put in
	// its place since would name.
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	d, err := digest.SHA256.FromReader(f)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return d, nil
}
