package integration

import (
	"encoding/json"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

// layoutImage is one image of an OCI layout on disk, with what the
// oracle needs to unpack it: its layer blobs, lowest first.
type layoutImage struct {
	layout string
	// ref is the name the image is imported under and mounted by.
	ref    string
	layers []digest.Digest
	blobs  []string
}

// readLayoutImage reads the image desc of layout through testimage's
// reader, which shares nothing with the store's importer.
func readLayoutImage(t testing.TB, layout string, desc ocispec.Descriptor) layoutImage {
	t.Helper()
	m, _, err := testimage.ReadImage(layout, desc)
	if err != nil {
		t.Fatalf("read image of %s: %v", layout, err)
	}
	img := layoutImage{layout: layout, ref: desc.Annotations[ocispec.AnnotationRefName]}
	for _, l := range m.Layers {
		img.layers = append(img.layers, l.Digest)
		img.blobs = append(img.blobs, testimage.BlobPath(layout, l.Digest))
	}
	return img
}

// writeImage writes img as an OCI layout in a new directory.
func writeImage(t testing.TB, img testimage.Image) layoutImage {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	descs, err := testimage.WriteLayout(dir, img)
	if err != nil {
		t.Fatalf("write layout of %s: %v", img.Name, err)
	}
	return readLayoutImage(t, dir, descs[0])
}

// ruleImage is one case of testimage.RuleCases as an image named after it.
func ruleImage(t testing.TB, c testimage.RuleCase) layoutImage {
	t.Helper()
	return writeImage(t, testimage.Image{Name: "rule-" + c.Name, Layers: c.Layers})
}

// extractableRuleCases are the cases that GNU tar, and so the oracle, can
// unpack layer by layer.
func extractableRuleCases() []testimage.RuleCase {
	var out []testimage.RuleCase
	for _, c := range testimage.RuleCases() {
		if !c.TarCannotExtract {
			out = append(out, c)
		}
	}
	return out
}

// sampleImage is the sample layout the repository carries, as make demo
// mounts it.
func sampleImage(t testing.TB) layoutImage {
	t.Helper()
	layout, err := filepath.Abs("../testdata/sample")
	if err != nil {
		t.Fatal(err)
	}
	var idx ocispec.Index
	data, err := os.ReadFile(filepath.Join(layout, ocispec.ImageIndexFile))
	if err == nil {
		err = json.Unmarshal(data, &idx)
	}
	if err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("read %s index: %v (%d manifests)", layout, err, len(idx.Manifests))
	}
	return readLayoutImage(t, layout, idx.Manifests[0])
}

// debianLayoutImage is the cached Debian image made by debootstrap and umoci.
func debianLayoutImage(t testing.TB) layoutImage {
	t.Helper()
	deb := debianImage(t)
	img := layoutImage{layout: deb.Layout, ref: deb.Ref}
	for _, l := range deb.Layers {
		img.layers = append(img.layers, digest.Digest(l.Digest))
		img.blobs = append(img.blobs, l.Path)
	}
	return img
}

// importInto imports img into the store at root.
func importInto(t testing.TB, root string, img layoutImage) {
	t.Helper()
	out := mustRun(t, root, "import", img.layout)
	if !strings.Contains(out, img.ref+" ") {
		t.Fatalf("import %s: output %q does not name %s", img.layout, out, img.ref)
	}
}

// unpackLayers unpacks every layer blob the way overlay snapshotters do,
// each into its own directory, and returns the directories, lowest first.
func unpackLayers(t testing.TB, blobs []string) []string {
	t.Helper()
	requireRoot(t)
	testimage.RequireTool(t, "tar")
	base := t.TempDir()
	var dirs []string
	for i, b := range blobs {
		dst := filepath.Join(base, fmt.Sprintf("layer%d", i))
		if err := oracle.UnpackLayer(b, dst, dirs); err != nil {
			t.Fatalf("oracle: %v", err)
		}
		if err := dropIdleWhiteouts(dst, dirs); err != nil {
			t.Fatalf("oracle: %v", err)
		}
		dirs = append(dirs, dst)
	}
	return dirs
}

