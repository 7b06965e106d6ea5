package store

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"strings"

	"github.com/layerfs/layerfs/store/layer"
	"github.com/opencontainers/go-digest"
)

// ErrMismatch is wrapped by every error about bytes that are not what
// their descriptor claims: a blob's, an object's, a layer's files'.
var ErrMismatch = layer.ErrMismatch

// Staged is a file being written under tmp/, hashed as it is written.
// Nothing is visible at its final name until Commit.
type Staged struct {
	f    *os.File
	hash hash.Hash
	n    int64
}

// stage opens a new temp file under the store's tmp/.
func (s *Store) stage(kind string) (*Staged, error) {
	f, err := os.CreateTemp(s.path(tmpDir), kind+"-*")
	if err != nil {
		return nil, fmt.Errorf("stage %s: %w", kind, err)
	}
	return &Staged{f: f, hash: sha256.New()}, nil
}

// Write appends p, hashing it.
func (w *Staged) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.hash.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Size is the number of bytes written.
func (w *Staged) Size() int64 { return w.n }

// Digest is the sha256 of what was written so far.
func (w *Staged) Digest() digest.Digest {
	return digest.NewDigest(digest.SHA256, w.hash)
}

// Abort removes the temp file.
func (w *Staged) Abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// check compares what was written with what was expected: size first, so
// that a short or long stream is named as such rather than as a bad hash.
func (w *Staged) check(size int64, want digest.Digest) error {
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
func (w *Staged) Commit(final string, size int64, want digest.Digest) error {
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

func (w *Staged) rename(final string, syncDir bool) error {
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
	if alg := d.Algorithm(); alg != digest.SHA256 && strings.Contains(string(d), ":") {
		return fmt.Errorf("%s digests are not supported (only sha256)", alg)
	}
	return d.Validate()
}
