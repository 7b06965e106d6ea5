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

// metaCache is the state of a view's meta image when kernelReady mounts.
type metaCache int

const (
	metaCached    metaCache = iota // built by an untimed mount first
	metaBuildWarm                  // none: the mount builds it, caches warm
	metaBuildCold                  // none, and caches dropped
)

// kernelReady times mount --kernel of img until it returns. Without a
// cached image the time is the image's build from the layers' indexes
// plus the mount (and, cold, the binary and the indexes read from disk).
func (b *bench) kernelReady(img *image, cache metaCache) measure {
	return func() (float64, error) {
		mp, err := b.mountpoint(layerfsKernel.name)
		if err != nil {
			return 0, err
		}
		if cache == metaCached {
			m, err := layerfsKernel.mount(b, img, mp)
			if err != nil {
				return 0, err
			}
			if err := m.umount(); err != nil {
				return 0, err
			}
		} else if err := os.RemoveAll(filepath.Join(b.corpus.store, "meta")); err != nil {
			return 0, err
		}
		if cache == metaBuildCold {
			if err := dropCaches(); err != nil {
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
