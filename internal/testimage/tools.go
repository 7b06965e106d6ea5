package testimage

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Unavailable ends a test this machine cannot run: a skip on a developer's
// machine, a failure with LAYERFS_INTEGRATION=1, so a CI run that is meant
// to compare against real tools cannot pass by quietly comparing against
// nothing.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("LAYERFS_INTEGRATION") == "1" {
		t.Fatalf("LAYERFS_INTEGRATION=1 says this test must run, but "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot ends t through Unavailable unless it runs as root; why says
// what needs root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "%s needs root (euid %d)", why, os.Geteuid())
	}
}

// RequireTool returns the path of the program name, or ends t through
// Unavailable when it is not installed.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s is not installed: %v", name, err)
	}
	return p
}

// RunTool runs the program name, which RequireTool must find, and returns
// its standard output. A failure fails t and shows what the program wrote.
func RunTool(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(RequireTool(t, name), args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}
