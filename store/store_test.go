package store

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenForWriting(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStagedCommitChecksSizeThenDigest(t *testing.T) {
	s := newStore(t)
	data := []byte("hello")
	good := digest.FromBytes(data)
	cases := []struct {
		name string
		size int64
		d    digest.Digest
		want string
	}{
		{"short", 6, good, "5 bytes, want 6"},
		{"long", 4, good, "5 bytes, want 4"},
		{"digest", 5, digest.FromString("other"), "digest " + good.String()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := s.stage("blob")
			if err != nil {
				t.Fatal(err)
			}
			w.Write(data)
			err = w.Commit(s.BlobPath(c.d), c.size, c.d)
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Commit: %v, want a mismatch saying %q", err, c.want)
			}
			if s.HasBlob(c.d) {
				t.Fatal("a refused blob was committed")
			}
			assertNoTemps(t, s)
		})
	}
}

func assertNoTemps(t *testing.T, s *Store) {
	t.Helper()
	entries, err := os.ReadDir(s.path(tmpDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("temp file left behind: %s", e.Name())
	}
}

func TestStagedAbortRemovesTemp(t *testing.T) {
	s := newStore(t)
	w, err := s.stage("blob")
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("partial"))
	w.Abort()
	assertNoTemps(t, s)
}

func TestManyWritersOfOneDigest(t *testing.T) {
	s := newStore(t)
	data := []byte(strings.Repeat("layer bytes ", 10000))
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := s.stage("blob")
			if err != nil {
				errs[i] = err
				return
			}
			w.Write(data)
			errs[i] = w.Commit(s.BlobPath(desc.Digest), desc.Size, desc.Digest)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.BlobPath(desc.Digest))
	if err != nil || string(got) != string(data) {
		t.Fatalf("blob after concurrent commits: %d bytes, %v", len(got), err)
	}
	assertNoTemps(t, s)
	entries, _ := os.ReadDir(s.path(blobsDir))
	if len(entries) != 1 {
		t.Fatalf("%d blobs, want 1", len(entries))
	}
}

// TestCloseReleasesRoot checks that Close gives back the descriptor of the
// root, as the kernel lists a process's descriptors, and that a store
// whose root does not exist yet closes too.
func TestCloseReleasesRoot(t *testing.T) {
	rootFds := func(root string) int {
		t.Helper()
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, fd := range fds {
			if target, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && target == root {
				n++
			}
		}
		return n
	}
	root := t.TempDir()
	s, err := OpenForWriting(root)
	if err != nil {
		t.Fatal(err)
	}
	if rootFds(root) == 0 {
		t.Fatal("an open store holds no descriptor of its root")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if n := rootFds(root); n != 0 {
		t.Errorf("%d descriptors of the root left open after Close", n)
	}
	missing, err := Open(root + "/missing")
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.Close(); err != nil {
		t.Errorf("Close of a store with no root yet: %v", err)
	}
}

// TestMalformedDigest checks that a digest a program passes in unchecked
// is refused by the calls that take one, not a panic.
func TestMalformedDigest(t *testing.T) {
	s := newStore(t)
	for _, d := range []digest.Digest{"", "xx", "sha256:a", "sha256:../../etc", digest.Digest("sha512:" + strings.Repeat("0", 128))} {
		t.Run(string(d), func(t *testing.T) {
			if v, err := s.OpenView([]digest.Digest{d}, view.Merged); err == nil {
				v.Close()
				t.Error("OpenView took it")
			}
			if s.HasBlob(d) || s.Extracted(d) {
				t.Error("the store says it has it")
			}
			if err := s.PutBlob(ocispec.Descriptor{Digest: d, Size: 1}, strings.NewReader("x")); err == nil {
				t.Error("PutBlob took it")
			}
		})
	}
}

// TestMissingIsErrNotExist checks that what the store lacks fails as a
// missing file does anywhere in Go, and as the store's own not found.
func TestMissingIsErrNotExist(t *testing.T) {
	s, _ := newSampleStore(t)
	absent := digest.FromString("absent")
	for what, err := range map[string]error{
		"an unknown name":    func() error { _, err := s.Resolve([]string{"no-such-image"}); return err }(),
		"an unknown digest":  func() error { _, err := s.Resolve([]string{absent.String()}); return err }(),
		"a layer not stored": func() error { _, err := s.OpenLayer(absent); return err }(),
	} {
		if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: %v, want fs.ErrNotExist and ErrNotFound", what, err)
		}
	}
}

