// Package store keeps OCI images in a directory that is itself an OCI image
// layout, plus, for every extracted layer, a metadata index and one content
// object per distinct regular-file content. Every write is staged under
// tmp/ and renamed into place once verified, so no command ever finds a
// half-written file at a final name.
package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

const (
	dirMode  = 0o700
	fileMode = 0o600

	blobsDir   = "blobs/sha256"
	layersDir  = "layers/sha256"
	objectsDir = "objects/sha256"
	tmpDir     = "tmp"
	indexFile  = "index.json"
	indexLock  = ".index.lock"
	// gcLock is held shared by every command that writes, and exclusively
	// by gc, so gc never sees an object or blob that a writer has committed
	// but not yet referenced.
	gcLock = ".gc.lock"

	// AnnotationRefName names an image in the layout's index.json.
	AnnotationRefName = ocispec.AnnotationRefName
	// maxMetadataSize bounds the manifests, configs and indexes read into
	// memory; the spec's registries use 4 MiB.
	maxMetadataSize = 4 << 20
)

// Store is one store root.
type Store struct {
	root string
}

// Open opens the store at root, creating it if it does not exist.
func Open(root string) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", root, err)
	}
	s := &Store{root: abs}
	for _, d := range []string{"", blobsDir, layersDir, objectsDir, tmpDir} {
		// Chmod too: MkdirAll leaves a directory that exists as it is.
		if err := os.MkdirAll(s.path(d), dirMode); err != nil {
			return nil, fmt.Errorf("store %s: %w", abs, err)
		}
		if err := os.Chmod(s.path(d), dirMode); err != nil {
			return nil, fmt.Errorf("store %s: %w", abs, err)
		}
	}
	if err := unix.Access(abs, unix.W_OK); err != nil {
		return nil, fmt.Errorf("store %s: not writable: %w", abs, err)
	}
	if err := s.writeIfMissing("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	empty, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}})
	if err := s.writeIfMissing(indexFile, empty); err != nil {
		return nil, err
	}
	return s, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

func (s *Store) path(rel string) string { return filepath.Join(s.root, rel) }

func (s *Store) writeIfMissing(name string, data []byte) error {
	if _, err := os.Stat(s.path(name)); err == nil {
		return nil
	}
	return s.writeFile(name, data)
}

// writeFile replaces a small file at rel atomically.
func (s *Store) writeFile(rel string, data []byte) error {
	w, err := s.stage("meta")
	if err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		w.Abort()
		return fmt.Errorf("write %s: %w", rel, err)
	}
	return w.Commit(s.path(rel), -1, "")
}

// BlobPath is where a verified blob lives.
func (s *Store) BlobPath(d digest.Digest) string {
	return filepath.Join(s.root, blobsDir, d.Encoded())
}

// ObjectPath is where a regular-file content object lives.
func (s *Store) ObjectPath(d digest.Digest) string {
	e := d.Encoded()
	return filepath.Join(s.root, objectsDir, e[:2], e)
}

func (s *Store) layerDir(d digest.Digest) string {
	return filepath.Join(s.root, layersDir, d.Encoded())
}

// IndexPath is where layer d's metadata index lives once extracted.
func (s *Store) IndexPath(d digest.Digest) string {
	return filepath.Join(s.layerDir(d), "index")
}

// HasBlob reports whether blob d is in the store.
func (s *Store) HasBlob(d digest.Digest) bool {
	_, err := os.Stat(s.BlobPath(d))
	return err == nil
}

// Extracted reports whether layer d has a finished index.
func (s *Store) Extracted(d digest.Digest) bool {
	_, err := os.Stat(s.IndexPath(d))
	return err == nil
}

// PutBlob stages r as blob desc, verifying size and digest. A blob already
// present is not written again; r is still drained so callers may chain it.
func (s *Store) PutBlob(desc ocispec.Descriptor, r io.Reader) error {
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("blob %q: %w", desc.Digest, err)
	}
	if s.HasBlob(desc.Digest) {
		return nil
	}
	w, err := s.stage("blob")
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if err := w.Commit(s.BlobPath(desc.Digest), desc.Size, desc.Digest); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	return nil
}

// PutJSON stores v as a blob of the given media type.
func (s *Store) PutJSON(mediaType string, v any) (ocispec.Descriptor, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
	return desc, s.PutBlob(desc, bytes.NewReader(data))
}

