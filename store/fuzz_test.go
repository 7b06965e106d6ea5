package store

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/store/layer"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The seed corpora under testdata/fuzz are generated from internal/testimage
// by TestFuzzSeedsAreCurrent with LAYERFS_WRITE_FUZZ_SEEDS=1; a crash the
// fuzzer finds is added there by go test itself.

// TestFuzzSeedsAreCurrent checks the committed seed corpora are what
// internal/testimage's cases make today; LAYERFS_WRITE_FUZZ_SEEDS=1
// rewrites them instead.
func TestFuzzSeedsAreCurrent(t *testing.T) {
	layers := testimage.SeedLayers(t)
	// Hostile streams: cut short, a header claiming more than follows,
	// and bytes flipped inside a compressed stream.
	for _, l := range layers[:12] {
		layers = append(layers, l[:len(l)/2], l[:min(len(l), 700)])
		flipped := bytes.Clone(l)
		flipped[len(flipped)/2] ^= 0xff
		layers = append(layers, flipped)
	}
	src := testimage.NewFuzzSource(t)
	_, manifest := src.DockerFiles(t)
	var idx ocispec.Index
	if err := json.Unmarshal(src.Files["index.json"].Data, &idx); err != nil {
		t.Fatal(err)
	}
	docs := map[string][][]byte{
		"FuzzExtract":  layers,
		"FuzzManifest": {src.Files[testimage.BlobPath("", idx.Manifests[0].Digest)].Data},
	}
	// package source/archive's import fuzzers mutate these documents.
	archiveDocs := map[string][][]byte{
		"FuzzDockerManifest": {manifest, []byte(`[{"Config":"../config.json","Layers":["/l0.tar"]}]`), []byte(`[{"Config":"config.json","Layers":[]}]`)},
		"FuzzLayoutIndex":    {src.Files["index.json"].Data},
	}
	strs := map[string][]string{
		"FuzzResolve": {"sample", "sha256:887de7c1b19c", "887de7c1b19c9ad301d3", "f300a35215b6 73417749b3ad", "docker.io/library/sample:latest", "sha256:", "zzzzzzzzzzzzzzz"},
	}
	for target, ds := range docs {
		for i, d := range ds {
			testimage.CheckSeed(t, "testdata", target, i, "[]byte("+strconv.Quote(string(d))+")")
		}
	}
	for target, ds := range archiveDocs {
		for i, d := range ds {
			testimage.CheckSeed(t, filepath.Join("..", "source", "archive", "testdata"), target, i, "[]byte("+strconv.Quote(string(d))+")")
		}
	}
	// store/index's reader is fuzzed from the indexes of these layers.
	s, err := OpenForWriting(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range layers {
		x, err := s.newExtraction(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = x.Read(bytes.NewReader(l))
		var buf bytes.Buffer
		if err == nil {
			err = x.WriteIndex(&buf, index.Info{DiffID: digest.FromBytes(l)})
		}
		x.Abort()
		if err != nil {
			continue
		}
		testimage.CheckSeed(t, filepath.Join("index", "testdata"), "FuzzIndex", n, "[]byte("+strconv.Quote(buf.String())+")")
		n++
	}
	for target, ss := range strs {
		for i, s := range ss {
			testimage.CheckSeed(t, "testdata", target, i, "string("+strconv.Quote(s)+")")
		}
	}
	// package layer's path cleaning is fuzzed from these tar names.
	for i, s := range []string{"a/b", "./a", "/abs", "a/../../b", "..", ".", "./", "a//b/", strings.Repeat("x/", 10)} {
		testimage.CheckSeed(t, filepath.Join("layer", "testdata"), "FuzzCleanPath", i, "string("+strconv.Quote(s)+")")
	}
	// package reference's parser is fuzzed from these names.
	for i, s := range []string{"debian", "library/debian:12", "host:5000/a/b:tag", "localhost/x", "a@sha256:" + strings.Repeat("ab", 32), "UPPER", "a/b:", ":tag", "a..b"} {
		testimage.CheckSeed(t, filepath.Join("..", "reference", "testdata"), "FuzzParseReference", i, "string("+strconv.Quote(s)+")")
	}
}

// FuzzExtract feeds arbitrary bytes to the tar-to-index path: decompress,
// read the tar, check every entry, resolve hardlinks, write the index. It
// must refuse or succeed, never panic; what it accepts must give an index
// that reads back whole; and nothing may stay in tmp/ once it is done.
func FuzzExtract(f *testing.F) {
	s, err := OpenForWriting(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		// A small expansion limit: a sparse header claiming gigabytes of
		// zeros would otherwise stall the fuzzer hashing them.
		x, err := s.newExtraction(64<<20, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = x.Read(bytes.NewReader(blob))
		var buf bytes.Buffer
		var indexErr error
		if err == nil {
			indexErr = x.WriteIndex(&buf, index.Info{DiffID: digest.FromBytes(blob)})
		}
		x.Abort()
		if left, _ := os.ReadDir(s.path(tmpDir)); len(left) > 0 {
			t.Fatalf("%d temp files left behind (read error %v)", len(left), err)
		}
		if err != nil {
			return
		}
		if indexErr != nil {
			t.Fatalf("accepted layer gives no index: %v", indexErr)
		}
		r, err := index.Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("index of an accepted layer does not parse: %v", err)
		}
		for i := uint32(0); i < uint32(r.Len()); i++ {
			e, err := r.Entry(i)
			if err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			p, err := r.Path(i)
			if err != nil {
				t.Fatalf("record %d: %v", i, err)
			}
			if _, err := layer.CleanPath(p); err != nil || (i > 0 && strings.HasPrefix(p, "/")) {
				t.Fatalf("record %d path %q: %v", i, p, err)
			}
			if got, ok, err := r.Walk(p); err != nil || !ok || got != i {
				t.Fatalf("Walk(%q) = %d %v %v, want record %d", p, got, ok, err, i)
			}
			if e.Type == index.TypeReg && e.Size > 0 && e.Object == "" {
				t.Fatalf("record %d: a non-empty file without an object", i)
			}
		}
	})
}

// FuzzManifest stores an image from manifest bytes the fuzzer chooses,
// whose config and layers, when it names them, come from a valid image.
func FuzzManifest(f *testing.F) {
	s, err := OpenForWriting(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	src := testimage.NewFuzzSource(f)
	var idx ocispec.Index
	if err := json.Unmarshal(src.Files["index.json"].Data, &idx); err != nil {
		f.Fatal(err)
	}
	open := SourceFunc(func(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
		return src.Files.Open(testimage.BlobPath("", d.Digest))
	})
	f.Fuzz(func(t *testing.T, mdata []byte) {
		desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mdata), Size: int64(len(mdata))}
		if err := s.StoreImage(context.Background(), "", desc, mdata, open); err != nil {
			return
		}
		if _, err := s.Resolve([]string{desc.Digest.String()}); err != nil {
			t.Fatalf("stored manifest does not resolve: %v", err)
		}
	})
}

