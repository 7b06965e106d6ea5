package testimage

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// RequireTool returns the path of the program name, or skips t when it is
// not installed. With LAYERFS_INTEGRATION=1 a missing program fails t
// instead, so a CI run that is meant to compare against real tools cannot
// pass by quietly comparing against nothing.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("LAYERFS_INTEGRATION") == "1" {
		t.Fatalf("LAYERFS_INTEGRATION=1 but %s is not installed: %v", name, err)
	}
	t.Skipf("%s is not installed: %v", name, err)
	return ""
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
