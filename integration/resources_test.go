package integration

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// holdGCLock takes the store's gc lock as a running gc holds it, until
// the returned function is called.
func holdGCLock(t *testing.T, root string) func() {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(root, ".gc.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release := func() { once.Do(func() { f.Close() }) }
	t.Cleanup(release)
	return release
}

// TestInterruptWhileWaitingForTheStore interrupts commands that wait for
// a gc to finish with the store (its lock held here as gc holds it): each
// says what it waits for, and SIGINT ends it at once, exit 130, with
// nothing mounted and nothing written. Once the store is free, they run.
func TestInterruptWhileWaitingForTheStore(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	release := holdGCLock(t, root)
	dir := t.TempDir()
	mnt := t.TempDir()
	t.Cleanup(func() {
		if mountedAt(t, mnt) {
			unmount(t, root, mnt)
		}
	})
	for _, args := range [][]string{
		{"import", "../testdata/sample"},
		{"export", "sample", "-o", filepath.Join(dir, "sample.tar")},
		{"build", "sample", "-o", filepath.Join(dir, "sample.erofs")},
		{"cat", "sample", "etc/hostname"},
		{"mount", "sample", mnt},
		{"mount", "--daemon", "sample", mnt},
		{"mount", "--kernel", "sample", mnt},
	} {
		t.Run(strings.Join(args[:min(2, len(args))], " "), func(t *testing.T) {
			cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...)
			var stderr lockedBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			deadline := time.After(20 * time.Second)
			for !strings.Contains(stderr.String(), "waiting for gc to finish") {
				select {
				case err := <-done:
					t.Fatalf("layerfs %s ended while gc held the store: %v\n%s", strings.Join(args, " "), err, stderr.String())
				case <-deadline:
					cmd.Process.Kill()
					t.Fatalf("layerfs %s did not say what it waits for within 20s:\n%s", strings.Join(args, " "), stderr.String())
				case <-time.After(50 * time.Millisecond):
				}
			}
			cmd.Process.Signal(syscall.SIGINT)
			select {
			case err := <-done:
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 130 || !strings.HasSuffix(stderr.String(), "layerfs: interrupted\n") {
					t.Errorf("layerfs %s interrupted while it waited: %v\n%s; want exit 130 and \"interrupted\"", strings.Join(args, " "), err, stderr.String())
				}
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("layerfs %s still waits 5s after SIGINT", strings.Join(args, " "))
			}
			if mountedAt(t, mnt) {
				unmount(t, root, mnt)
				t.Errorf("layerfs %s mounted %s after it was interrupted", strings.Join(args, " "), mnt)
			}
		})
	}
	if es, _ := os.ReadDir(dir); len(es) != 0 {
		t.Errorf("interrupted commands left %v in the directory of their -o", es)
	}
	if left := tmpFiles(t, root); len(left) != 0 {
		t.Errorf("tmp/ after the interrupts: %q", left)
	}
	release()
	mustRun(t, root, "import", "../testdata/sample")
	mustRun(t, root, "export", "sample", "-o", filepath.Join(dir, "sample.tar"))
	checkStore(t, root, "after the interrupts")
}

// fillDisk writes a file in dir until its file system is full, and
// returns it.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	// What is left is less than a block.
	for n := 4096; n > 0; n /= 2 {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
	return name
}

// TestFullStoreDisk fills the file system of a store: what is in the
// store can still be read out (cat, export, build, a FUSE mount), without
// a lease and saying so; a kernel mount, whose image would have to be
// written there, says so and points to FUSE; rm says that nothing was
// changed and why. Once there is room again, all of it works.
func TestFullStoreDisk(t *testing.T) {
	requireRoot(t)
	disk := tmpfsDir(t, 4<<20)
	root := filepath.Join(disk, "store")
	importInto(t, root, sampleImage(t))
	filler := fillDisk(t, disk)
	out := t.TempDir()

	r := run(t, root, "cat", "sample", "etc/hostname")
	if r.code != 0 || r.stdout != "sample\n" || !strings.Contains(r.stderr, "not leased") || !strings.Contains(r.stderr, "no space left on device") {
		t.Errorf("cat from a full store: exit %d, %q, %q; want the file, and a warning that it is not leased for want of space", r.code, r.stdout, r.stderr)
	}
	for _, args := range [][]string{
		{"export", "sample", "-o", filepath.Join(out, "sample.tar")},
		{"build", "sample", "-o", filepath.Join(out, "sample.erofs")},
	} {
		if r := run(t, root, args...); r.code != 0 {
			t.Errorf("%s from a full store: exit %d, %s", args[0], r.code, r.stderr)
		}
	}
	mnt := t.TempDir()
	if r := run(t, root, "mount", "--daemon", "sample", mnt); r.code != 0 {
		t.Errorf("FUSE mount of a full store: exit %d, %s", r.code, r.stderr)
	} else {
		if b, err := os.ReadFile(filepath.Join(mnt, "etc/hostname")); err != nil || string(b) != "sample\n" {
			t.Errorf("read through the mount of a full store: %q, %v", b, err)
		}
		unmount(t, root, mnt)
	}
	checkRefused(t, run(t, root, "mount", "--kernel", "sample", mnt), "no space left on device; mount without --kernel serves the same view over FUSE")
	if mountedAt(t, mnt) {
		unmount(t, root, mnt)
		t.Error("mount --kernel mounted a view whose image it could not write")
	}
	checkRefused(t, run(t, root, "rm", "sample"), "nothing was changed")
	if images := mustRun(t, root, "images", "-q"); strings.Count(images, "\n") != 1 {
		t.Errorf("images after rm failed on a full disk: %q", images)
	}
	checkStore(t, root, "after the disk filled")

	must(t, os.Remove(filler))
	// The kernel cannot mount an EROFS image on tmpfs: the image is only
	// written here.
	checkRefused(t, run(t, root, "mount", "--kernel", "sample", mnt), "block device required")
	r = run(t, root, "cat", "sample", "etc/hostname")
	if r.code != 0 || r.stdout != "sample\n" || r.stderr != "" {
		t.Errorf("cat with room again: exit %d, %q, %q; want the file, leased", r.code, r.stdout, r.stderr)
	}
	mustRun(t, root, "rm", "sample")
	mustRun(t, root, "gc")
	if left := tmpFiles(t, root); len(left) != 0 {
		t.Errorf("tmp/ after gc: %q", left)
	}
}

