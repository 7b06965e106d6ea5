// Package debimage builds a real Debian bookworm image with real tools
// (debootstrap, umoci, skopeo) for tests and benchmarks, and caches it.
//
// The image has three layers. Layer 1 is a debootstrap minbase root.
// Layer 2 deletes files and whole trees, turns a directory into a file and
// a file into a directory, and adds a 64 MiB file of pseudo-random bytes,
// hardlinks, xattrs (security.capability included), setuid and setgid
// files, a sticky directory, a FIFO and a character device. Layer 3 deletes
// some of layer 2's additions, recreates a tree layer 2 deleted, and changes
// the mode and owner of a directory of layer 1. umoci writes the layers as
// gzip tars with whiteouts for the deletions.
//
// Building needs root and takes a minute or two, mostly debootstrap.
package debimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// Ref is the name of the image in its OCI layout.
const Ref = "debian"

// ArchiveRef is the image's name and tag in the docker archive.
const ArchiveRef = "layerfs-test/debian:latest"

// buildName names the finished build in the cache. It changes whenever the
// recipe does, so that a cache never serves an image of an older recipe.
const buildName = "debian-bookworm-v1"

// stampName is the build's description, written last: a build directory
// holding it is complete.
const stampName = "image.json"

var logger = logrus.WithField("pkg", "debimage")

// Layer is one layer blob of the image.
type Layer struct {
	Digest    string `json:"digest"`
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
	// Path is the blob in the OCI layout.
	Path string `json:"path"`
}

// Image is a finished build. Paths inside the image are relative and
// slash-separated, like the keys of an oracle.Tree.
type Image struct {
	// Dir holds everything below.
	Dir string `json:"-"`
	// Layout is an OCI image layout holding the image as Ref.
	Layout string `json:"layout"`
	Ref    string `json:"ref"`
	// Archive is a docker-archive tar of the image, tagged ArchiveRef.
	Archive    string `json:"archive"`
	ArchiveRef string `json:"archiveRef"`
	// Layers are the image's layers, lowest first.
	Layers []Layer `json:"layers"`
	// Rootfs is the tree umoci packed the last layer from: what the merged
	// view of the layers must show.
	Rootfs string `json:"rootfs"`
	// BigFile is the 64 MiB pseudo-random file added in layer 2.
	BigFile       string `json:"bigFile"`
	BigFileSHA256 string `json:"bigFileSHA256"`
	// Removed lists every path that a lower layer has and that layer 2 or
	// 3 deleted for good: none of them may show in the merged view.
	Removed []string `json:"removed"`
}

// Build returns the image cached in cacheDir, building it first if the
// cache holds no finished build. Concurrent callers, in this process or
// others, share one build.
func Build(ctx context.Context, cacheDir string) (*Image, error) {
	if strings.Contains(cacheDir, ":") {
		// skopeo's oci: and docker-archive: references split on colons.
		return nil, fmt.Errorf("build debian image: cache dir %q holds a colon", cacheDir)
	}
	cacheDir, err := filepath.Abs(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("build debian image: %w", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("build debian image: %w", err)
	}
	unlock, err := lock(ctx, filepath.Join(cacheDir, buildName+".lock"))
	if err != nil {
		return nil, fmt.Errorf("build debian image in %s: %w", cacheDir, err)
	}
	defer unlock()

	final := filepath.Join(cacheDir, buildName)
	img, err := load(final)
	if err == nil {
		logger.WithField("dir", final).Info("using cached debian image")
		return img, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("build debian image: %w", err)
	}
	// Under the lock no other build runs, so any directory left by an
	// interrupted one can go.
	if err := removeStale(cacheDir, final); err != nil {
		return nil, fmt.Errorf("build debian image: %w", err)
	}

	tmp, err := os.MkdirTemp(cacheDir, buildName+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("build debian image: %w", err)
	}
	done := false
	defer func() {
		if !done {
			if err := removeTree(tmp); err != nil {
				logger.WithError(err).Warn("cannot remove failed build")
			}
		}
	}()
	start := time.Now()
	rec, err := build(ctx, tmp)
	if err != nil {
		return nil, fmt.Errorf("build debian image in %s: %w", tmp, err)
	}
	if err := writeStamp(tmp, rec); err != nil {
		return nil, fmt.Errorf("build debian image: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, fmt.Errorf("build debian image: %w", err)
	}
	done = true
	logger.WithFields(logrus.Fields{"dir": final, "took": time.Since(start).Round(time.Second)}).Info("debian image built")
	return load(final)
}

// lock takes an exclusive flock on path, waiting until ctx ends.
func lock(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	logged := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !logged {
			logger.WithField("lock", path).Info("waiting for another debian image build")
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// removeStale removes the temp dirs of interrupted builds and a final dir
// without a stamp.
func removeStale(cacheDir, final string) error {
	stale, err := filepath.Glob(filepath.Join(cacheDir, buildName+".tmp-*"))
	if err != nil {
		return err
	}
	if _, err := os.Lstat(final); err == nil {
		stale = append(stale, final)
	}
	for _, d := range stale {
		logger.WithField("dir", d).Info("removing unfinished build")
		if err := removeTree(d); err != nil {
			return err
		}
	}
	return nil
}

func writeStamp(dir string, img *Image) error {
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stampName+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, stampName))
}

// load reads a finished build. Its stamp holds paths relative to dir, so
// that the build can be renamed into place after it is written.
func load(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, stampName))
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, stampName), err)
	}
	img.Dir = dir
	abs := func(p *string) { *p = filepath.Join(dir, *p) }
	abs(&img.Layout)
	abs(&img.Archive)
	abs(&img.Rootfs)
	paths := []string{img.Layout, img.Archive, img.Rootfs}
	for i := range img.Layers {
		abs(&img.Layers[i].Path)
		paths = append(paths, img.Layers[i].Path)
	}
	// A cache someone pruned by hand is as good as none.
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			return nil, fmt.Errorf("cached build %s: %w", dir, err)
		}
	}
	return &img, nil
}
