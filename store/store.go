// Package store keeps OCI images in a directory that is itself an OCI image
// layout, plus, for every extracted layer, a metadata index and one content
// object per distinct regular-file content. Every write is staged under
// tmp/ and renamed into place once verified, so no command ever finds a
// half-written file at a final name.
//
// The files say the concern, in the order data flows through them:
//
//	ingest.go    the one path every image takes into the store, whatever
//	             its Source (package source/archive for OCI layouts and
//	             docker-archives, source/registry for registries):
//	             manifest, config, layers extracted once each
//	source_layer.go  a bare layer tar, imported with no image around it
//	extract.go   a layer extracted (by package store/layer) and committed
//	views.go     opening extracted layers as a view (package view/stack)
//	the rest     content-addressed storage: blobs, objects, staging,
//	             partial downloads, index.json and names, targets, locks,
//	             leases, gc and verify
//
// The index format is package store/index; names and references are
// package reference.
//
// A program reading an image opens the store (Open; OpenForWriting to
// import into it, with package source/archive or source/registry),
// resolves what it reads to a Target (Resolve by name, digest or layer
// digests, ResolvePlatform for another platform of an image index than
// the host's), leases it (LeaseReading, or Lease for a view it serves)
// so that a gc meanwhile, in any process, keeps what it reads, and opens
// its view (OpenView): view.NewFS makes the view an io/fs file system,
// as package view's ExampleNewFS shows. A layer not extracted yet (a
// pull cut short, a layer given by digest) is extracted by Prepare;
// OpenView fails with ErrNotFound without it. Close the view, release
// the lease, then close the store.
//
// The store logs what a caller is not asked about (an image for another
// platform than asked, a damaged image passed over) through logrus's
// standard logger, at warning level and below; a program embedding it
// sets that logger's output and level as it wants them.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"time"

	"github.com/layerfs/layerfs/internal/kernelpath"
	"github.com/layerfs/layerfs/reference"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
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
	layoutFile = "oci-layout"
	indexLock  = ".index.lock"
	// gcLock is held shared by every command that writes, and exclusively
	// by gc, so gc never sees an object or blob that a writer has committed
	// but not yet referenced.
	gcLock = ".gc.lock"

	// AnnotationRefName names an image in the layout's index.json.
	AnnotationRefName = ocispec.AnnotationRefName
	// MaxMetadataSize bounds the manifests, configs and indexes read into
	// memory; the spec's registries use 4 MiB.
	MaxMetadataSize = 4 << 20
)

// Store is one store root.
type Store struct {
	root string
	// dir is the root, which every path inside the store is resolved
	// beneath; nil when the store does not exist yet.
	dir *os.File
	// closed is set by Close: a file opened after it is refused as
	// closed, not with the EBADF of the descriptor given back.
	closed atomic.Bool
}

// topDirs are a store's own directories. The file oci-layout with the
// directories layers/ and objects/ mark a directory as a layerfs store: a
// plain OCI layout has the first but never the others.
var topDirs = []string{"blobs", blobsDir, "layers", layersDir, "objects", objectsDir, tmpDir}

// storeNames are every name a store holds at its root.
var storeNames = map[string]bool{"blobs": true, "layers": true, "objects": true, tmpDir: true, indexFile: true, layoutFile: true, indexLock: true, gcLock: true}

// ErrNotStore is wrapped by the error about a --root that is not a store.
var ErrNotStore = errors.New("is not a layerfs store")

// Open opens the store at root for reading: nothing is created or
// changed, and a store the user can read but not write will do. A missing
// or empty directory reads as an empty store.
func Open(root string) (*Store, error) { return open(root, reading) }

// Root is the directory the store was opened at, for messages.
func (s *Store) Root() string { return s.root }

// OpenForWriting opens the store at root for a command that writes,
// making a store of a missing or empty directory. Any other directory
// that is not a store is refused.
func OpenForWriting(root string) (*Store, error) { return open(root, writing) }

// OpenToChange opens the store at root for a command that changes or
// removes what is in it (tag, rm, gc). A missing or empty directory holds
// nothing to change, so it is read as an empty store, as Open does, and
// is not made into one.
func OpenToChange(root string) (*Store, error) { return open(root, changing) }

// openMode is what a command does with the store it opens.
type openMode int

const (
	reading openMode = iota
	changing
	writing
)

