package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	layerfs "github.com/layerfs/layerfs/fs"
)

// serverExitDeadline is how long a server has to exit once nothing keeps
// it; past it the test aborts the mount's FUSE connection and fails
// rather than hang.
const serverExitDeadline = 30 * time.Second

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitServer waits for a foreground server to exit. If it has not within
// serverExitDeadline, the mount's FUSE connection is aborted, so that a
// server stuck in its own exit can finish, and the test fails.
func waitServer(t *testing.T, cmd *exec.Cmd, mnt string) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(serverExitDeadline):
	}
	forceUnmount(t, mnt)
	_ = cmd.Process.Kill()
	select {
	case <-done:
		t.Fatalf("the server of %s did not exit within %v; its connection was aborted", mnt, serverExitDeadline)
	case <-time.After(serverExitDeadline):
		t.Fatalf("the server of %s did not exit within %v, nor after its connection was aborted and it was killed", mnt, serverExitDeadline)
	}
	return nil
}

// requireNoState fails t if the runtime directory still holds anything
// of mnt's server.
func requireNoState(t *testing.T, mnt string) {
	t.Helper()
	log := layerfs.LogPath(mnt)
	for _, p := range []string{log, strings.TrimSuffix(log, ".log") + ".json"} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is left after the mount of %s ended (%v)", p, mnt, err)
		}
	}
}

