package stack_test

import (
	"errors"
	"io/fs"
	"sync"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

// TestCloseWhileReading closes a view that many goroutines are walking,
// as a program serving a view shuts down: Close waits for the reads
// under way, which would otherwise read the unmapped indexes and end the
// process with a fault; every read after it fails with fs.ErrClosed.
func TestCloseWhileReading(t *testing.T) {
	for range 20 {
		s, v := teststore.OpenImage(t, testimage.Sample().Layers)
		fsys := view.NewFS(v, view.ByName(s.OpenObject))
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Go(func() {
				for {
					err := fs.WalkDir(fsys, ".", func(_ string, d fs.DirEntry, err error) error {
						if err != nil {
							return err
						}
						_, err = d.Info()
						return err
					})
					if err != nil {
						if !errors.Is(err, fs.ErrClosed) || errors.Is(err, stack.ErrCorrupt) {
							errs <- err
						}
						return
					}
				}
			})
		}
		time.Sleep(2 * time.Millisecond)
		v.Close()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("a walk as the view closed: %v, want fs.ErrClosed", err)
		}
	}
}
