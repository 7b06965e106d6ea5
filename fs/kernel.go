package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/layerfs/layerfs/internal/fscontext"
	"golang.org/x/sys/unix"
)

// KernelSourcePrefix starts the source of a kernel mount (mount --kernel)
// in /proc/mounts, followed by its target: what tells a layerfs overlayfs
// mount from any other, as "fuse.layerfs" does for a FUSE mount.
const KernelSourcePrefix = "layerfs:"

// KernelSource is the source a kernel mount of target has in
// /proc/mounts (MountSource).
func KernelSource(target string) string {
	return MountSource(KernelSourcePrefix + target)
}

// MountSource is source as a mount is given it: the kernel takes a
// source of at most 255 bytes through fsconfig, so a longer one, a stack
// of more than three layers given by digest, is cut short there, ending
// in "...". FUSE mounts are cut alike, so that both kinds list a stack
// the same way.
func MountSource(source string) string {
	const limit = 255
	if len(source) > limit {
		source = source[:limit-len("...")] + "..."
	}
	return source
}

// KernelOptions lift a kernel mount's safe defaults.
type KernelOptions struct {
	// Target names what is mounted; /proc/mounts shows it in the
	// mount's source (KernelSource).
	Target    string
	Dev, Suid bool
}

// MaxKernelLayers is the most distinct layers a kernel mount's view can
// have: each is a data-only layer of its own (store.LinkPath), and
// overlayfs stacks at most 500 layers, the EROFS image one of them.
const MaxKernelLayers = 499

// ErrKernelMount is wrapped by every error of the kernel refusing a
// kernel mount (no EROFS file mounts, no overlayfs data-only layers, no
// new mount API, no privilege).
var ErrKernelMount = errors.New("the kernel cannot make this mount")

// MountKernel mounts the metadata-only EROFS image meta read-only, then
// overlayfs at mountpoint with that mount as its lower layer and data,
// the directories the image's redirects are paths beneath, as its
// data-only layers, searched in that order; read-only, nosuid and nodev
// unless asked. The
// EROFS mount is never attached anywhere: it is made with fsmount and
// handed to overlayfs as a descriptor, so the overlayfs mount holds it
// and it goes when that is unmounted, leaving no mountpoint behind. Both
// the image and the data directories are given as descriptors, so no
// path is resolved again after the caller opened them. Nothing stays
// mounted when it fails. The caller resolves the mountpoint
// (ResolveMountpoint) and checks it (CheckMountpointDir) first; a
// symlink on its path by the time of the mount is refused.
func MountKernel(meta *os.File, data []*os.File, mountpoint string, o KernelOptions) error {
	attrs := unix.MOUNT_ATTR_RDONLY
	if !o.Suid {
		attrs |= unix.MOUNT_ATTR_NOSUID
	}
	if !o.Dev {
		attrs |= unix.MOUNT_ATTR_NODEV
	}
	lower, err := newMount("erofs", attrs, func(fd int) error {
		// A file-backed EROFS mount (Linux 6.12+) opens the source by
		// path; /proc/self/fd names the very file opened.
		return unix.FsconfigSetString(fd, "source", fmt.Sprintf("/proc/self/fd/%d", meta.Fd()))
	})
	if err != nil {
		return fmt.Errorf("mount the EROFS image %s: %w", meta.Name(), err)
	}
	defer unix.Close(lower)
	overlay, err := newMount("overlay", attrs, func(fd int) error {
		for _, kv := range [][2]string{{"source", KernelSource(o.Target)}, {"metacopy", "on"}, {"redirect_dir", "on"}} {
			if err := unix.FsconfigSetString(fd, kv[0], kv[1]); err != nil {
				return fmt.Errorf("%s=%s: %w", kv[0], kv[1], err)
			}
		}
		if err := unix.FsconfigSetFd(fd, "lowerdir+", lower); err != nil {
			return fmt.Errorf("lowerdir+ (the EROFS mount): %w", err)
		}
		for _, d := range data {
			if err := unix.FsconfigSetFd(fd, "datadir+", int(d.Fd())); err != nil {
				return fmt.Errorf("datadir+ %s: %w", d.Name(), err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mount overlayfs over %s and %d data-only layers: %w", meta.Name(), len(data), err)
	}
	defer unix.Close(overlay)
	dir, err := openMountpoint(mountpoint)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	if err := unix.MoveMount(overlay, "", dir, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("mount at %s: %w", mountpoint, err)
	}
	return nil
}

// newMount makes a detached mount of fstype with the new mount API:
// configure sets its parameters, attrs its mount flags. The kernel's own
// message for a refused parameter is added to the error when it gives
// one.
func newMount(fstype string, attrs int, configure func(fd int) error) (int, error) {
	fd, err := unix.Fsopen(fstype, unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("%w: fsopen %s: %w", ErrKernelMount, fstype, err)
	}
	defer unix.Close(fd)
	if err := configure(fd); err != nil {
		return -1, fmt.Errorf("%w: %w%s", ErrKernelMount, err, fscontext.Messages(fd))
	}
	if err := unix.FsconfigCreate(fd); err != nil {
		return -1, fmt.Errorf("%w: create %s: %w%s", ErrKernelMount, fstype, err, fscontext.Messages(fd))
	}
	m, err := unix.Fsmount(fd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return -1, fmt.Errorf("%w: fsmount %s: %w%s", ErrKernelMount, fstype, err, fscontext.Messages(fd))
	}
	return m, nil
}

// isKernelMount reports whether m is a layerfs kernel mount.
func isKernelMount(m MountInfo) bool {
	return m.FSType == "overlay" && strings.HasPrefix(m.Target, KernelSourcePrefix)
}

// unmountKernel unmounts the kernel mount at abs: overlayfs, and with it
// the EROFS mount only it held.
func unmountKernel(abs string) error {
	err := unix.Unmount(abs, 0)
	if errors.Is(err, unix.EBUSY) {
		return ErrBusy
	}
	return err
}
