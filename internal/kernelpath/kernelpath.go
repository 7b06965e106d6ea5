// Package kernelpath names a file by the path the kernel resolves to it.
package kernelpath

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// Resolve is the absolute path name leads to, every symlink on the way
// followed by the kernel itself: so only where the kernel lets this user
// follow it (with fs.protected_symlinks, not another user's link in a
// sticky world-writable directory such as /tmp, which resolving the links
// by reading them would follow). name is opened O_PATH and its path read
// back through /proc/self/fd: unlike a stat, that asks nothing of the
// FUSE server of a mount there, which may hang. The error is the
// system call's, for the caller to say what name was.
func Resolve(name string) (string, error) {
	fd, err := unix.Open(name, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	return os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
}
