package fs

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountErrorKeepsItsCause: go-fuse's error, trimmed of its newline
// for layerfs's one-line message, still wraps its cause.
func TestMountErrorKeepsItsCause(t *testing.T) {
	err := fmt.Errorf("mount /mnt: %w", trimmedError{fmt.Errorf("socketpair: %w\n", unix.EMFILE)})
	if want := "mount /mnt: socketpair: too many open files"; err.Error() != want || !errors.Is(err, unix.EMFILE) {
		t.Errorf("%q (wraps EMFILE: %v); want %q, wrapping EMFILE", err, errors.Is(err, unix.EMFILE), want)
	}
}
