package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// ErrHaveBlob is returned by Partial when the blob is already in the
// store, perhaps committed by another process while this one waited.
var ErrHaveBlob = errors.New("blob already in the store")

// Partial is a blob being fetched into tmp/partial-<hex>, a name that
// outlives the process, so that a fetch killed at any moment resumes from
// the bytes already there. Its hash is re-computed over those bytes when
// it is reopened, and it commits as every staged file does: size checked
// before digest, fsync, rename into blobs/.
type Partial struct {
	*stagedFile
	store  *Store
	desc   ocispec.Descriptor
	unlock func()
}

// Partial opens the partial file of blob desc, creating it if needed, and
// holds it exclusively until Commit, Close or Abort: a second fetch of the
// same blob, in this process or another, waits here (until ctx is done),
// then finds the blob committed (ErrHaveBlob) or resumes where the first
// one stopped.
func (s *Store) Partial(ctx context.Context, desc ocispec.Descriptor) (*Partial, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob %q: %w", desc.Digest, err)
	}
	name := filepath.Join(s.path(tmpDir), "partial-"+desc.Digest.Encoded())
	// The lock is a file of its own: the partial file is closed, and so
	// would be unlocked, before it is renamed into blobs/.
	unlock, err := lockFile(ctx, name+".lock", unix.LOCK_EX, "another command fetching blob "+desc.Digest.String())
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if s.HasBlob(desc.Digest) {
		unlock()
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, ErrHaveBlob)
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	p := &Partial{stagedFile: &stagedFile{f: f, hash: sha256.New()}, store: s, desc: desc, unlock: unlock}
	n, err := io.Copy(p.hash, f)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("blob %s: rehash %s: %w", desc.Digest, name, err)
	}
	p.n = n
	// Bytes past the blob's size cannot be part of it: start over.
	if desc.Size >= 0 && n > desc.Size {
		if err := p.Reset(); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// Reset drops the bytes fetched so far, for a source that cannot resume
// or whose resumed bytes did not add up to the blob.
func (p *Partial) Reset() error {
	if err := p.f.Truncate(0); err != nil {
		return fmt.Errorf("blob %s: reset %s: %w", p.desc.Digest, p.f.Name(), err)
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("blob %s: reset %s: %w", p.desc.Digest, p.f.Name(), err)
	}
	p.hash.Reset()
	p.n = 0
	return nil
}

// Commit checks size, then digest, and moves the blob into the store. A
// blob that does not match is removed: nothing of it is kept.
func (p *Partial) Commit() error {
	defer p.unlock()
	if err := p.stagedFile.Commit(p.store.BlobPath(p.desc.Digest), p.desc.Size, p.desc.Digest); err != nil {
		return fmt.Errorf("blob %s: %w", p.desc.Digest, err)
	}
	// Safe to remove only now: whoever locks it from here on, through
	// this name or a new one, finds the blob committed.
	os.Remove(p.f.Name() + ".lock")
	return nil
}

// Close keeps what was fetched for a later run to resume from.
func (p *Partial) Close() {
	p.f.Close()
	p.unlock()
}

// Abort removes what was fetched.
func (p *Partial) Abort() {
	p.stagedFile.Abort()
	p.unlock()
}

// PartialDownloads counts the partial blobs kept under tmp/ for a later
// fetch to resume from, and their bytes; gc removes them.
func (s *Store) PartialDownloads() (files int, bytes int64, err error) {
	names, err := filepath.Glob(filepath.Join(s.path(tmpDir), "partial-*"))
	if err != nil {
		return 0, 0, err
	}
	for _, name := range names {
		if filepath.Ext(name) == ".lock" {
			continue
		}
		st, err := os.Lstat(name)
		if err != nil {
			continue
		}
		files++
		bytes += st.Size()
	}
	return files, bytes, nil
}