// TestResolveDockerNames: an image stored as "sample" (an OCI layout's
// ref name) is found by every name docker reads as
// docker.io/library/sample:latest, as the image stored in that full form
// is found by "sample"; other tags and repositories are not it.
func TestResolveDockerNames(t *testing.T) {
	s, want := newSampleStore(t)
	for _, name := range []string{"sample:latest", "library/sample", "library/sample:latest", "docker.io/library/sample", "docker.io/library/sample:latest"} {
		got, err := s.Resolve([]string{name})
		if err != nil || got.Manifest.Digest != want.Manifest.Digest {
			t.Errorf("Resolve %q: %v, %v; want the image stored as sample, %s", name, got.Manifest.Digest, err, want.Manifest.Digest)
		}
		if img, err := s.ImageNamed(name); err != nil || img.Name != "sample" {
			t.Errorf("ImageNamed %q: %q, %v; want sample", name, img.Name, err)
		}
	}
	for _, name := range []string{"sample:v2", "other/sample", "docker.io/other/sample", "ghcr.io/library/sample"} {
		if _, err := s.Resolve([]string{name}); !errors.Is(err, ErrNotFound) {
			t.Errorf("Resolve %q: %v, want ErrNotFound", name, err)
		}
	}
}

// TestSymlinkedRoot: a root given as a symlink is the directory it names
// when the store opens, and stays that directory when the symlink is
// pointed elsewhere.
func TestSymlinkedRoot(t *testing.T) {
	dir := t.TempDir()
	real, moved, link := filepath.Join(dir, "real"), filepath.Join(dir, "moved"), filepath.Join(dir, "link")
	for _, d := range []string{real, moved} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("real", link); err != nil {
		t.Fatal(err)
	}
	s, err := OpenForWriting(link)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Root() != real {
		t.Errorf("root %s, want %s", s.Root(), real)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("moved", link); err != nil {
		t.Fatal(err)
	}
	blob := ocispec.Descriptor{Digest: digest.FromString("blob\n"), Size: 5}
	if err := s.PutBlob(blob, strings.NewReader("blob\n")); err != nil {
		t.Fatal(err)
	}
	if p := s.BlobPath(blob.Digest); !strings.HasPrefix(p, real+"/") {
		t.Errorf("blob at %s, want beneath %s", p, real)
	} else if _, err := os.Stat(p); err != nil {
		t.Error(err)
	}
	if ents, err := os.ReadDir(moved); err != nil || len(ents) != 0 {
		t.Errorf("the symlink's new directory holds %d entries (%v), want none", len(ents), err)
	}
}

// TestImageLayersNamesTheBlob: a manifest or a config that does not
// parse is named by its digest, so the message says which blob is bad.
func TestImageLayersNamesTheBlob(t *testing.T) {
	s := newStore(t)
	put := func(data string) digest.Digest {
		t.Helper()
		d := digest.FromString(data)
		if err := s.PutBlob(ocispec.Descriptor{Digest: d, Size: int64(len(data))}, strings.NewReader(data)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	badManifest := put(`{"schemaVersion":1}`)
	config := put(`{"rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`)
	manifest := put(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + config.String() + `","size":1}}`)
	for d, want := range map[digest.Digest]string{
		badManifest: "blob " + badManifest.String() + ": manifest: schema version 1, want 2",
		manifest:    "blob " + config.String() + ": config: 1 diff_ids for 0 layers",
	} {
		if _, _, err := s.ImageLayers(d); err == nil || err.Error() != want {
			t.Errorf("ImageLayers(%s): %v; want %q", d, err, want)
		}
	}
}

// TestLockWaitEndsWithItsContext: a writer waiting for a gc that runs
// gives up when its context is done (an interrupt), at once, and the
// lock it was waiting for is not kept by the wait it gave up.
func TestLockWaitEndsWithItsContext(t *testing.T) {
	s := newStore(t)
	unlock, err := s.lock(context.Background(), gcLock, unix.LOCK_EX, "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := s.Writing(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Writing while gc holds the store: %v; want the context's error", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the wait ended %v after its context", took)
	}
	unlock()
	// The wait given up takes the lock when it is free, and lets it go.
	deadline := time.Now().Add(5 * time.Second)
	for {
		short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		unlock, err := s.lock(short, gcLock, unix.LOCK_EX, "test")
		cancel()
		if err == nil {
			unlock()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the store's lock stayed held after the wait for it was given up")
		}
	}
	release, err := s.Writing(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	release()
}