// dropIdleWhiteouts removes the whiteout devices of the unpacked layer dir
// that hide nothing: no layer beneath has anything at their path. Kernel
// overlayfs lists such a device by name in a directory no lower layer
// has, and then cannot stat it, although docs/semantics.md says a marker is
// never shown; removing it changes nothing else the overlay shows.
func dropIdleWhiteouts(dir string, lowerDirs []string) error {
	return filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil || d.Type()&iofs.ModeCharDevice == 0 {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil || st.Rdev != 0 {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		for _, l := range lowerDirs {
			if _, err := os.Lstat(filepath.Join(l, rel)); err == nil {
				return nil
			}
		}
		// The parent's mtime is the image's, set by the unpack: keep it.
		var parent unix.Stat_t
		if err := unix.Lstat(filepath.Dir(p), &parent); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		ts := []unix.Timespec{parent.Atim, parent.Mtim}
		return unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Dir(p), ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// overlayMount stacks lowerDirs with kernel overlayfs at a new directory,
// unmounted when the test ends.
func overlayMount(t testing.TB, lowerDirs []string) string {
	t.Helper()
	mnt := t.TempDir()
	unmountOverlay, err := oracle.Mount(lowerDirs, mnt)
	if err != nil {
		t.Fatalf("oracle: %v", err)
	}
	t.Cleanup(func() {
		if err := unmountOverlay(); err != nil {
			t.Errorf("oracle: %v", err)
			forceUnmount(t, mnt)
		}
	})
	return mnt
}

// oracleTree is what kernel overlayfs shows for the layer blobs.
func oracleTree(t testing.TB, blobs []string) oracle.Tree {
	t.Helper()
	return walk(t, overlayMount(t, unpackLayers(t, blobs)))
}

func walk(t testing.TB, dir string) oracle.Tree {
	t.Helper()
	tree, err := oracle.Walk(dir)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// requireSame fails t with every difference between want and got.
func requireSame(t testing.TB, what string, want, got oracle.Tree, opts ...oracle.DiffOption) {
	t.Helper()
	d := oracle.Diff(want, got, opts...)
	if len(d) == 0 {
		return
	}
	const most = 200
	if len(d) > most {
		d = append(d[:most], fmt.Sprintf("... and %d more", len(d)-most))
	}
	t.Errorf("%s: %d entries, want %d; differences:\n%s", what, len(got), len(want), strings.Join(d, "\n"))
}

// checkMergedView imports img into a new store, mounts it and compares
// the mount with kernel overlayfs over the same layers.
func checkMergedView(t *testing.T, img layoutImage) {
	t.Helper()
	root := t.TempDir()
	importInto(t, root, img)
	mnt := mountDaemon(t, root, img.ref)
	requireSame(t, "layerfs mount "+img.ref, oracleTree(t, img.blobs), walk(t, mnt))
}

// TestMergedViewMatchesOracle is the central check of docs/semantics.md: for
// every rule case, the sample image and the Debian image, the merged
// mount equals kernel overlayfs over the layers as snapshotters unpack
// them, in every attribute of every entry, the root included.
func TestMergedViewMatchesOracle(t *testing.T) {
	requireRoot(t)
	t.Run("rules", func(t *testing.T) {
		for _, c := range extractableRuleCases() {
			t.Run(c.Name, func(t *testing.T) {
				t.Parallel()
				checkMergedView(t, ruleImage(t, c))
			})
		}
	})
	t.Run("sample", func(t *testing.T) {
		checkMergedView(t, sampleImage(t))
	})
	t.Run("debian", func(t *testing.T) {
		checkMergedView(t, debianLayoutImage(t))
	})
}

// TestMountTakesCommaJoinedStack mounts a stack of the sample's layers
// given as ls, diff, export and build take it, digests joined by commas,
// and as mount's own separate arguments, each a short prefix: both equal
// kernel overlayfs over those layers.
func TestMountTakesCommaJoinedStack(t *testing.T) {
	requireRoot(t)
	img := sampleImage(t)
	if len(img.layers) < 3 {
		t.Fatalf("the sample has %d layers; the test needs 3", len(img.layers))
	}
	root := t.TempDir()
	importInto(t, root, img)
	var short []string
	for _, d := range img.layers {
		short = append(short, d.String()[:len("sha256:")+12])
	}
	want := oracleTree(t, img.blobs)
	for _, args := range [][]string{
		{strings.Join(short, ",")},
		{strings.Join(short[:2], ","), strings.Join(short[2:], ",")},
		short,
	} {
		requireSame(t, "layerfs mount "+strings.Join(args, " "), want, walkMount(t, root, args...))
	}
}

// TestListingsShowDotEntries compares what `ls -a` lists, "." and ".."
// included, which Walk leaves out, in directories of the sample.
func TestListingsShowDotEntries(t *testing.T) {
	requireRoot(t)
	img := sampleImage(t)
	root := t.TempDir()
	importInto(t, root, img)
	mnt := mountDaemon(t, root, img.ref)
	ref := overlayMount(t, unpackLayers(t, img.blobs))
	for _, dir := range []string{".", "etc", "var/log", "usr/share"} {
		want := testimage.RunTool(t, "ls", "-a1", filepath.Join(ref, dir))
		if got := testimage.RunTool(t, "ls", "-a1", filepath.Join(mnt, dir)); string(got) != string(want) {
			t.Errorf("ls -a %s: got\n%s\nwant\n%s", dir, got, want)
		}
	}
}
