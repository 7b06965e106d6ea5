package integration

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// mountedAt reports whether anything is mounted at dir, by the kernel's
// own table.
func mountedAt(t testing.TB, dir string) bool {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	// A kernel mount of many layers has a line of tens of KiB.
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == dir {
			return true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return false
}

// waitFor polls cond until it holds, failing t after a while.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startMount starts `layerfs mount` of target at mnt in the foreground,
// its stderr kept, and has it killed and its mount removed when the test
// ends.
func startMount(t testing.TB, root, target, mnt string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd := exec.Command(layerfsBin(t), "--root", root, "mount", target, mnt)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Not waited for: a test that failed may have left a Wait
		// running on it, and Wait must not run twice.
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
		unmount(t, root, mnt)
	})
	return cmd, stderr
}

// startForeground is startMount that waits until the mount is in the
// kernel's table.
func startForeground(t testing.TB, root, target, mnt string) (*exec.Cmd, *lockedBuffer) {
	t.Helper()
	cmd, stderr := startMount(t, root, target, mnt)
	waitFor(t, "layerfs mounts "+mnt, func() bool { return mountedAt(t, mnt) })
	return cmd, stderr
}

// TestWritesRefused tries every kind of write through a mount: each must
// fail with EROFS and leave the view as it was.
func TestWritesRefused(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	mnt := mountDaemon(t, root, img.ref)
	before := walk(t, mnt)
	file, dir := filepath.Join(mnt, "etc/hostname"), filepath.Join(mnt, "etc")
	writes := map[string]func() error{
		"open for writing": func() error {
			f, err := os.OpenFile(file, os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		},
		"create": func() error { return os.WriteFile(filepath.Join(dir, "new"), []byte("x"), 0o644) },
		"mkdir":  func() error { return os.Mkdir(filepath.Join(dir, "newdir"), 0o755) },
		"mknod":  func() error { return unix.Mknod(filepath.Join(dir, "fifo"), unix.S_IFIFO|0o644, 0) },
		"symlink": func() error {
			return os.Symlink("hostname", filepath.Join(dir, "link"))
		},
		"link":     func() error { return os.Link(file, filepath.Join(dir, "hard")) },
		"unlink":   func() error { return os.Remove(file) },
		"rmdir":    func() error { return unix.Rmdir(filepath.Join(mnt, "tmp")) },
		"rename":   func() error { return os.Rename(file, filepath.Join(dir, "renamed")) },
		"setxattr": func() error { return unix.Setxattr(file, "user.x", []byte("y"), 0) },
		"removexattr": func() error {
			return unix.Removexattr(filepath.Join(mnt, "home/user/notes.txt"), "user.origin")
		},
		"chmod":    func() error { return os.Chmod(file, 0o600) },
		"chown":    func() error { return os.Lchown(file, 1, 1) },
		"utimes":   func() error { return os.Chtimes(file, time.Now(), time.Now()) },
		"truncate": func() error { return os.Truncate(file, 0) },
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
	requireSame(t, "the mount after the refused writes", before, walk(t, mnt))
}

// TestSignalUnmounts stops a foreground mount with SIGTERM: it must
// unmount and exit 0.
func TestSignalUnmounts(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	mnt := t.TempDir()
	cmd, _ := startForeground(t, root, img.ref, mnt)
	if _, err := os.Stat(filepath.Join(mnt, "etc/os-release")); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("layerfs mount after SIGTERM: %v, want exit 0", err)
	}
	if mountedAt(t, mnt) {
		t.Errorf("%s is still mounted after SIGTERM", mnt)
	}
}

// TestUmountOfDeadServer kills a server outright: its mount is left
// answering ENOTCONN, listed as dead, a mount over it is refused saying
// how to remove it, and layerfs umount removes it.
func TestUmountOfDeadServer(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	mnt := t.TempDir()
	cmd, _ := startForeground(t, root, img.ref, mnt)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if _, err := os.Stat(filepath.Join(mnt, "etc")); !errors.Is(err, syscall.ENOTCONN) {
		t.Errorf("stat in the mount of a killed server: %v, want ENOTCONN", err)
	}
	if out := mustRun(t, root, "mounts"); !strings.Contains(out, mnt) || !strings.Contains(out, "dead") {
		t.Errorf("layerfs mounts does not list %s as dead:\n%s", mnt, out)
	}
	for _, mode := range []string{"--daemon", "--kernel"} {
		checkRefused(t, run(t, root, "mount", mode, img.ref, mnt), `already a mountpoint (fuse.layerfs); "layerfs umount `+mnt+`" removes it`)
	}
	mustRun(t, root, "umount", mnt)
	if mountedAt(t, mnt) {
		t.Errorf("%s is still mounted after layerfs umount", mnt)
	}
}

// TestMountErrors runs every way a mount can be refused, in the
// foreground and with --daemon: each exits 1 with one clear line naming
// the problem, and leaves nothing mounted.
func TestMountErrors(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	// A layer directory with no index, as an interrupted extraction leaves
	// one, whose digest shares the first 12 hex digits with a real layer.
	real := img.layers[0].Encoded()
	twin := real[:12] + strings.Repeat("0", 52)
	if err := os.MkdirAll(filepath.Join(root, "layers", "sha256", twin), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	busy := mountDaemon(t, root, img.ref)
	cases := []struct {
		name   string
		args   []string
		mnt    string
		expect string
	}{
		{"mountpoint missing", []string{img.ref}, filepath.Join(t.TempDir(), "missing"), "no such file or directory"},
		{"mountpoint a file", []string{img.ref}, file, "not a directory"},
		{"already a mountpoint", []string{img.ref}, busy, "already a mountpoint"},
		{"unknown name", []string{"no-such-image"}, "", "not found"},
		{"unknown digest", []string{"sha256:" + strings.Repeat("ab", 32)}, "", "not found"},
		{"ambiguous prefix", []string{real[:12]}, "", "ambiguous"},
		{"overlay of an image", []string{"--overlay", img.ref}, "", "--overlay shows one layer"},
	}
	for _, c := range cases {
		for _, mode := range [][]string{nil, {"--daemon"}} {
			name := c.name
			if mode != nil {
				name += " --daemon"
			}
			t.Run(name, func(t *testing.T) {
				mnt := c.mnt
				if mnt == "" {
					mnt = t.TempDir()
				}
				r := run(t, root, append(append(append([]string{"mount"}, mode...), c.args...), mnt)...)
				checkRefused(t, r, c.expect)
				if mnt != busy && mountedAt(t, mnt) {
					t.Errorf("%s is mounted after a refused mount", mnt)
					unmount(t, root, mnt)
				}
			})
		}
	}
	t.Run("no FUSE", func(t *testing.T) {
		unshare := testimage.RequireTool(t, "unshare")
		mnt := t.TempDir()
		// A private mount namespace with an empty /dev: no /dev/fuse in it,
		// and nothing changes outside it.
		cmd := exec.Command(unshare, "--mount", "--propagation", "private", "sh", "-c",
			`mount -t tmpfs none /dev && exec "$@"`, "sh", layerfsBin(t), "--root", root, "mount", img.ref, mnt)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		r := result{stderr: stderr.String()}
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			r.code = exit.ExitCode()
		}
		checkRefused(t, r, "no FUSE")
		if mountedAt(t, mnt) {
			t.Errorf("%s is mounted after a refused mount", mnt)
		}
	})
}

// checkRefused checks that a command failed with exit 1 and one line on
// stderr, "layerfs: ..." holding expect.
func checkRefused(t testing.TB, r result, expect string) {
	t.Helper()
	msg := strings.TrimSpace(r.stderr)
	if r.code != 1 || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "layerfs: ") || !strings.Contains(msg, expect) {
		t.Errorf("exit %d, stderr %q; want exit 1 and one line \"layerfs: ...%s...\"", r.code, msg, expect)
	}
}
