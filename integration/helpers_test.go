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

	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
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
		// As make builds it: static, without cgo.
		build := exec.Command("go", "build", "-o", binPath, "../cmd/layerfs")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := build.CombinedOutput()
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
	return runWithin(t, commandDeadline, root, args...)
}

// commandDeadline bounds every layerfs command a test runs, so that a
// hang fails the test rather than the CI job.
const commandDeadline = 10 * time.Minute

// runWithin runs layerfs like run, failing the test if it has not exited
// within d.
func runWithin(t testing.TB, d time.Duration, root string, args ...string) result {
	t.Helper()
	return runCommand(t, d, exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...))
}

// runCommand runs cmd, a layerfs command set up as a test needs it (its
// stdin), as run does.
func runCommand(t testing.TB, d time.Duration, cmd *exec.Cmd) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	_, err := commandWithin(t, cmd, d)
	r := result{stdout: out.String(), stderr: errb.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", strings.Join(cmd.Args, " "), err)
	}
	return r
}

// commandWithin runs cmd, failing t if it has not exited within d; it
// returns the combined output unless cmd has outputs of its own. A
// process stuck on a hung FUSE request cannot be killed, so one that
// overruns is killed and left behind rather than waited for.
func commandWithin(t testing.TB, cmd *exec.Cmd, d time.Duration) ([]byte, error) {
	t.Helper()
	var out bytes.Buffer
	if cmd.Stdout == nil && cmd.Stderr == nil {
		cmd.Stdout, cmd.Stderr = &out, &out
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return out.Bytes(), err
	case <-time.After(d):
		_ = cmd.Process.Kill()
		t.Fatalf("%s: no answer within %v", strings.Join(cmd.Args, " "), d)
		return nil, nil
	}
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

// unmount unmounts mnt with layerfs umount, waiting out a mount still
// busy for a moment; a mount still there after that is detached by force,
// and the test fails.
func unmount(t testing.TB, root, mnt string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := runWithin(t, 20*time.Second, root, "umount", mnt)
		if r.code == 0 || strings.Contains(r.stderr, "not a layerfs mount") || strings.Contains(r.stderr, "does not exist") {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("umount %s: %s", mnt, r.stderr)
			forceUnmount(t, mnt)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// forceUnmount is the last resort for a mount a test made and could not
// unmount: its FUSE connection, if it has one, is aborted so that nothing
// waits on its server any more, and the mount is detached lazily.
func forceUnmount(t testing.TB, mnt string) {
	t.Helper()
	if err := detachMount(mnt); err != nil {
		t.Errorf("force unmount %s: %v", mnt, err)
	}
}

func detachMount(mnt string) error {
	m, found, err := layerfs.FindMount(mnt)
	if err != nil || !found {
		return err
	}
	if strings.HasPrefix(m.FSType, "fuse") {
		if err := layerfs.AbortConnection(m); err != nil {
			return err
		}
	}
	return unix.Unmount(mnt, unix.MNT_DETACH)
}

// walkMount mounts target from store root and walks the mount.
func walkMount(t testing.TB, root string, target ...string) oracle.Tree {
	t.Helper()
	mnt := mountDaemon(t, root, target...)
	tree, err := oracle.Walk(mnt)
	if err != nil {
		t.Fatal(err)
	}
	// Unmounted at once: a live view holds its image against rm and gc,
	// which the caller may go on to run.
	unmount(t, root, mnt)
	return tree
}
