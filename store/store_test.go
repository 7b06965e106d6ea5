package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
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

func writeImage(t *testing.T, img testimage.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := testimage.WriteLayout(dir, img); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestImportRefusesHostileLayers(t *testing.T) {
	good := writeImage(t, testimage.Image{Name: "good", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("a", "a")}}}})
	for _, c := range testimage.RefusedCases() {
		t.Run(c.Name, func(t *testing.T) {
			s := newStore(t)
			src := writeImage(t, testimage.Image{Name: "bad", Layers: c.Layers})
			_, err := s.Import(context.Background(), src, ImportOptions{})
			if err == nil {
				t.Fatal("import succeeded")
			}
			want := fmt.Sprintf("entry %q", strings.TrimSuffix(c.BadEntry, "/"))
			if !strings.Contains(err.Error(), want) && !strings.Contains(err.Error(), fmt.Sprintf("entry %q", c.BadEntry)) {
				t.Errorf("error %q does not name %s", err, want)
			}
			if imgs, _ := s.Images(); len(imgs) != 0 {
				t.Errorf("refused image listed: %v", imgs)
			}
			assertNoTemps(t, s)
			if _, problems, err := s.Verify(nil); err != nil || len(problems) > 0 {
				t.Errorf("verify after refusal: %v %v", problems, err)
			}
			if _, err := s.Import(context.Background(), good, ImportOptions{}); err != nil {
				t.Errorf("a good import after the refusal: %v", err)
			}
		})
	}
}

func TestImportSample(t *testing.T) {
	s := newStore(t)
	res, err := s.Import(context.Background(), "../testdata/sample", ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Images; len(got) != 1 || got[0].Name != "sample" {
		t.Fatalf("imported %v", res.Images)
	}
	target, err := s.Resolve([]string{"sample"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.OpenView(target.Digests(), view.Merged)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var walk func(n view.Node, p string)
	var paths []string
	walk = func(n view.Node, p string) {
		children, err := v.List(n)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range children {
			cp := p + "/" + c.Name
			paths = append(paths, cp)
			if c.Type == view.TypeDir {
				child, ok, err := v.Lookup(n, c.Name)
				if err != nil || !ok {
					t.Fatalf("lookup %s: %v %v", cp, ok, err)
				}
				walk(child, cp)
			}
		}
	}
	walk(v.Root(), "")
	if want := umociPaths(t, "../testdata/sample", "sample"); !slices.Equal(paths, want) {
		t.Errorf("the view shows\n%s\numoci unpacks\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}
}

// umociPaths unpacks image ref of the layout at dir with umoci and lists
// every path of its root filesystem as the walk above does: each
// directory's children in name order, each path with a leading slash.
func umociPaths(t *testing.T, dir, ref string) []string {
	t.Helper()
	bundle := filepath.Join(t.TempDir(), "bundle")
	args := []string{"unpack", "--image", dir + ":" + ref, bundle}
	if os.Geteuid() != 0 {
		args = append([]string{"unpack", "--rootless"}, args[1:]...)
	}
	testimage.RunTool(t, "umoci", args...)
	rootfs := filepath.Join(bundle, "rootfs")
	var paths []string
	err := filepath.WalkDir(rootfs, func(p string, _ fs.DirEntry, err error) error {
		if err == nil && p != rootfs {
			paths = append(paths, strings.TrimPrefix(p, rootfs))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}
