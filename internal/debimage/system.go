package debimage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/procstat"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// run runs a program, keeping its output for the error. Cancelling ctx
// sends SIGTERM first, so that debootstrap's exit trap can unmount what it
// mounted.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(unix.SIGTERM) }
	cmd.WaitDelay = time.Minute
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, tail(out.String(), 4000))
	}
	logger.WithFields(logrus.Fields{"cmd": filepath.Base(name) + " " + strings.Join(args, " "), "took": time.Since(start).Round(time.Millisecond)}).Debug("ran")
	return nil
}

// removeTree deletes dir after detaching whatever is mounted beneath it:
// a killed debootstrap can leave the host's proc, sys or even a bind of
// /dev in its target, and removing through those would harm the host.
func removeTree(dir string) error {
	if err := unmountUnder(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

func unmountUnder(dir string) error {
	resolved, err := filepath.EvalSymlinks(dir)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("resolve %s: %w", dir, err)
	}
	mounts, err := procstat.Mounts()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range mounts {
		if mp := m.Mountpoint; mp == resolved || strings.HasPrefix(mp, resolved+"/") {
			points = append(points, mp)
		}
	}
	// Deepest first, so that nothing is detached from under another.
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		logger.WithField("mount", p).Warn("detaching a mount left in the build")
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
	return nil
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
}

// readLayers returns the layers of the manifest that ref names in the OCI
// layout, lowest first.
func readLayers(layout, ref string) ([]Layer, error) {
	var index struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := readJSON(filepath.Join(layout, "index.json"), &index); err != nil {
		return nil, err
	}
	var manifest *descriptor
	for i, m := range index.Manifests {
		if m.Annotations["org.opencontainers.image.ref.name"] == ref {
			manifest = &index.Manifests[i]
		}
	}
	if manifest == nil {
		return nil, fmt.Errorf("layout %s has no image %q", layout, ref)
	}
	mpath, err := blobPath(layout, manifest.Digest)
	if err != nil {
		return nil, err
	}
	var m struct {
		Layers []descriptor `json:"layers"`
	}
	if err := readJSON(mpath, &m); err != nil {
		return nil, err
	}
	var layers []Layer
	for _, l := range m.Layers {
		p, err := blobPath(layout, l.Digest)
		if err != nil {
			return nil, err
		}
		layers = append(layers, Layer{Digest: l.Digest, MediaType: l.MediaType, Size: l.Size, Path: p})
	}
	return layers, nil
}

func blobPath(layout, digest string) (string, error) {
	alg, hex, ok := strings.Cut(digest, ":")
	if !ok || alg != "sha256" || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		return "", fmt.Errorf("layout %s: bad digest %q", layout, digest)
	}
	return filepath.Join(layout, "blobs", alg, hex), nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}
