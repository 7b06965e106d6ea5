package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/layerfs/layerfs/erofs"
	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
)

// fuseHint points a user whose kernel mount failed to the FUSE one.
const fuseHint = `mount without --kernel serves the same view over FUSE`

// kernelConflict refuses a flag of f that only FUSE mounts take.
func kernelConflict(f mountFlags) error {
	switch {
	case f.overlay:
		return errors.New("--kernel shows a merged or single-layer view; --overlay is for FUSE mounts that kernel overlayfs stacks")
	case f.allowOther:
		return errors.New("--kernel mounts are open to every user the image's modes let in; --allow-other is for FUSE mounts")
	case f.debug:
		return errors.New("--kernel mounts have no FUSE server to debug; --fuse-debug is for FUSE mounts")
	}
	return nil
}

// runKernelMount mounts targets at mountpoint as overlayfs over the
// view's metadata-only EROFS image, built once and cached in the store,
// and each layer's links/ directory, hardlinks to its objects, as the
// data-only layers (docs/erofs.md, docs/store.md). No process stays
// behind: the mount's lease in the store lives while the mount is there.
func runKernelMount(ctx context.Context, g *globals, f mountFlags, targets []string, mountpoint string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("mount --kernel needs root, to mount EROFS and overlayfs; %s", fuseHint)
	}
	mountpoint, err := layerfs.ResolveMountpoint(mountpoint)
	if err != nil {
		return err
	}
	if err := layerfs.CheckMountpointDir(mountpoint); err != nil {
		return err
	}
	s, err := g.open()
	if err != nil {
		return err
	}
	t, err := resolveView(g, s, targets)
	if err != nil {
		return err
	}
	if n := len(slices.Compact(slices.Sorted(slices.Values(t.Digests())))); n > layerfs.MaxKernelLayers {
		return fmt.Errorf("mount --kernel %s: the view has %d layers, more than the %d overlayfs stacks; %s", t, n, layerfs.MaxKernelLayers, fuseHint)
	}
	if err := s.Prepare(ctx, t); err != nil {
		return fmt.Errorf("mount %s: %w", t, err)
	}
	// The links and the image are written once, into the store; a FUSE
	// mount needs neither.
	if err := s.EnsureLinks(ctx, t.Digests()); err != nil {
		return kernelStoreError(t, err)
	}
	meta, rec, err := metaImage(ctx, s, t)
	if err != nil {
		return kernelStoreError(t, err)
	}
	defer meta.Close()
	data, err := s.OpenLinks(t.Digests())
	if err != nil {
		return fmt.Errorf("mount %s: %w", t, err)
	}
	defer func() {
		for _, d := range data {
			d.Close()
		}
	}()
	release, err := s.LeaseKernel(ctx, t, mountpoint, layerfs.KernelSource(t.String()), rec.Key())
	release, err = unleasedIfReadOnly("mount", t, "serves", release, err)
	if err != nil {
		return fmt.Errorf("mount %s: %w", t, err)
	}
	err = layerfs.MountKernel(meta, data, mountpoint, layerfs.KernelOptions{Target: t.String(), Dev: f.dev, Suid: f.suid})
	if err != nil {
		release()
		if errors.Is(err, layerfs.ErrKernelMount) {
			return fmt.Errorf("mount --kernel %s: %w; %s", t, err, fuseHint)
		}
		return err
	}
	logrus.WithFields(logrus.Fields{"target": t.String(), "mountpoint": mountpoint, "meta": rec.Key()}).Info("mounted in the kernel")
	return nil
}

// kernelStoreError is the error of a kernel mount of t that could not
// write what it needs into the store: where the store cannot be written
// (read-only, full), it points to the FUSE mount, which writes nothing
// there but its lease.
func kernelStoreError(t store.Target, err error) error {
	if cannotWrite(err) {
		return fmt.Errorf("mount --kernel %s: %w; %s", t, err, fuseHint)
	}
	return fmt.Errorf("mount %s: %w", t, err)
}

// metaImage opens the cached metadata-only image of t's view, building
// it when there is none or the one there is damaged.
func metaImage(ctx context.Context, s *store.Store, t store.Target) (*os.File, store.MetaImage, error) {
	kind := viewKind(t, false)
	want := store.NewMetaImage(t.Digests(), kind)
	f, rec, err := s.OpenMeta(want)
	if err == nil {
		return f, rec, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		logrus.Warnf("%v: building it again", err)
	}
	v, err := s.OpenView(t.Digests(), kind)
	if err != nil {
		return nil, want, err
	}
	defer v.Close()
	layers := t.Digests()
	// Each file's bytes are read through a link in the links directory
	// of one of the view's layers (store.LinkPath).
	redirect := func(a *view.Attr) string { return store.LinkPath(a.Object) }
	// The small files the image holds are read by handle: a cold lookup
	// by name reads a block of one of objects/'s large directories.
	handles := s.OpenHandles(layers)
	defer handles.Close()
	return s.PutMeta(ctx, want, func(out *os.File) (digest.Digest, int64, error) {
		res, err := erofs.BuildMeta(out, view.NewFS(v, handles.OpenObject), erofs.Options{Seed: want.Key(), Digest: true, Redirect: redirect})
		if err == nil {
			err = ctx.Err()
		}
		return digest.Digest(res.Digest), res.Size, err
	})
}