// TestSignalEarlyUnmounts sends SIGTERM to a foreground mount the moment
// its mount shows in the kernel's table, while go-fuse may still hold its
// poll-hack file of the mount open, 50 times: each server must unmount
// and exit 0, leaving no state behind, and none may hang in its exit.
func TestSignalEarlyUnmounts(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	for i := range 50 {
		mnt := t.TempDir()
		cmd, stderr := startMount(t, root, img.ref, mnt)
		deadline := time.Now().Add(serverExitDeadline)
		for !mountedAt(t, mnt) {
			if time.Now().After(deadline) {
				t.Fatalf("try %d: %s not mounted after %v: %s", i, mnt, serverExitDeadline, stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := waitServer(t, cmd, mnt); err != nil {
			t.Fatalf("try %d: layerfs mount after SIGTERM: %v, want exit 0\n%s", i, err, stderr.String())
		}
		if mountedAt(t, mnt) {
			t.Fatalf("try %d: %s is still mounted after SIGTERM", i, mnt)
		}
		requireNoState(t, mnt)
	}
}

// TestSignalWhileFileOpen sends SIGTERM to a foreground mount while a
// file of it is open: the server keeps serving it, and exits 0, unmounted,
// once the file is closed.
func TestSignalWhileFileOpen(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	mnt := t.TempDir()
	cmd, stderr := startForeground(t, root, img.ref, mnt)
	f, err := os.Open(filepath.Join(mnt, "etc/hostname"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the server reports its mount busy", func() bool { return strings.Contains(stderr.String(), "still serving") })
	data, err := os.ReadFile(filepath.Join(mnt, "etc/hostname"))
	if err != nil || string(data) != "sample\n" {
		t.Errorf("read of a busy mount after SIGTERM: %q, %v; want \"sample\\n\"", data, err)
	}
	buf := make([]byte, 64)
	if n, err := f.ReadAt(buf, 0); string(buf[:n]) != "sample\n" {
		t.Errorf("read of the file open across SIGTERM: %q, %v; want \"sample\\n\"", buf[:n], err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := waitServer(t, cmd, mnt); err != nil {
		t.Fatalf("layerfs mount after SIGTERM and close: %v, want exit 0\n%s", err, stderr.String())
	}
	if mountedAt(t, mnt) {
		t.Errorf("%s is still mounted after its server exited", mnt)
	}
	requireNoState(t, mnt)
}

// hungMount mounts, with the hungfuse helper, a FUSE filesystem typed
// like a layerfs mount whose server then stops answering. When the test
// ends its connection is aborted, it is detached and the helper killed.
// The helper is a process of its own so that no process the test starts
// inherits the hung mount's /dev/fuse descriptor.
func hungMount(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hungfuse")
	if out, err := exec.Command("go", "build", "-o", bin, "../internal/cmd/hungfuse").CombinedOutput(); err != nil {
		t.Fatalf("go build hungfuse: %v\n%s", err, out)
	}
	mnt := t.TempDir()
	cmd := exec.Command(bin, mnt)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if mountedAt(t, mnt) {
			forceUnmount(t, mnt)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("hungfuse: %q: %s", line, stderr.String())
	}
	return mnt
}

// TestHungMountBlocksNothing makes a layerfs-typed FUSE mount whose
// server stops answering: mounts must still answer within seconds,
// listing it as unknown (no server of ours) and a live mount of ours as
// serving with its pid; umount of ours must not wait on it; and umount of the hung one
// aborts its connection and removes it.
func TestHungMountBlocksNothing(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	ours := mountDaemon(t, root, img.ref)
	hung := hungMount(t)
	const within = 20 * time.Second

	r := runWithin(t, within, root, "mounts")
	if r.code != 0 {
		t.Fatalf("layerfs mounts: exit %d: %s", r.code, r.stderr)
	}
	rows := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Fatalf("layerfs mounts: row %q has %d columns, want 6", line, len(f))
		}
		rows[f[0]] = f
	}
	if row := rows[hung]; row == nil || row[3] != "-" || row[4] != string(layerfs.StateUnknown) {
		t.Errorf("layerfs mounts shows the hung mount as %q, want PID - and STATE unknown\n%s", row, r.stdout)
	}
	if row := rows[ours]; row == nil || row[1] != img.ref || row[2] != root || row[4] != string(layerfs.StateServing) || row[5] != "fuse" {
		t.Errorf("layerfs mounts shows our mount as %q, want TARGET %s, STORE %s, STATE serving and TYPE fuse\n%s", row, img.ref, root, r.stdout)
	} else if pid, err := strconv.Atoi(row[3]); err != nil || syscall.Kill(pid, 0) != nil {
		t.Errorf("layerfs mounts gives our server's PID as %q: not a running process", row[3])
	}

	if r := runWithin(t, within, root, "umount", ours); r.code != 0 {
		t.Errorf("layerfs umount %s: exit %d: %s", ours, r.code, r.stderr)
	}
	if mountedAt(t, ours) {
		t.Errorf("%s is still mounted after layerfs umount", ours)
	}
	if r := runWithin(t, within, root, "umount", hung); r.code != 0 {
		t.Errorf("layerfs umount of the hung mount: exit %d: %s", r.code, r.stderr)
	}
	if mountedAt(t, hung) {
		t.Errorf("%s is still mounted after layerfs umount", hung)
	}
}

// gcCounts parses gc's one line: blobs, layers, objects, meta files, temp
// files, bytes.
var gcLine = regexp.MustCompile(`^(removed|would remove) (\d+) blobs, (\d+) layers, (\d+) objects, (\d+) meta files, (\d+) temp files: (\d+) bytes\n$`)

func gcCounts(t *testing.T, out, verb string) string {
	t.Helper()
	m := gcLine.FindStringSubmatch(out)
	if m == nil || m[1] != verb {
		t.Fatalf("gc printed %q, want %q and the counts", out, verb)
	}
	return strings.Join(m[2:], " ")
}

// TestLiveMountAcrossRmAndGC removes a mounted image and collects the
// store's garbage while the mount is live: rm without --force is
// refused; gc --dry-run removes nothing and predicts what gc then frees;
// the mount keeps showing exactly what kernel overlayfs shows of the
// image's layers; once it is unmounted, gc frees the image.
func TestLiveMountAcrossRmAndGC(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	// An image nobody mounts, removed, so that gc has something to free.
	other := ruleImage(t, extractableRuleCases()[0])
	importInto(t, root, other)
	mustRun(t, root, "rm", other.ref)
	mnt := mountDaemon(t, root, img.ref)
	want := oracleTree(t, img.blobs)

	checkRefused(t, run(t, root, "rm", img.ref), "in use")
	if !strings.Contains(mustRun(t, root, "images"), img.ref) {
		t.Fatalf("a refused rm removed %s", img.ref)
	}
	mustRun(t, root, "rm", "--force", img.ref)

	before := storeFiles(t, root)
	predicted := gcCounts(t, mustRun(t, root, "gc", "--dry-run"), "would remove")
	if after := storeFiles(t, root); !maps.Equal(after, before) {
		t.Fatalf("gc --dry-run changed the store:\nbefore: %v\nafter: %v", before, after)
	}
	if freed := gcCounts(t, mustRun(t, root, "gc"), "removed"); freed != predicted {
		t.Errorf("gc freed %s, but gc --dry-run predicted %s", freed, predicted)
	}
	if strings.HasPrefix(predicted, "0 0 0") {
		t.Errorf("gc freed nothing of the removed image %s: %s", other.ref, predicted)
	}
	requireSame(t, "the live mount after rm --force and gc", want, walk(t, mnt))

	unmount(t, root, mnt)
	freed := gcCounts(t, mustRun(t, root, "gc"), "removed")
	if strings.HasPrefix(freed, "0 0 0") {
		t.Errorf("gc after the unmount freed nothing of %s: %s", img.ref, freed)
	}
	for rel := range storeFiles(t, root) {
		for _, dir := range []string{"blobs/", "layers/", "objects/", "leases/"} {
			if strings.HasPrefix(rel, dir) {
				t.Errorf("%s is left after the last image and its mount went and gc ran", rel)
			}
		}
	}
}

// TestStatePathsPlanted plants, as a second user, symlinks (to a file of
// root's), directories and FIFOs at the names in /tmp where mount state
// used to be written: root's mount --daemon must neither follow nor touch
// them, and still work, keeping its state in /run/layerfs, which nobody
// else can write; and an unprivileged user's runtime directory, planted
// by a third user in a shared temp directory, is refused with a clear
// error and nothing written through it.
func TestStatePathsPlanted(t *testing.T) {
	u := asNobody(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	victimBefore := mustStat(t, victim)
	plants := map[string][]string{
		"symlink":   {"ln", "-s", victim},
		"directory": {"mkdir"},
		"fifo":      {"mkfifo"},
	}
	for kind, plant := range plants {
		t.Run("root/"+kind, func(t *testing.T) {
			mnt := t.TempDir()
			flat := strings.ReplaceAll(strings.Trim(mnt, "/"), "/", "_")
			var planted []string
			for _, ext := range []string{"pid", "log"} {
				p := filepath.Join("/tmp", fmt.Sprintf("layerfs-0-%s.%s", flat, ext))
				if out, err := u.command(plant[0], append(plant[1:], p)...).CombinedOutput(); err != nil {
					t.Fatalf("plant %s as uid %d: %v\n%s", p, nobody, err, out)
				}
				planted = append(planted, p)
				t.Cleanup(func() { os.Remove(p) })
			}
			cmd := exec.Command(layerfsBin(t), "--root", root, "mount", "--daemon", img.ref, mnt)
			// Where the state used to go.
			cmd.Env = append(os.Environ(), "TMPDIR=/tmp")
			out, err := commandWithin(t, cmd, time.Minute)
			if err != nil {
				t.Fatalf("mount --daemon beside planted %ss: %v\n%s", kind, err, out)
			}
			t.Cleanup(func() { unmount(t, root, mnt) })
			if data, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(data) != "sample\n" {
				t.Errorf("read through the mount: %q, %v", data, err)
			}
			for _, p := range planted {
				st, err := os.Lstat(p)
				if err != nil || st.Sys().(*syscall.Stat_t).Uid != nobody || st.Mode().Type() != plantedType(kind) {
					t.Errorf("the planted %s %s was touched: %v %v", kind, p, st, err)
				}
			}
			checkDir(t, layerfs.RuntimeDirPath(), 0)
			if _, err := os.Stat(layerfs.LogPath(mnt)); err != nil {
				t.Errorf("the daemon's log: %v", err)
			}
			unmount(t, root, mnt)
			requireNoState(t, mnt)
		})
	}
	if data, err := os.ReadFile(victim); err != nil || string(data) != "precious\n" || !mustStat(t, victim).ModTime().Equal(victimBefore.ModTime()) {
		t.Errorf("root's file behind the planted symlinks changed: %q, %v", data, err)
	}
	if out, err := u.command("ln", "-s", victim, filepath.Join(layerfs.RuntimeDirPath(), "planted")).CombinedOutput(); err == nil {
		os.Remove(filepath.Join(layerfs.RuntimeDirPath(), "planted"))
		t.Errorf("uid %d could plant a symlink in root's runtime directory", nobody)
	} else if !strings.Contains(string(out), "Permission denied") {
		t.Errorf("planting in root's runtime directory failed otherwise than by permission: %s", out)
	}

	// An unprivileged user with no XDG_RUNTIME_DIR falls back to a
	// directory in its temp directory, here shared with a third user.
	const third = nobody - 1
	shared := u.mkdir("shared")
	if err := os.Chmod(shared, 0o1777); err != nil {
		t.Fatal(err)
	}
	attacker := u.mkdir("attacker")
	if err := os.Chmod(attacker, 0o777); err != nil {
		t.Fatal(err)
	}
	userRun := filepath.Join(shared, fmt.Sprintf("layerfs-%d", nobody))
	asThird := func(args ...string) {
		t.Helper()
		cmd := exec.Command(u.setpriv, append([]string{"--reuid", strconv.Itoa(third), "--regid", strconv.Itoa(third), "--clear-groups"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v as uid %d: %v\n%s", args, third, err, out)
		}
	}
	u.layerfs("import", u.copyLayout(img, "layout").layout)
	mountAsNobody := func(mnt string) result {
		cmd := u.command(u.bin, "--root", filepath.Join(u.home, "store"), "mount", "--daemon", img.ref, mnt)
		cmd.Env = append(cmd.Env, "TMPDIR="+shared)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		_, err := commandWithin(t, cmd, time.Minute)
		r := result{stdout: stdout.String(), stderr: stderr.String()}
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			r.code = exit.ExitCode()
		}
		return r
	}
	for _, c := range []struct{ kind, plant string }{
		{"symlink", "ln -s " + attacker + " " + userRun},
		{"directory", "mkdir -m 0777 " + userRun},
		{"fifo", "mkfifo -m 0666 " + userRun},
	} {
		t.Run("user/"+c.kind, func(t *testing.T) {
			asThird("sh", "-c", c.plant)
			defer os.RemoveAll(userRun)
			mnt := u.mkdir("mnt-" + c.kind)
			r := mountAsNobody(mnt)
			checkRefused(t, r, "runtime directory "+userRun)
			if mountedAt(t, mnt) {
				forceUnmount(t, mnt)
				t.Errorf("uid %d mounted %s through a runtime directory uid %d planted", nobody, mnt, third)
			}
			if entries, _ := os.ReadDir(attacker); len(entries) > 0 {
				t.Errorf("uid %d wrote into uid %d's directory: %v", nobody, third, entries)
			}
		})
	}
	t.Run("user/clean", func(t *testing.T) {
		mnt := u.mkdir("mnt-clean")
		if r := mountAsNobody(mnt); r.code != 0 {
			t.Fatalf("mount as uid %d: exit %d: %s", nobody, r.code, r.stderr)
		}
		u.unmountAtEnd(t, mnt)
		checkDir(t, userRun, nobody)
		cmd := u.command(u.bin, "--root", filepath.Join(u.home, "store"), "umount", mnt)
		cmd.Env = append(cmd.Env, "TMPDIR="+shared)
		if out, err := commandWithin(t, cmd, time.Minute); err != nil {
			t.Fatalf("umount as uid %d: %v\n%s", nobody, err, out)
		}
		if entries, _ := os.ReadDir(userRun); len(entries) > 0 {
			t.Errorf("%s holds %v after the umount", userRun, entries)
		}
	})
}

func plantedType(kind string) os.FileMode {
	return map[string]os.FileMode{"symlink": os.ModeSymlink, "directory": os.ModeDir, "fifo": os.ModeNamedPipe}[kind]
}

// checkDir fails t unless dir is a real directory of uid's, mode 0700.
func checkDir(t *testing.T, dir string, uid int) {
	t.Helper()
	st, err := os.Lstat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !st.IsDir() || st.Mode().Perm() != 0o700 || int(st.Sys().(*syscall.Stat_t).Uid) != uid {
		t.Errorf("runtime directory %s: %v owned by uid %d, want a directory 0700 of uid %d", dir, st.Mode(), st.Sys().(*syscall.Stat_t).Uid, uid)
	}
}