// FuzzResolve resolves command-line targets against a store holding the
// sample image: any answer but a panic will do, and what resolves must
// name layers the store has.
func FuzzResolve(f *testing.F) {
	s, err := OpenForWriting(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	if err := storeSample(s); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		t0, err := s.Resolve(strings.Fields(arg))
		if err != nil {
			return
		}
		for _, l := range t0.Layers {
			if !s.Extracted(l.Digest) {
				t.Fatalf("%q resolves to layer %s, which the store does not hold", arg, l.Digest)
			}
		}
	})
}

// newSampleStore is a new store holding the sample image, and its target.
func newSampleStore(t *testing.T) (*Store, Target) {
	t.Helper()
	s := newStore(t)
	if err := storeSample(s); err != nil {
		t.Fatal(err)
	}
	target, err := s.Resolve([]string{"sample"})
	if err != nil {
		t.Fatal(err)
	}
	return s, target
}

// storeSample stores the sample layout's image under its ref name, as an
// import of it would.
func storeSample(s *Store) error {
	const layout = "../testdata/sample"
	data, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		return err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return err
	}
	desc := idx.Manifests[0]
	mdata, err := os.ReadFile(testimage.BlobPath(layout, desc.Digest))
	if err != nil {
		return err
	}
	open := SourceFunc(func(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
		return os.Open(testimage.BlobPath(layout, d.Digest))
	})
	return s.StoreImage(context.Background(), desc.Annotations[ocispec.AnnotationRefName], desc, mdata, open)
}
