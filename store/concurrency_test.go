package store

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
)

// TestManyExtractorsOfOneLayer has goroutines extract one layer at once,
// each with its own lock descriptor as separate processes would have: all
// succeed, the layer's bytes are read once, and one blob, one index and
// no temp file remain.
func TestManyExtractorsOfOneLayer(t *testing.T) {
	s := newStore(t)
	dir := t.TempDir()
	descs, err := testimage.WriteLayout(dir, testimage.Image{Name: "x", Layers: testimage.Synthetic(1, 300, testimage.Gzip)})
	if err != nil {
		t.Fatal(err)
	}
	m, c, err := testimage.ReadImage(dir, descs[0])
	if err != nil {
		t.Fatal(err)
	}
	layer, diffID := m.Layers[0], c.RootFS.DiffIDs[0]
	blob, err := os.ReadFile(testimage.BlobPath(dir, layer.Digest))
	if err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int32
	errs := make([]error, 16)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.ExtractLayer(context.Background(), layer, diffID, func() (io.ReadCloser, error) {
				reads.Add(1)
				return io.NopCloser(bytes.NewReader(blob)), nil
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("the layer was read %d times, want once", n)
	}
	if !s.Extracted(layer.Digest) || !s.HasBlob(layer.Digest) {
		t.Fatal("layer not extracted")
	}
	assertNoTemps(t, s)
	if entries, _ := os.ReadDir(s.path(blobsDir)); len(entries) != 1 {
		t.Errorf("%d blobs, want 1", len(entries))
	}
}
