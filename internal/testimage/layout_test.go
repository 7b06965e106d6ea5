package testimage

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func testImages() []Image {
	sample := Sample().Layers
	mixed := slices.Clone(sample)
	mixed[1].Compression, mixed[2].Compression = Zstd, None
	return []Image{
		{Name: "gzip", Layers: withCompression(Gzip, sample)},
		{Name: "zstd", Layers: withCompression(Zstd, sample), Arch: "arm64", Variant: "v8"},
		{Name: "none", Layers: withCompression(None, sample)},
		{Name: "mixed", Layers: mixed},
		{Name: "no-layers"},
	}
}

func umociRefs(t *testing.T, dir string) []string {
	t.Helper()
	refs := strings.Fields(string(RunTool(t, "umoci", "ls", "--layout", dir)))
	slices.Sort(refs)
	return refs
}

func TestWriteLayout(t *testing.T) {
	dir := t.TempDir()
	images := testImages()
	descs, err := WriteLayout(dir, images...)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"gzip", "mixed", "no-layers", "none", "zstd"}
	if got := umociRefs(t, dir); !slices.Equal(got, want) {
		t.Errorf("umoci ls = %q, want %q", got, want)
	}
	for i, img := range images {
		checkLayoutImage(t, dir, descs[i], img)
	}
}

// checkLayoutImage checks an image WriteLayout wrote, found by its name.
func checkLayoutImage(t *testing.T, dir string, desc ocispec.Descriptor, img Image) {
	t.Helper()
	got := skopeoInspect(t, "oci:"+dir+":"+img.Name)
	if got.Digest != desc.Digest {
		t.Errorf("skopeo inspect %s: manifest %s, want %s", img.Name, got.Digest, desc.Digest)
	}
	checkImage(t, dir, desc, img, got)
}

func TestWriteLayoutAppends(t *testing.T) {
	dir := t.TempDir()
	first := []Image{
		{Name: "a", Layers: layers([]Entry{File("a", "a\n")})},
		{Name: "b", Layers: layers([]Entry{File("b", "old\n")})},
	}
	if _, err := WriteLayout(dir, first...); err != nil {
		t.Fatal(err)
	}
	second := []Image{
		{Name: "b", Layers: layers([]Entry{File("b", "new\n")})},
		{Name: "c", Layers: layers([]Entry{File("c", "c\n")})},
	}
	descs, err := WriteLayout(dir, second...)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := umociRefs(t, dir), []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("umoci ls after appending = %q, want %q", got, want)
	}
	for i, img := range second {
		checkLayoutImage(t, dir, descs[i], img)
	}
	skopeoInspect(t, "oci:"+dir+":a")
}

func TestWriteIndexImage(t *testing.T) {
	dir := t.TempDir()
	platforms := []Image{
		{Layers: layers([]Entry{File("arch", "amd64\n")})},
		{Layers: layers([]Entry{File("arch", "arm64\n")}), Arch: "arm64", Variant: "v8"},
		{Layers: layers([]Entry{File("arch", "s390x\n")}), Arch: "s390x"},
	}
	desc, err := WriteIndexImage(dir, "multi", platforms...)
	if err != nil {
		t.Fatal(err)
	}
	var index ocispec.Index
	if err := json.Unmarshal(RunTool(t, "skopeo", "inspect", "--raw", "oci:"+dir+":multi"), &index); err != nil {
		t.Fatal(err)
	}
	if index.MediaType != ocispec.MediaTypeImageIndex || len(index.Manifests) != len(platforms) {
		t.Fatalf("skopeo inspect --raw: %+v, want an index of %d manifests", index, len(platforms))
	}
	for i, img := range platforms {
		p := img.platform()
		global := []string{"--override-os", p.OS, "--override-arch", p.Architecture}
		if p.Variant != "" {
			global = append(global, "--override-variant", p.Variant)
		}
		got := skopeoInspect(t, "oci:"+dir+":multi", global...)
		if got.Digest != desc.Digest {
			t.Errorf("skopeo inspect for %+v: digest %s, want the index's %s", p, got.Digest, desc.Digest)
		}
		checkImage(t, dir, index.Manifests[i], img, got)
	}
}