// randomLayout is an image of one layer holding size random bytes, which
// no compression shrinks.
func randomLayout(t *testing.T, name string, size int) string {
	t.Helper()
	b := make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(size), 7))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return writeFaultLayout(t, testimage.Image{Name: name, Layers: []testimage.Layer{{Compression: testimage.Gzip, Entries: []testimage.Entry{testimage.File("random", string(b))}}}})
}

// TestPullOntoAFullDisk pulls a layer larger than the store's disk: the
// pull fails at once on the disk, not after retrying the registry, says
// what it kept of the download, and once the disk is larger resumes it.
func TestPullOntoAFullDisk(t *testing.T) {
	requireRoot(t)
	layout := randomLayout(t, "full/pull", 3<<20)
	reg := startRegistry(t, registryOptions{})
	ref := reg.host + "/full/pull:1"
	push(t, layout, "full/pull", ref)
	disk := tmpfsDir(t, 1<<20)
	root := filepath.Join(disk, "store")
	start := time.Now()
	r := run(t, root, "pull", "--quiet", ref)
	took := time.Since(start)
	if r.code != 1 || !strings.Contains(r.stderr, "no space left on device") || strings.Contains(r.stderr, "giving up after") {
		t.Fatalf("pull onto a full disk: exit %d\n%s\nwant 1, no space left, and no retries", r.code, r.stderr)
	}
	if !strings.Contains(r.stderr, `of partial downloads`) || !strings.Contains(r.stderr, `"layerfs gc" frees them`) {
		t.Errorf("pull onto a full disk kept its download without saying so:\n%s", r.stderr)
	}
	if took > 5*time.Second {
		t.Errorf("pull onto a full disk took %v to fail", took)
	}
	checkStore(t, root, "after the disk filled")
	if err := unix.Mount("tmpfs", disk, "tmpfs", unix.MS_REMOUNT, fmt.Sprintf("size=%d", 32<<20)); err != nil {
		t.Fatal(err)
	}
	r = run(t, root, "--log-level", "info", "pull", "--quiet", ref)
	if r.code != 0 || !strings.Contains(r.stderr, "resuming blob") {
		t.Fatalf("pull again with room: exit %d\n%s\nwant it to resume the blob", r.code, r.stderr)
	}
	checkStore(t, root, "after the pull resumed")
	mustRun(t, root, "gc")
	if left := tmpFiles(t, root); len(left) != 0 {
		t.Errorf("tmp/ after gc: %q", left)
	}
}

// TestStdoutOnAFullDisk runs commands whose stdout is a full disk
// (/dev/full): each does its work, and fails saying its output was lost,
// once, rather than exiting 0 with nothing printed.
func TestStdoutOnAFullDisk(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer full.Close()
	for _, args := range [][]string{
		{"import", "../testdata/sample"},
		{"tag", "sample", "other"},
		{"rm", "other"},
		{"verify"},
		{"gc"},
		{"images"},
		{"cat", "sample", "etc/hostname"},
		{"export", "sample"},
	} {
		cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = full, &stderr
		_, err := commandWithin(t, cmd, commandDeadline)
		if code := cmd.ProcessState.ExitCode(); code != 1 || strings.Count(stderr.String(), "no space left on device") != 1 {
			t.Errorf("layerfs %s > /dev/full: exit %d (%v), %q; want 1, saying once that there was no space", strings.Join(args, " "), code, err, stderr.String())
		}
	}
	if out := mustRun(t, root, "images", "-q"); strings.Count(out, "\n") != 1 {
		t.Errorf("the import whose stdout was full: images %q", out)
	}
}