// ReadBlob returns a small blob's bytes, checked against its digest.
func (s *Store) ReadBlob(d digest.Digest) ([]byte, error) {
	f, err := os.Open(s.BlobPath(d))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	defer f.Close()
	data, err := readMetadata(f)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	if digest.FromBytes(data) != d {
		return nil, fmt.Errorf("blob %s: %w", d, ErrMismatch)
	}
	return data, nil
}

// readMetadata reads a manifest, config or index, refusing one larger than
// any registry would serve rather than holding it in memory.
func readMetadata(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxMetadataSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxMetadataSize {
		return nil, fmt.Errorf("larger than %d bytes", maxMetadataSize)
	}
	return data, nil
}

// Image is one named entry of the store's index.json: a manifest, or an
// image index whose platforms are chosen when a view is opened.
type Image struct {
	Name     string
	Manifest ocispec.Descriptor
	// Platforms are those of the image's manifests the store holds (one
	// for a manifest whose config names none: the zero Platform).
	Platforms []Platform
}

func (s *Store) readIndex() (ocispec.Index, error) {
	var idx ocispec.Index
	data, err := os.ReadFile(s.path(indexFile))
	if err != nil {
		return idx, fmt.Errorf("store index: %w", err)
	}
	if err := json.Unmarshal(data, &idx); err != nil {
		return idx, fmt.Errorf("store index %s: %w", s.path(indexFile), err)
	}
	return idx, nil
}

// Images lists the store's images, sorted by name.
func (s *Store) Images() ([]Image, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var out []Image
	for _, m := range idx.Manifests {
		if !isManifest(m.MediaType) && !isIndex(m.MediaType) {
			continue // a bare layer, kept by keepLayer
		}
		img := Image{Name: m.Annotations[AnnotationRefName], Manifest: m}
		// An image that cannot be read lists no platform here; the
		// commands that use it report why.
		manifests, _, _ := s.imageParts(img)
		for _, d := range manifests {
			img.Platforms = append(img.Platforms, platformOf(d.Platform))
		}
		out = append(out, img)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// updateIndex applies fn to index.json under the store's index lock.
func (s *Store) updateIndex(fn func(*ocispec.Index) error) error {
	unlock, err := s.lock(indexLock, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	if err := fn(&idx); err != nil {
		return err
	}
	if idx.Manifests == nil {
		idx.Manifests = []ocispec.Descriptor{}
	}
	data, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	return s.writeFile(indexFile, data)
}

// Tag names manifest desc, replacing any image of the same name.
func (s *Store) Tag(name string, desc ocispec.Descriptor) error {
	if name != "" {
		desc.Annotations = map[string]string{AnnotationRefName: name}
	} else {
		desc.Annotations = nil
	}
	desc.Platform = nil
	return s.updateIndex(func(idx *ocispec.Index) error {
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			n := m.Annotations[AnnotationRefName]
			if (name != "" && n == name) || (name == "" && n == "" && m.Digest == desc.Digest) {
				continue
			}
			kept = append(kept, m)
		}
		idx.Manifests = append(kept, desc)
		return nil
	})
}

// ErrNotFound is wrapped by errors about names and digests the store lacks.
var ErrNotFound = errors.New("not found")

// Untag removes the image called name.
func (s *Store) Untag(name string) error {
	return s.updateIndex(func(idx *ocispec.Index) error {
		kept := idx.Manifests[:0]
		found := false
		for _, m := range idx.Manifests {
			if m.Annotations[AnnotationRefName] == name {
				found = true
				continue
			}
			kept = append(kept, m)
		}
		if !found {
			return fmt.Errorf("image %q: %w", name, ErrNotFound)
		}
		idx.Manifests = kept
		return nil
	})
}

// lock takes a flock on a file in the root; how is LOCK_SH or LOCK_EX.
func (s *Store) lock(name string, how int) (func(), error) {
	return lockFile(s.path(name), how)
}

func lockFile(p string, how int) (func(), error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil
}

// Writing holds the store open for writing until release is called: gc
// waits for every writer to finish first.
func (s *Store) Writing() (release func(), err error) {
	return s.lock(gcLock, unix.LOCK_SH)
}
