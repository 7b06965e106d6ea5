package testimage

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// dockerManifestEntry is one image of a docker-archive's manifest.json.
type dockerManifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// FuzzSource is a small valid image whose files the import fuzzers keep
// beside the document they mutate, so a mutation that stays valid goes on
// into the rest of the import.
type FuzzSource struct {
	Files  fstest.MapFS
	Layout string // a layout dir holding the same image
}

// NewFuzzSource writes the image of a FuzzSource.
func NewFuzzSource(t testing.TB) FuzzSource {
	t.Helper()
	dir := t.TempDir()
	img := Image{Name: "fuzz", Layers: []Layer{
		{Compression: None, Entries: []Entry{Dir("d", 0o755), File("d/f", "f\n")}},
		{Compression: None, Entries: []Entry{Whiteout("d", "f"), File("g", "g\n")}},
	}}
	if _, err := WriteLayout(dir, img); err != nil {
		t.Fatal(err)
	}
	files := fstest.MapFS{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		files[filepath.ToSlash(rel)] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return FuzzSource{Files: files, Layout: dir}
}

// DockerFiles adds the files a docker-archive manifest.json of the image
// would name: the config as config.json and the layers as l0.tar, l1.tar.
func (src FuzzSource) DockerFiles(t testing.TB) (fstest.MapFS, []byte) {
	t.Helper()
	var idx ocispec.Index
	if err := json.Unmarshal(src.Files["index.json"].Data, &idx); err != nil {
		t.Fatal(err)
	}
	m, _, err := ReadImage(src.Layout, idx.Manifests[0])
	if err != nil {
		t.Fatal(err)
	}
	files := fstest.MapFS{"config.json": src.Files[BlobPath("", m.Config.Digest)]}
	var names []string
	for i, l := range m.Layers {
		name := fmt.Sprintf("l%d.tar", i)
		files[name] = src.Files[BlobPath("", l.Digest)]
		names = append(names, name)
	}
	manifest, _ := json.Marshal([]dockerManifestEntry{{Config: "config.json", RepoTags: []string{"fuzz/x:1"}, Layers: names}})
	return files, manifest
}

// CheckSeed writes one value of a seed corpus in go test's own format
// when LAYERFS_WRITE_FUZZ_SEEDS=1, and otherwise checks the committed one.
func CheckSeed(t *testing.T, testdata, target string, i int, value string) {
	t.Helper()
	dir := filepath.Join(testdata, "fuzz", target)
	p := filepath.Join(dir, fmt.Sprintf("seed-%03d", i))
	want := []byte("go test fuzz v1\n" + value + "\n")
	if os.Getenv("LAYERFS_WRITE_FUZZ_SEEDS") != "1" {
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("seed %s is missing or out of date (%v): rerun with LAYERFS_WRITE_FUZZ_SEEDS=1", p, err)
		}
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
}

// SeedLayers returns the layer blobs (as stored: gzip, zstd or plain) of
// every rule and refused case of internal/testimage, leaving out the large.
func SeedLayers(t testing.TB) [][]byte {
	t.Helper()
	var out [][]byte
	cases := append(RuleCases(), RefusedCases()...)
	for i, c := range cases {
		dir := t.TempDir()
		ls := c.Layers
		for j := range ls {
			ls[j].Compression = Compression(i % 3)
		}
		descs, err := WriteLayout(dir, Image{Name: c.Name, Layers: ls})
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := ReadImage(dir, descs[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			if l.Size > 64<<10 {
				continue
			}
			b, err := os.ReadFile(BlobPath(dir, l.Digest))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
	}
	return out
}