// withFiles runs layerfs args against root with at most n descriptors
// open (ulimit -n).
func withFiles(t *testing.T, n int, root string, args ...string) result {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", fmt.Sprintf(`ulimit -n %d && exec "$@"`, n), "sh", layerfsBin(t), "--root", root}, args...)...)
	return runCommand(t, commandDeadline, cmd)
}

// manyFiles is an image of three layers of many small files.
func manyFiles(t *testing.T, name string) string {
	t.Helper()
	return writeFaultLayout(t, testimage.Image{Name: name, Layers: testimage.Synthetic(3, 1500, testimage.Gzip)})
}

// TestFewDescriptors runs commands allowed few open files (ulimit -n):
// an EROFS build and a kernel mount of a view of thousands of files work
// within 32, as they read one file at a time; an import that runs out
// fails saying so, leaves the store whole and nothing gc does not
// remove, and runs once it may open more.
func TestFewDescriptors(t *testing.T) {
	requireRoot(t)
	layout := manyFiles(t, "many")
	root := t.TempDir()
	mustRun(t, root, "import", layout)
	out := filepath.Join(t.TempDir(), "many.erofs")
	if r := withFiles(t, 32, root, "build", "many", "-o", out); r.code != 0 {
		t.Errorf("build with 32 descriptors: exit %d, %s", r.code, r.stderr)
	}
	mnt := t.TempDir()
	if r := withFiles(t, 32, root, "mount", "--kernel", "many", mnt); r.code != 0 {
		t.Errorf("mount --kernel with 32 descriptors: exit %d, %s", r.code, r.stderr)
	} else {
		unmount(t, root, mnt)
	}

	fresh := t.TempDir()
	r := withFiles(t, 18, fresh, "import", layout)
	if r.code != 1 || !strings.Contains(r.stderr, "too many open files") || strings.Contains(r.stderr, "neither an OCI image layout") {
		t.Fatalf("import with 18 descriptors: exit %d, %q; want 1 and too many open files", r.code, r.stderr)
	}
	checkStore(t, fresh, "after the import ran out of descriptors")
	// Removing what it staged needs descriptors too, which the import's
	// other layers may still hold when it tries: whatever it could not
	// remove, gc does.
	mustRun(t, fresh, "gc")
	if left := tmpFiles(t, fresh); len(left) != 0 {
		t.Errorf("gc after the import that ran out of descriptors left %q staged", left)
	}
	mustRun(t, fresh, "import", layout)
}

// TestServerOutOfDescriptors has a FUSE server allowed few open files
// (as an unprivileged user, it holds one per file open through it): the
// opens it cannot serve fail with ENFILE, which tells a program to try
// again, not EIO, which tells it the file is damaged; it says so in its
// log once, not once per open; and it serves every file once they are
// closed.
func TestServerOutOfDescriptors(t *testing.T) {
	u := asNobody(t)
	img := u.copyLayout(layoutImage{layout: manyFiles(t, "many"), ref: "many"}, "layout")
	u.layerfs("import", img.layout)
	mnt := u.mkdir("mnt")
	var log lockedBuffer
	cmd := u.command("sh", "-c", `ulimit -n 48 && exec "$@"`, "sh", u.bin, "--root", filepath.Join(u.home, "store"), "--log-level", "info", "mount", "--allow-other", "many", mnt)
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	u.unmountAtEnd(t, mnt)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "mounted") {
		if time.Now().After(deadline) {
			t.Fatalf("the mount did not come up:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	names, err := filepath.Glob(filepath.Join(mnt, "dir*", "*"))
	if err != nil || len(names) < 200 {
		t.Fatalf("%d files in the mount: %v", len(names), err)
	}
	names = names[:200]
	var open []*os.File
	refused := map[syscall.Errno]int{}
	for _, name := range names {
		f, err := os.Open(name)
		var errno syscall.Errno
		switch {
		case err == nil:
			open = append(open, f)
		case errors.As(err, &errno):
			refused[errno]++
		default:
			t.Fatal(err)
		}
	}
	for _, f := range open {
		f.Close()
	}
	if refused[syscall.ENFILE] == 0 || len(refused) != 1 {
		t.Errorf("opens refused by a server out of descriptors: %v; want ENFILE only", refused)
	}
	for _, name := range names {
		if _, err := os.ReadFile(name); err != nil {
			t.Fatalf("read once the files were closed: %v", err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the server exited: %v\n%s", err, log.String())
	default:
	}
	if n := strings.Count(log.String(), "ulimit -n"); n != 1 {
		t.Errorf("the server's log says %d times that it ran out of descriptors; want once:\n%s", n, log.String())
	}
	t.Logf("%d opens at once: %d served, %v refused", len(names), len(open), refused)
}