// Close gives back the descriptor of the root that the store holds, so
// that a program opening stores as it goes does not keep one per store
// until the garbage collector finds it. Views opened from the store stay
// readable, but the contents of their files are opened through the store
// (OpenObject, OpenHandles): close it once nothing reads them. A file
// opened after Close fails with an error wrapping fs.ErrClosed; files
// already open read on.
func (s *Store) Close() error {
	if s.dir == nil || s.closed.Swap(true) {
		return nil
	}
	if err := s.dir.Close(); err != nil {
		return fmt.Errorf("store %s: %w", s.root, err)
	}
	return nil
}

func open(root string, mode openMode) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", root, err)
	}
	s := &Store{root: abs}
	if st, err := os.Stat(abs); err == nil && !st.IsDir() {
		return nil, fmt.Errorf("%s %w", abs, ErrNotStore)
	}
	if mode == writing {
		if err := os.MkdirAll(abs, dirMode); err != nil {
			return nil, fmt.Errorf("store %s: %w", abs, err)
		}
	}
	// A root given as a symlink (a store moved to another disk) is
	// resolved once, here, as a mountpoint is: every path the store
	// names later is beneath the directory checked below, whatever
	// becomes of the symlink. The kernel follows it, so not where it
	// refuses this user (another user's link in /tmp), and the open
	// below fails there as it does.
	if real, err := kernelpath.Resolve(abs); err == nil {
		abs, s.root = real, real
	}
	dir, err := os.OpenFile(abs, os.O_RDONLY|unix.O_DIRECTORY, 0)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case errors.Is(err, unix.ENOTDIR):
		return nil, fmt.Errorf("%s %w", abs, ErrNotStore)
	case err != nil:
		return nil, fmt.Errorf("store %s: %w", abs, err)
	}
	s.dir = dir
	if err := s.openDir(mode); err != nil {
		dir.Close()
		return nil, err
	}
	return s, nil
}

// openDir checks the root s.dir is, and makes the store when asked to
// write in an empty directory (or one a store's creation left half done).
func (s *Store) openDir(mode openMode) error {
	forWriting := mode != reading
	var st unix.Stat_t
	if err := unix.Fstat(int(s.dir.Fd()), &st); err != nil {
		return fmt.Errorf("store %s: %w", s.root, err)
	}
	names, err := s.dir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.root, err)
	}
	have := map[string]bool{}
	ownNamesOnly := true
	for _, n := range names {
		have[n] = true
		ownNamesOnly = ownNamesOnly && storeNames[n]
	}
	isStore := have[layoutFile] && have["layers"] && have["objects"]
	switch {
	case isStore:
	case (len(names) == 0 || ownNamesOnly && !have[layoutFile]) && mode != writing:
		// Empty, or a store whose creation was cut short (oci-layout
		// comes last): nothing is in it yet, and the next command that
		// writes finishes making it.
		s.dir.Close()
		s.dir = nil
		return nil
	case ownNamesOnly && !have[layoutFile]:
		if st.Uid != uint32(os.Geteuid()) {
			return checkTrusted(s.root, &st, true)
		}
		// The new store's root is its owner's alone, as all of it is.
		if err := unix.Fchmod(int(s.dir.Fd()), dirMode); err != nil {
			return fmt.Errorf("store %s: %w", s.root, err)
		}
		return s.create()
	default:
		return fmt.Errorf("%s %w", s.root, ErrNotStore)
	}
	if err := checkTrusted(s.root, &st, forWriting); err != nil {
		return err
	}
	for _, d := range topDirs {
		if err := unix.Fstatat(int(s.dir.Fd()), d, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("store %s: %w", s.path(d), err)
		}
		if err := checkTrusted(s.path(d), &st, forWriting); err != nil {
			return err
		}
	}
	if forWriting {
		if err := unix.Access(s.path(tmpDir), unix.W_OK); err != nil {
			return fmt.Errorf("store %s: not writable: %w", s.root, err)
		}
	}
	return nil
}

// create makes the store's directories and files in its root; oci-layout
// comes last, so a directory holding it is a whole store.
func (s *Store) create() error {
	for _, d := range topDirs {
		err := unix.Mkdirat(int(s.dir.Fd()), d, dirMode)
		if err != nil && err != unix.EEXIST {
			return fmt.Errorf("store %s: %w", s.path(d), err)
		}
		var st unix.Stat_t
		if err := unix.Fstatat(int(s.dir.Fd()), d, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("store %s: %w", s.path(d), err)
		}
		if err := checkTrusted(s.path(d), &st, true); err != nil {
			return err
		}
	}
	empty, _ := json.Marshal(ocispec.Index{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{}})
	if err := s.writeIfMissing(indexFile, empty); err != nil {
		return err
	}
	return s.writeIfMissing(layoutFile, []byte(`{"imageLayoutVersion":"1.0.0"}`))
}

