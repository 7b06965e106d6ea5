// Package integration runs layerfs for real: the built binary, real FUSE
// mounts, and real tools and kernel overlayfs as the references.
package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// layerfsBin builds the layerfs binary once per test binary.
func layerfsBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "layerfs-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "layerfs")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/layerfs").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// requireRoot ends, through testimage.Unavailable, a test that cannot run
// without root.
func requireRoot(t testing.TB) {
	t.Helper()
	testimage.RequireRoot(t, "this test")
}

// result is what one run of the binary did.
type result struct {
	stdout, stderr string
	code           int
}

// run runs layerfs with args against store root, returning its output.
func run(t testing.TB, root string, args ...string) result {
	t.Helper()
	cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("layerfs %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// mustRun runs layerfs and fails the test unless it exits 0.
func mustRun(t testing.TB, root string, args ...string) string {
	t.Helper()
	r := run(t, root, args...)
	if r.code != 0 {
		t.Fatalf("layerfs %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
	}
	return r.stdout
}

// mountDaemon mounts targets at a new directory with --daemon and
// unmounts it when the test ends.
func mountDaemon(t testing.TB, root string, extra ...string) string {
	t.Helper()
	mnt := t.TempDir()
	args := append(append([]string{"mount", "--daemon"}, extra...), mnt)
	mustRun(t, root, args...)
	t.Cleanup(func() { unmount(t, root, mnt) })
	return mnt
}

// unmount unmounts mnt, waiting out a mount still busy for a moment.
func unmount(t testing.TB, root, mnt string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := run(t, root, "umount", mnt)
		if r.code == 0 || strings.Contains(r.stderr, "not a layerfs mount") {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("umount %s: %s", mnt, r.stderr)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// walkMount mounts target from store root and walks the mount.
func walkMount(t testing.TB, root string, target ...string) oracle.Tree {
	t.Helper()
	tree, err := oracle.Walk(mountDaemon(t, root, target...))
	if err != nil {
		t.Fatal(err)
	}
	return tree
}
