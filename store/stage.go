package store

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/layerfs/layerfs/store/layer"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ErrMismatch is wrapped by every error about bytes that are not what
// their descriptor claims: a blob's, an object's, a layer's files'.
var ErrMismatch = layer.ErrMismatch

// stagedFile is a file being written under tmp/, hashed as it is written.
// Nothing is visible at its final name until Commit.
type stagedFile struct {
	f    *os.File
	hash hash.Hash
	n    int64
	// direct is set while writes bypass the page cache (stageDirect).
	direct bool
}

// stage opens a new temp file under the store's tmp/.
func (s *Store) stage(kind string) (*stagedFile, error) {
	f, err := os.CreateTemp(s.path(tmpDir), kind+"-*")
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", kind, err)
	}
	return &stagedFile{f: f, hash: sha256.New()}, nil
}

// stageDirect is stage for a layer's blob, whose bytes go to the disk
// without a copy in the page cache (O_DIRECT) where the file system
// allows: an import reads a blob once and nothing reads it again soon,
// and copying it into memory only for the kernel to write it back cost
// an import's CPU as much as inflating it.
func (s *Store) stageDirect(kind string) (*stagedFile, error) {
	w, err := s.stage(kind)
	if err != nil {
		return nil, err
	}
	w.setDirect(true)
	return w, nil
}

// directAlign is the alignment of the memory, length and offset of a
// write the kernel takes straight to the disk: a page covers every
// block size a store's disk has.
const directAlign = 4096

// setDirect turns O_DIRECT on or off; where the file system refuses it,
// writes go through the page cache, as they would anyway.
func (w *stagedFile) setDirect(on bool) {
	flags, err := unix.FcntlInt(w.f.Fd(), unix.F_GETFL, 0)
	if err != nil {
		w.direct = false
		return
	}
	if on {
		flags |= unix.O_DIRECT
	} else {
		flags &^= unix.O_DIRECT
	}
	_, err = unix.FcntlInt(w.f.Fd(), unix.F_SETFL, flags)
	w.direct = on && err == nil
}

// Write appends p, hashing it.
func (w *stagedFile) Write(p []byte) (int, error) {
	if w.direct && (len(p)%directAlign != 0 || uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign != 0) {
		// The stream's tail, or memory the disk cannot take straight:
		// the rest goes through the page cache.
		w.setDirect(false)
	}
	n, err := w.f.Write(p)
	if w.direct && errors.Is(err, unix.EINVAL) {
		// A file system that takes the flag but not the write.
		w.setDirect(false)
		var m int
		m, err = w.f.Write(p[n:])
		n += m
	}
	w.hash.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Size is the number of bytes written.
func (w *stagedFile) Size() int64 { return w.n }

// Digest is the sha256 of what was written so far.
func (w *stagedFile) Digest() digest.Digest {
	return digest.NewDigest(digest.SHA256, w.hash)
}

// Abort removes the temp file.
func (w *stagedFile) Abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// check compares what was written with what was expected: size first, so
// that a short or long stream is named as such rather than as a bad hash.
func (w *stagedFile) check(size int64, want digest.Digest) error {
	if size >= 0 && w.n != size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrMismatch, w.n, size)
	}
	if want != "" && w.Digest() != want {
		return fmt.Errorf("%w: digest %s, want %s", ErrMismatch, w.Digest(), want)
	}
	return nil
}

// Commit checks the size (when size >= 0) and the digest (when want is
// not empty), then makes the file durable at final: fsync the data,
// rename, fsync the directory. The rename is the commit point: a crash
// before it leaves only a temp file for gc, after it a complete file.
// Two writers of one name both succeed, and one file remains.
func (w *stagedFile) Commit(final string, size int64, want digest.Digest) error {
	if err := w.check(size, want); err != nil {
		w.Abort()
		return err
	}
	if err := w.f.Sync(); err != nil {
		w.Abort()
		return fmt.Errorf("sync %s: %w", w.f.Name(), err)
	}
	return w.rename(final, true)
}

func (w *stagedFile) rename(final string, syncDir bool) error {
	w.f.Close()
	if err := os.MkdirAll(filepath.Dir(final), dirMode); err != nil {
		os.Remove(w.f.Name())
		return fmt.Errorf("commit %s: %w", final, err)
	}
	if err := os.Rename(w.f.Name(), final); err != nil {
		os.Remove(w.f.Name())
		return fmt.Errorf("commit %s: %w", final, err)
	}
	if syncDir {
		return syncPath(filepath.Dir(final))
	}
	return nil
}

func syncPath(p string) error {
	d, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}

// checkDigest refuses a digest that is malformed or not sha256, the only
// algorithm the store names files by.
func checkDigest(d digest.Digest) error {
	// Algorithm panics on a digest without a colon, which Validate refuses.
	if strings.Contains(string(d), ":") && d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("%s digests are not supported (only sha256)", d.Algorithm())
	}
	return d.Validate()
}
