package archive

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
)

func newStore(t *testing.T) (*store.Store, string) {
	t.Helper()
	root := t.TempDir()
	s, err := store.OpenForWriting(root)
	if err != nil {
		t.Fatal(err)
	}
	return s, root
}

// assertNoTemps checks that the store at root keeps nothing staged.
func assertNoTemps(t *testing.T, root string) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("temp file left behind: %s", e.Name())
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
			s, root := newStore(t)
			src := writeImage(t, testimage.Image{Name: "bad", Layers: c.Layers})
			_, err := Import(context.Background(), s, src, Options{})
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
			assertNoTemps(t, root)
			if _, problems, err := s.Verify(nil); err != nil || len(problems) > 0 {
				t.Errorf("verify after refusal: %v %v", problems, err)
			}
			if _, err := Import(context.Background(), s, good, Options{}); err != nil {
				t.Errorf("a good import after the refusal: %v", err)
			}
		})
	}
}

func TestImportSample(t *testing.T) {
	s, _ := newStore(t)
	res, err := Import(context.Background(), s, "../../testdata/sample", Options{})
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
	if want := umociPaths(t, "../../testdata/sample", "sample"); !slices.Equal(paths, want) {
		t.Errorf("the view shows\n%s\numoci unpacks\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}
}

// TestResolveImageInStack: an image among several targets, by name or
// by digest, is refused as an image, never as a name the store lacks.
func TestResolveImageInStack(t *testing.T) {
	s, _ := newStore(t)
	if _, err := Import(context.Background(), s, "../../testdata/sample", Options{}); err != nil {
		t.Fatal(err)
	}
	img, err := s.Resolve([]string{"sample"})
	if err != nil {
		t.Fatal(err)
	}
	layer := img.Layers[0].Digest.String()
	for _, image := range []string{"sample", img.Manifest.Digest.String()} {
		for _, targets := range [][]string{{image, layer}, {layer, image}} {
			_, err := s.Resolve(targets)
			if err == nil || errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), "is an image") {
				t.Errorf("Resolve(%q): %v, want it refused as an image", targets, err)
			}
		}
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