func TestWriteLayoutTar(t *testing.T) {
	images := testImages()
	archive := filepath.Join(t.TempDir(), "layout.tar")
	if err := WriteLayoutTar(archive, images...); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	descs, err := WriteLayout(dir, images...)
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range images {
		got := skopeoInspect(t, "oci-archive:"+archive+":"+img.Name)
		if got.Digest != descs[i].Digest {
			t.Errorf("%s in the archive has manifest %s, in a layout %s", img.Name, got.Digest, descs[i].Digest)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(archive), ".*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left beside the archive: %q", leftovers)
	}
}

func TestWriteIsDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		if _, err := WriteLayout(dir, testImages()...); err != nil {
			t.Fatal(err)
		}
	}
	RunTool(t, "diff", "-r", a, b)
}

func TestWrongDiffID(t *testing.T) {
	dir := t.TempDir()
	ls := layers([]Entry{File("good", "g\n")}, []Entry{File("bad", "b\n")})
	ls[1].WrongDiffID = true
	descs, err := WriteLayout(dir, Image{Name: "bad", Layers: ls})
	if err != nil {
		t.Fatal(err)
	}
	m, c, err := ReadImage(dir, descs[0])
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		actual := uncompressedDigest(t, BlobPath(dir, l.Digest), l.MediaType)
		if (actual != c.RootFS.DiffIDs[i]) != ls[i].WrongDiffID {
			t.Errorf("layer %d: uncompressed %s, diff_id %s, WrongDiffID %v", i, actual, c.RootFS.DiffIDs[i], ls[i].WrongDiffID)
		}
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestStreamDoesNotBuffer(t *testing.T) {
	const size = 64 << 20
	l := Layer{Compression: None, Stream: func(tw *tar.Writer) error {
		if err := tw.WriteHeader(&tar.Header{Name: "big", Typeflag: tar.TypeReg, Mode: 0o644, Size: size}); err != nil {
			return err
		}
		_, err := io.CopyN(tw, zeros{}, size)
		return err
	}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	descs, err := WriteLayout(t.TempDir(), Image{Name: "big", Layers: []Layer{l}})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 8<<20 {
		t.Errorf("writing a %d MiB layer allocated %d MiB", size>>20, alloc>>20)
	}
	if descs[0].Size == 0 {
		t.Error("no manifest written")
	}
}

func TestStreamAfterEntries(t *testing.T) {
	dir := t.TempDir()
	ls := Synthetic(3, 2500, Zstd)
	ls[0].Entries = []Entry{File("first", "written before the stream\n")}
	descs, err := WriteLayout(dir, Image{Name: "synthetic", Layers: ls})
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := ReadImage(dir, descs[0])
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i, l := range m.Layers {
		raw := filepath.Join(t.TempDir(), "layer.tar")
		RunTool(t, "sh", "-c", `zstd -dc <"$0" >"$1"`, BlobPath(dir, l.Digest), raw)
		names := readNames(t, raw)
		if want := 2500 + 3 + len(ls[i].Entries); len(names) != want {
			t.Errorf("layer %d has %d entries, want %d", i, len(names), want)
		}
		if i == 0 && names[0] != "first" {
			t.Errorf("layer 0 starts with %q, want the Entries before the stream", names[0])
		}
		for _, n := range names {
			seen[n]++
		}
	}
	for n, count := range seen {
		if count > 1 && !strings.HasSuffix(n, "/") {
			t.Errorf("%s is in %d layers; only directories should repeat", n, count)
		}
	}
	if seen["dir00002/"] != 3 {
		t.Errorf("dir00002/ is in %d layers, want all 3", seen["dir00002/"])
	}
}

func readNames(t *testing.T, file string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		names = append(names, h.Name)
	}
}

func TestBlobPath(t *testing.T) {
	d := digest.FromString("x")
	if got, want := BlobPath("layout", d), filepath.Join("layout", "blobs", "sha256", d.Encoded()); got != want {
		t.Errorf("BlobPath = %s, want %s", got, want)
	}
}
