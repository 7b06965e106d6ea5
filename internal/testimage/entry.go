// Package testimage writes OCI image layouts and docker-save archives whose
// every tar byte a test chooses, so importers and mounts can be checked
// against images that no registry would serve.
package testimage

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"path"
	"testing"
	"time"
)

// DefaultModTime is the mtime the constructors give, and the one an Entry
// with a zero ModTime gets. It is fixed so written blobs are reproducible,
// and it is neither zero nor now so a view that loses or invents an mtime
// shows up.
var DefaultModTime = time.Date(2024, time.January, 2, 3, 4, 5, 0, time.UTC)

// Entry is one tar member: its header fields and its body.
type Entry struct {
	Name string
	// Type is an archive/tar type flag; zero means tar.TypeReg.
	Type byte
	// Mode holds the permission bits with setuid (04000), setgid (02000)
	// and sticky (01000); the file type comes from Type.
	Mode         int64
	UID, GID     int
	Uname, Gname string
	// Body is the content of a regular file and sets the header's size.
	Body     []byte
	Linkname string
	Devmajor int64
	Devminor int64
	// ModTime is written as a PAX record whenever it has nanoseconds, so
	// they survive; zero means DefaultModTime.
	ModTime time.Time
	// Xattrs become PAX SCHILY.xattr.* records, the form GNU tar, Docker
	// and containerd read. Values may be binary.
	Xattrs map[string]string
}

// Dir returns a directory entry. A trailing slash is added as tar writers
// do, so "." becomes the root entry "./".
func Dir(name string, mode int64) Entry {
	if name == "" || name[len(name)-1] != '/' {
		name += "/"
	}
	return Entry{Name: name, Type: tar.TypeDir, Mode: mode, ModTime: DefaultModTime}
}

// File returns a regular file with mode 0644.
func File(name, body string) Entry {
	return Entry{Name: name, Type: tar.TypeReg, Mode: 0o644, Body: []byte(body), ModTime: DefaultModTime}
}

// Symlink returns a symbolic link name -> target.
func Symlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeSymlink, Mode: 0o777, Linkname: target, ModTime: DefaultModTime}
}

// Hardlink returns a hard link named name to the tar member target.
func Hardlink(name, target string) Entry {
	return Entry{Name: name, Type: tar.TypeLink, Mode: 0o644, Linkname: target, ModTime: DefaultModTime}
}

// Fifo returns a named pipe.
func Fifo(name string) Entry {
	return Entry{Name: name, Type: tar.TypeFifo, Mode: 0o644, ModTime: DefaultModTime}
}

// CharDev returns a character device.
func CharDev(name string, major, minor int64) Entry {
	return Entry{Name: name, Type: tar.TypeChar, Mode: 0o666, Devmajor: major, Devminor: minor, ModTime: DefaultModTime}
}

// BlockDev returns a block device.
func BlockDev(name string, major, minor int64) Entry {
	return Entry{Name: name, Type: tar.TypeBlock, Mode: 0o660, Devmajor: major, Devminor: minor, ModTime: DefaultModTime}
}

// Whiteout returns the marker .wh.NAME in dir that hides NAME of lower
// layers: an empty regular file, as image builders write it.
func Whiteout(dir, name string) Entry {
	return File(path.Join(dir, ".wh."+name), "")
}

// Opaque returns the marker .wh..wh..opq that hides all lower children of dir.
func Opaque(dir string) Entry {
	return Whiteout(dir, ".wh..opq")
}

// WithMode returns e with its permission and special bits set to mode.
func (e Entry) WithMode(mode int64) Entry {
	e.Mode = mode
	return e
}

// WithOwner returns e owned by uid:gid.
func (e Entry) WithOwner(uid, gid int) Entry {
	e.UID, e.GID = uid, gid
	return e
}

// WithModTime returns e with mtime t.
func (e Entry) WithModTime(t time.Time) Entry {
	e.ModTime = t
	return e
}

// WithXattr returns e with one more xattr. The map is copied so entries
// derived from one another never share it.
func (e Entry) WithXattr(name, value string) Entry {
	x := maps.Clone(e.Xattrs)
	if x == nil {
		x = map[string]string{}
	}
	x[name] = value
	e.Xattrs = x
	return e
}

// Header returns the tar header WriteLayout writes for e.
func (e Entry) Header() *tar.Header {
	h := &tar.Header{
		Typeflag: e.Type,
		Name:     e.Name,
		Linkname: e.Linkname,
		Size:     int64(len(e.Body)),
		Mode:     e.Mode,
		Uid:      e.UID,
		Gid:      e.GID,
		Uname:    e.Uname,
		Gname:    e.Gname,
		ModTime:  e.ModTime,
		Devmajor: e.Devmajor,
		Devminor: e.Devminor,
		// Without an explicit format archive/tar rounds mtimes to seconds.
		Format: tar.FormatPAX,
	}
	if h.Typeflag == 0 {
		h.Typeflag = tar.TypeReg
	}
	if h.ModTime.IsZero() {
		h.ModTime = DefaultModTime
	}
	if len(e.Xattrs) > 0 {
		h.PAXRecords = make(map[string]string, len(e.Xattrs))
		for k, v := range e.Xattrs {
			h.PAXRecords["SCHILY.xattr."+k] = v
		}
	}
	return h
}

// AddTo writes e as the next member of tw; Layer.Stream functions use it
// to build entries with the same defaults as Layer.Entries.
func (e Entry) AddTo(tw *tar.Writer) error {
	if err := tw.WriteHeader(e.Header()); err != nil {
		return fmt.Errorf("write header of %q: %w", e.Name, err)
	}
	if _, err := tw.Write(e.Body); err != nil {
		return fmt.Errorf("write body of %q: %w", e.Name, err)
	}
	return nil
}

// Tar returns an uncompressed tar of entries, in order.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		if err := e.AddTo(tw); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// FileCapability returns a security.capability xattr value granting caps
// (CAP_* bit numbers from linux/capability.h) as permitted and effective.
// It uses VFS_CAP_REVISION_2, the 20-byte form the kernel and setcap write.
func FileCapability(caps ...uint) string {
	const (
		revision2 = 0x02000000
		effective = 0x000001
	)
	var mask uint64
	for _, c := range caps {
		mask |= 1 << c
	}
	// magic_etc, then {permitted, inheritable} for the low and high 32 bits.
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], revision2|effective)
	binary.LittleEndian.PutUint32(b[4:], uint32(mask))
	binary.LittleEndian.PutUint32(b[12:], uint32(mask>>32))
	return string(b)
}
