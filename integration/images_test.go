package integration

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/debimage"
)

// cacheDir holds what tests build once and share: the Debian image. It
// outlives one test binary, so a second run of the suite builds nothing.
func cacheDir() string {
	if d := os.Getenv("LAYERFS_TEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "layerfs-test-cache")
}

var (
	debianOnce sync.Once
	debian     *debimage.Image
	debianErr  error
)

// debianImage is a real Debian image made by debootstrap and umoci: three
// gzip layers with deletions, hardlinks, xattrs and a 64 MiB file.
func debianImage(t testing.TB) *debimage.Image {
	t.Helper()
	requireRoot(t)
	debianOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		debian, debianErr = debimage.Build(ctx, cacheDir())
	})
	if debianErr != nil {
		t.Fatalf("build the Debian image: %v", debianErr)
	}
	return debian
}
