package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	layerfs "github.com/layerfs/layerfs/fs"
)

// TestMain runs the suite with a temp directory of its own, so that at
// its end it can tell the mounts it made from those of other suites
// running on the machine: any mount left under that directory is a test
// that did not clean up, and fails the run (after being detached).
func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if os.Getenv("LAYERFS_TEST_CACHE") == "" {
		// The shared cache stays where it was, outside the suite's own
		// temp directory.
		os.Setenv("LAYERFS_TEST_CACHE", cacheDir())
	}
	tmp, err := os.MkdirTemp("", "layerfs-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Tests hand directories under it to an unprivileged user.
	if err := os.Chmod(tmp, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("TMPDIR", tmp)
	code := m.Run()
	left, err := mountsUnder(tmp)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for _, mnt := range left {
		fmt.Fprintf(os.Stderr, "FAIL: a test left %s mounted\n", mnt)
		if err := detachMount(mnt); err != nil {
			fmt.Fprintf(os.Stderr, "detach %s: %v\n", mnt, err)
		}
	}
	if len(left) > 0 {
		return 1
	}
	os.RemoveAll(tmp)
	return code
}

// mountsUnder lists the mountpoints under dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	all, err := layerfs.MountTable()
	if err != nil {
		return nil, err
	}
	var out []string
	for i := len(all) - 1; i >= 0; i-- {
		if strings.HasPrefix(all[i].Mountpoint, filepath.Clean(dir)+"/") {
			out = append(out, all[i].Mountpoint)
		}
	}
	return out, nil
}
