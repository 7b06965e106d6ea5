package fscontext

import (
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// TestMessages has overlayfs refuse a parameter it does not know: the
// kernel's own words name it, without their severity letter, and are
// read once.
func TestMessages(t *testing.T) {
	testimage.RequireRoot(t, "fsopen")
	fd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	const unknown = "no-such-parameter"
	if err := unix.FsconfigSetString(fd, unknown, "1"); err == nil {
		t.Fatalf("overlayfs took the parameter %s", unknown)
	}
	got := Messages(fd)
	if !strings.HasPrefix(got, " (overlay") || !strings.Contains(got, unknown) || !strings.HasSuffix(got, ")") {
		t.Errorf("Messages = %q, want the kernel's message naming %s in parentheses", got, unknown)
	}
	if again := Messages(fd); again != "" {
		t.Errorf("Messages read again = %q, want none left", again)
	}
}
