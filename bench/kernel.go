package main

import (
	"os"
	"path/filepath"
	"time"
)

// layerfsKernel is mount --kernel of the main store: overlayfs over the
// view's cached metadata-only EROFS image and the store's objects. The
// first mount of a view builds its image; the cases time what follows.
var layerfsKernel = system{"layerfs --kernel", func(b *bench, img *image, mp string) (*mounted, error) {
	start := time.Now()
	if _, err := b.layerfs(b.corpus.store, "mount", "--kernel", img.name, mp); err != nil {
		return nil, err
	}
	return &mounted{dir: mp, elapsed: time.Since(start), umount: func() error {
		_, err := b.layerfs(b.corpus.store, "umount", mp)
		return err
	}}, nil
}}

// kernelReady times mount --kernel of img until it returns, the view's
// meta image cached (by an untimed mount first, when uncached); with
// uncached, the cache is emptied and caches dropped before, so the time
// is the image's build from the cold indexes plus the mount.
func (b *bench) kernelReady(img *image, uncached bool) measure {
	return func() (float64, error) {
		mp, err := b.mountpoint(layerfsKernel.name)
		if err != nil {
			return 0, err
		}
		if uncached {
			if err := os.RemoveAll(filepath.Join(b.corpus.store, "meta")); err != nil {
				return 0, err
			}
			if err := dropCaches(); err != nil {
				return 0, err
			}
		} else {
			m, err := layerfsKernel.mount(b, img, mp)
			if err != nil {
				return 0, err
			}
			if err := m.umount(); err != nil {
				return 0, err
			}
		}
		m, err := layerfsKernel.mount(b, img, mp)
		if err != nil {
			return 0, err
		}
		return m.elapsed.Seconds(), m.umount()
	}
}
