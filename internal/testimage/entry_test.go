package testimage

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestFileCapability compares FileCapability with what libcap's setcap
// writes for the same capabilities.
func TestFileCapability(t *testing.T) {
	RequireRoot(t, "setcap")
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	RunTool(t, "setcap", "cap_net_bind_service,cap_net_raw,cap_sys_admin,cap_bpf=ep", f)
	got := make([]byte, 64)
	n, err := unix.Getxattr(f, "security.capability", got)
	if err != nil {
		t.Fatal(err)
	}
	// CAP_BPF (39) is past the first 32 bits, so both halves are checked.
	if want := FileCapability(10, 13, 21, 39); string(got[:n]) != want {
		t.Errorf("setcap wrote %x, FileCapability gives %x", got[:n], want)
	}
}
