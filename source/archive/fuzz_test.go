package archive

import (
	"context"
	"testing"
	"testing/fstest"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store"
)

// The seed corpora under testdata/fuzz are generated, and checked, by
// store's TestFuzzSeedsAreCurrent.

// FuzzDockerManifest imports a docker-archive whose manifest.json is the
// fuzzer's, beside a valid config and layers.
func FuzzDockerManifest(f *testing.F) {
	s, err := store.OpenForWriting(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	files, _ := testimage.NewFuzzSource(f).DockerFiles(f)
	f.Fuzz(func(t *testing.T, doc []byte) {
		fsys := fstest.MapFS{"manifest.json": &fstest.MapFile{Data: doc}}
		for k, v := range files {
			fsys[k] = v
		}
		importDockerArchive(context.Background(), s, fsys, Options{})
	})
}

// FuzzLayoutIndex imports an OCI layout whose index.json is the fuzzer's,
// beside the blobs of a valid image.
func FuzzLayoutIndex(f *testing.F) {
	s, err := store.OpenForWriting(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	src := testimage.NewFuzzSource(f)
	f.Fuzz(func(t *testing.T, doc []byte) {
		fsys := fstest.MapFS{"index.json": &fstest.MapFile{Data: doc}}
		for k, v := range src.Files {
			if k != "index.json" {
				fsys[k] = v
			}
		}
		importLayout(context.Background(), s, fsys, Options{})
	})
}
