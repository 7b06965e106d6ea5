package oracle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/fscontext"
	"golang.org/x/sys/unix"
)

// Mount stacks lowerDirs (lowest first, each unpacked by UnpackLayer) with
// kernel overlayfs, read-only and without an upper dir, at target. The
// returned function unmounts it.
func Mount(lowerDirs []string, target string) (unmount func() error, err error) {
	if len(lowerDirs) == 0 {
		return nil, fmt.Errorf("mount overlay at %s: no layers", target)
	}
	layers := make([]string, 0, len(lowerDirs)+1)
	for i := len(lowerDirs) - 1; i >= 0; i-- {
		abs, err := filepath.Abs(lowerDirs[i])
		if err != nil {
			return nil, fmt.Errorf("mount overlay at %s: %w", target, err)
		}
		layers = append(layers, abs)
	}
	// Overlayfs refuses a single lower dir without an upper dir. An empty
	// dir beneath changes nothing the mount shows, unlike a bind mount,
	// which would show the layer's whiteout devices.
	var empty string
	if len(layers) == 1 {
		empty, err = os.MkdirTemp("", "oracle-empty-")
		if err != nil {
			return nil, fmt.Errorf("mount overlay at %s: %w", target, err)
		}
		layers = append(layers, empty)
	}
	cleanup := func() error {
		if empty == "" {
			return nil
		}
		return os.Remove(empty)
	}

	if opt, ok := legacyOptions(layers); ok {
		err = unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, opt)
	} else {
		err = mountByFsconfig(layers, target)
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("mount overlay of %d layers at %s: %w", len(lowerDirs), target, err), cleanup())
	}
	return func() error {
		// A reference the kernel drops a moment after the last close
		// (a file closed by another thread) can make the mount busy
		// briefly; wait that out.
		err := unix.Unmount(target, 0)
		for deadline := time.Now().Add(10 * time.Second); errors.Is(err, unix.EBUSY) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			err = unix.Unmount(target, 0)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", target, err)
		}
		return cleanup()
	}, nil
}

// legacyOptions builds the mount(2) data for layers (top first). It reports
// false when that cannot work: mount(2) copies at most one page of options,
// and a path holding the separators would need escaping that the new mount
// API makes unnecessary.
func legacyOptions(layers []string) (string, bool) {
	for _, l := range layers {
		if strings.ContainsAny(l, ":,\\") {
			return "", false
		}
	}
	opt := "lowerdir=" + strings.Join(layers, ":")
	// The page holds the options and their terminating NUL.
	return opt, len(opt) < os.Getpagesize()
}

// mountByFsconfig mounts with the new mount API, passing one layer per
// "lowerdir+" call (Linux 6.8 and later), which has no length limit.
func mountByFsconfig(layers []string, target string) error {
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen: %w", err)
	}
	defer unix.Close(fd)
	for _, l := range layers {
		if err := unix.FsconfigSetString(fd, "lowerdir+", l); err != nil {
			return fmt.Errorf("fsconfig lowerdir+ %s: %w%s", l, err, fscontext.Messages(fd))
		}
	}
	if err := unix.FsconfigSetString(fd, "source", "overlay"); err != nil {
		return fmt.Errorf("fsconfig source: %w%s", err, fscontext.Messages(fd))
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return fmt.Errorf("fsconfig create: %w%s", err, fscontext.Messages(fd))
	}
	mfd, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_RDONLY)
	if err != nil {
		return fmt.Errorf("fsmount: %w%s", err, fscontext.Messages(fd))
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}