// path is rel's full path in the store, for messages and for what opens
// by name; opens that must not follow symlinks go through openBeneath.
func (s *Store) path(rel string) string { return filepath.Join(s.root, rel) }

func (s *Store) writeIfMissing(name string, data []byte) error {
	var st unix.Stat_t
	if err := unix.Fstatat(int(s.dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
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
func (s *Store) BlobPath(d digest.Digest) string { return s.path(blobRel(d)) }

func blobRel(d digest.Digest) string { return filepath.Join(blobsDir, d.Encoded()) }

// ObjectPath is where a regular-file content object lives.
func (s *Store) ObjectPath(d digest.Digest) string { return s.path(objectRel(d)) }

func objectRel(d digest.Digest) string {
	e := d.Encoded()
	return filepath.Join(objectsDir, e[:2], e)
}

// OpenObject opens a content object for reading, refusing a symlink or
// anything but a regular file in its place.
func (s *Store) OpenObject(d digest.Digest) (*os.File, error) {
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("object %q: %w", d, err)
	}
	return s.openRegular(objectRel(d))
}

func (s *Store) layerDir(d digest.Digest) string {
	return filepath.Join(s.root, layersDir, d.Encoded())
}

// IndexPath is where layer d's metadata index lives once extracted.
func (s *Store) IndexPath(d digest.Digest) string {
	return filepath.Join(s.layerDir(d), "index")
}

// HasBlob reports whether blob d is in the store; a malformed digest
// names none.
func (s *Store) HasBlob(d digest.Digest) bool {
	if d.Validate() != nil {
		return false
	}
	_, err := os.Stat(s.BlobPath(d))
	return err == nil
}

// Extracted reports whether layer d has a finished index; a malformed
// digest names none.
func (s *Store) Extracted(d digest.Digest) bool {
	if d.Validate() != nil {
		return false
	}
	_, err := os.Stat(s.IndexPath(d))
	return err == nil
}

// PutBlob stages r as blob desc, verifying size and digest. A blob already
// present is not written again.
func (s *Store) PutBlob(desc ocispec.Descriptor, r io.Reader) error {
	if err := checkDigest(desc.Digest); err != nil {
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

// ReadBlob returns a small blob's bytes, checked against its digest.
func (s *Store) ReadBlob(d digest.Digest) ([]byte, error) {
	data, err := s.readSmallFile(blobRel(d))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	if digest.FromBytes(data) != d {
		return nil, fmt.Errorf("blob %s: %w", d, ErrMismatch)
	}
	return data, nil
}

// ReadMetadata reads a manifest, config or index, refusing one larger than
// any registry would serve rather than holding it in memory.
func ReadMetadata(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxMetadataSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxMetadataSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxMetadataSize)
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
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{}}
	if s.dir == nil {
		return idx, nil
	}
	data, err := s.readSmallFile(indexFile)
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
		if !IsManifest(m.MediaType) && !IsIndex(m.MediaType) {
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
	unlock, err := s.lock(context.Background(), indexLock, unix.LOCK_EX, "another command changing the store's image list")
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
	err = s.writeFile(indexFile, data)
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		// rm too needs room: the new list is written whole beside the
		// old before it takes its place, so that a crash leaves one of
		// them.
		return fmt.Errorf("%w; nothing was changed (the list of images is written anew whole, even to remove one): free some space on the store's file system (\"layerfs gc\" frees what no image uses) and run this again", err)
	}
	return err
}

// Tag names manifest desc, replacing any image of the same name. An
// empty name lists desc unnamed, found by its digest and kept by gc, as
// an import does with an image its source gives no name.
func (s *Store) Tag(name string, desc ocispec.Descriptor) error {
	if err := reference.CheckName(name); err != nil {
		return err
	}
	return s.updateIndex(func(idx *ocispec.Index) error { return setName(idx, name, desc, true) })
}

// AddNames gives the image desc each of names too, all or none. A name
// that already stands for another image, as given or in its docker-style
// full form, is refused with ErrNameTaken, and then none is given:
// moving it would leave that image unnamed, and gc removes what has no
// name.
func (s *Store) AddNames(desc ocispec.Descriptor, names ...string) error {
	for _, name := range names {
		if name == "" {
			return errors.New("an image name may not be empty")
		}
		if err := reference.CheckName(name); err != nil {
			return err
		}
	}
	return s.updateIndex(func(idx *ocispec.Index) error {
		for _, name := range names {
			if err := setName(idx, name, desc, false); err != nil {
				return err
			}
		}
		return nil
	})
}

// ErrNameTaken is wrapped by AddNames's refusal of a name in use.
var ErrNameTaken = errors.New("already names another image")

// setName lists desc in idx under name (unnamed when name is empty), in
// place of what the name listed, which, unless move, must be desc itself.
func setName(idx *ocispec.Index, name string, desc ocispec.Descriptor, move bool) error {
	if name != "" {
		desc.Annotations = map[string]string{AnnotationRefName: name}
	} else {
		desc.Annotations = nil
	}
	desc.Platform = nil
	full := reference.Normalize(name)
	kept := idx.Manifests[:0]
	for _, m := range idx.Manifests {
		n := m.Annotations[AnnotationRefName]
		if !move && name != "" && (n == name || n == full) && m.Digest != desc.Digest {
			return fmt.Errorf("image name %q %w, %s", name, ErrNameTaken, m.Digest)
		}
		if (name != "" && n == name) || (name == "" && n == "" && m.Digest == desc.Digest) {
			continue
		}
		kept = append(kept, m)
	}
	idx.Manifests = append(kept, desc)
	return nil
}

// The store's errors are its views' too, so that errors.Is holds
// whichever reports a missing or damaged thing.
var (
	// ErrNotFound is wrapped by errors about names and digests the store lacks.
	ErrNotFound = stack.ErrNotFound
	// ErrCorrupt is wrapped by errors about indexes that cannot be read.
	ErrCorrupt = stack.ErrCorrupt
)

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

// UntagDigest removes the image whose manifest or index is d under every
// name it has, and unnamed.
func (s *Store) UntagDigest(d digest.Digest) error {
	return s.updateIndex(func(idx *ocispec.Index) error {
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			if m.Digest != d || !(IsManifest(m.MediaType) || IsIndex(m.MediaType)) {
				kept = append(kept, m)
			}
		}
		if len(kept) == len(idx.Manifests) {
			return fmt.Errorf("image %s: %w", d, ErrNotFound)
		}
		idx.Manifests = kept
		return nil
	})
}

// lock takes a flock on a file in the root; how is LOCK_SH or LOCK_EX.
// A wait for it ends when ctx is done; holder says, in the message a
// wait of more than lockNotice prints, what the lock waits for.
func (s *Store) lock(ctx context.Context, name string, how int, holder string) (func(), error) {
	f, err := s.openBeneath(name, os.O_RDWR|os.O_CREATE, fileMode)
	if errors.Is(err, unix.EROFS) || errors.Is(err, unix.EACCES) {
		// A flock needs no write access: one that only reads a store it
		// cannot write (gc --dry-run) still keeps out the writers of
		// another, writable mount of it.
		f, err = s.openBeneath(name, os.O_RDONLY, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	return flock(ctx, f, how, holder)
}

func lockFile(ctx context.Context, p string, how int, holder string) (func(), error) {
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return flock(ctx, f, how, holder)
}

// lockNotice is how long a command waits for a lock before it says
// what it waits for: a command stuck behind a long gc would otherwise
// look hung.
const lockNotice = time.Second

// flock locks f, which it closes when the lock is released or not had.
// A wait is given up when ctx is done (an interrupt), with ctx's error;
// the wait itself goes on unseen, and the lock, once had, is let go at
// once.
func flock(ctx context.Context, f *os.File, how int, holder string) (func(), error) {
	p := f.Name()
	release := func() { f.Close() }
	err := flockRetry(f, how|unix.LOCK_NB)
	if err == nil {
		return release, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	notice := time.AfterFunc(lockNotice, func() {
		logrus.Warnf("waiting for %s (lock %s)", holder, p)
	})
	defer notice.Stop()
	done := make(chan error, 1)
	go func() { done <- flockRetry(f, how) }()
	select {
	case err := <-done:
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", p, err)
		}
		return release, nil
	case <-ctx.Done():
		go func() {
			<-done
			f.Close()
		}()
		return nil, ctx.Err()
	}
}

func flockRetry(f *os.File, how int) error {
	for {
		err := unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			return err
		}
	}
}

// Writing holds the store open for writing until release is called: gc
// waits for every writer to finish first, and a writer waits for a gc
// that runs, until ctx is done.
func (s *Store) Writing(ctx context.Context) (release func(), err error) {
	return s.lock(ctx, gcLock, unix.LOCK_SH, "gc to finish with the store at "+s.root)
}

// rel is p, a path inside the store, relative to its root.
func (s *Store) rel(p string) string {
	r, _ := filepath.Rel(s.root, p)
	return r
}
