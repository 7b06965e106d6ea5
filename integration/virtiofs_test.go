package integration

import (
	"bytes"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
)

// server is a running layerfs serve --virtiofs.
type server struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	socket string
	// done is closed when the server has exited, with err.
	done chan struct{}
	err  error
}

// startServe runs layerfs serve --virtiofs socket, returning once the
// socket accepts, and stops it when the test ends.
func startServe(t testing.TB, root, socket, tag string, targets ...string) *server {
	t.Helper()
	args := append([]string{"--root", root, "--log-level", "info", "serve", "--virtiofs", socket, "--tag", tag}, targets...)
	s := &server{cmd: exec.Command(layerfsBin(t), args...), stderr: &bytes.Buffer{}, done: make(chan struct{}), socket: socket}
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start layerfs serve: %v", err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return s
		}
		select {
		case <-s.done:
			t.Fatalf("layerfs serve exited: %v\n%s", s.err, s.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("layerfs serve: no socket after 30s\n%s", s.stderr)
		}
	}
}

// stop sends SIGTERM and checks the server exits 0 and removes its socket.
func (s *server) stop(t testing.TB) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		if s.err != nil {
			t.Errorf("layerfs serve after SIGTERM: %v\n%s", s.err, s.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("layerfs serve still running 10s after SIGTERM\n%s", s.stderr)
	}
	if _, err := os.Lstat(s.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s left behind after SIGTERM: %v", s.socket, err)
	}
}

// guestWrites are what a guest must not be able to do to the view.
var guestWrites = []string{
	"touch /mnt/new",
	"mkdir /mnt/newdir",
	"mknod /mnt/fifo p",
	"ln -s x /mnt/newlink",
	"ln /mnt/etc/hostname /mnt/hardlink",
	"rm /mnt/etc/hostname",
	"rmdir /mnt/tmp",
	"mv /mnt/etc/hostname /mnt/etc/renamed",
	"chmod 600 /mnt/etc/hostname",
	"chown 1:1 /mnt/etc/hostname",
	"touch /mnt/etc/hostname",
	"truncate -s 0 /mnt/etc/hostname",
	"sh -c 'echo x >> /mnt/etc/hostname'",
}

// TestVirtiofsGuest boots a real guest on the sample image served over
// virtio-fs, and checks that it sees exactly what layerfs mount shows on
// the host, xattrs included, and that it can change nothing.
func TestVirtiofsGuest(t *testing.T) {
	requireRoot(t)
	k := debianKernel(t)
	root := t.TempDir()
	mustRun(t, root, "import", "../testdata/sample")
	socket := filepath.Join(t.TempDir(), "fs.sock")
	srv := startServe(t, root, socket, "layerfs", testimage.SampleName)

	res := runGuest(t, k, guestSpec{socket: socket, tag: "layerfs", writes: guestWrites, timeout: 5 * time.Minute})
	checkGuestSees(t, res, root, testimage.SampleName)
	srv.stop(t)
}

// TestServeSocket checks what layerfs serve does with the socket path:
// a stale socket is replaced, a live one or a file refused, and SIGTERM
// removes the socket.
func TestServeSocket(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	mustRun(t, root, "import", "../testdata/sample")
	dir := t.TempDir()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := run(t, root, "serve", "--virtiofs", file, "sample"); r.code != 1 || !strings.Contains(r.stderr, "not a socket") {
		t.Errorf("serve on a file: exit %d, %q; want 1 and not a socket", r.code, r.stderr)
	}
	if r := run(t, root, "serve", "--virtiofs", filepath.Join(dir, "s"), "--tag", strings.Repeat("x", 37), "sample"); r.code != 1 || !strings.Contains(r.stderr, "tag") {
		t.Errorf("serve with a 37-byte tag: exit %d, %q; want 1 naming the tag", r.code, r.stderr)
	}

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	srv := startServe(t, root, stale, "layerfs", "sample")
	if r := run(t, root, "serve", "--virtiofs", stale, "sample"); r.code != 1 || !strings.Contains(r.stderr, "already served") {
		t.Errorf("second serve on a live socket: exit %d, %q; want 1 and already served", r.code, r.stderr)
	}
	srv.stop(t)
}

// BenchmarkVirtiofsGuest, which `make bench` runs, times a guest walking
// and hashing every byte of an image served over virtio-fs against the
// builders' path: an ext4 image made by mkfs.ext4 -d from the mount,
// attached as a virtio block device. LAYERFS_VIRTIOFS_BENCH=debian walks
// the Debian image (minutes a walk under emulation), else the sample.
func BenchmarkVirtiofsGuest(b *testing.B) {
	t := testing.TB(b)
	which := os.Getenv("LAYERFS_VIRTIOFS_BENCH")
	requireRoot(t)
	k := debianKernel(t)
	root := t.TempDir()
	target := testimage.SampleName
	if which != "debian" {
		mustRun(t, root, "import", "../testdata/sample")
	} else {
		img := debianImage(t)
		mustRun(t, root, "import", img.Layout)
		target = img.Ref
	}
	mnt := mountDaemon(t, root, target)
	var bytes int64
	var entries int
	filepath.WalkDir(mnt, func(p string, d os.DirEntry, err error) error {
		if err == nil {
			entries++
			if info, err := d.Info(); err == nil && d.Type().IsRegular() {
				bytes += info.Size()
			}
		}
		return nil
	})

	disk := filepath.Join(t.TempDir(), "rootfs.ext4")
	size := strconv.FormatInt((bytes*3/2+int64(entries)*4096)/(1<<20)+64, 10) + "M"
	start := time.Now()
	testimage.RunTool(t, "mkfs.ext4", "-q", "-d", mnt, disk, size)
	mkfs := time.Since(start)
	blk := runGuest(t, k, guestSpec{disk: guestDisk{image: disk, fsType: "ext4"}, timeout: 60 * time.Minute})

	socket := filepath.Join(t.TempDir(), "fs.sock")
	srv := startServe(t, root, socket, "layerfs", target)
	vfs := runGuest(t, k, guestSpec{socket: socket, tag: "layerfs", timeout: 60 * time.Minute})
	srv.stop(t)

	t.Logf("%s: %d entries, %d MiB of file content", target, entries, bytes>>20)
	t.Logf("mkfs.ext4 -d from the mount: %v (%s image)", mkfs.Round(time.Millisecond), size)
	for _, r := range []struct {
		name string
		res  guestResult
	}{{"virtio-blk ext4", blk}, {"virtio-fs", vfs}} {
		t.Logf("guest on %-15s walk %v, hash every byte %v (init after %v; qemu start to report %v)",
			r.name+":", r.res.stat, r.res.hash, r.res.boot, r.res.wall.Round(time.Millisecond))
	}
	diff := oracle.Diff(blk.tree, vfs.tree)
	t.Logf("ext4 listing vs virtio-fs listing: %d differences", len(diff))
	for _, d := range diff[:min(len(diff), 10)] {
		t.Logf("  (want ext4, got virtio-fs) %s", d)
	}
}
