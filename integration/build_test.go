package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// TestBuildMatchesMount runs layerfs build on every rule case, the sample
// and the Debian image: fsck.erofs finds nothing wrong, the kernel's mount
// of the image shows exactly what the layerfs mount of the image shows,
// and a build from another store is byte-identical.
func TestBuildMatchesMount(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "fsck.erofs")
	imageCases(t, testimage.RuleCases(), func(t *testing.T, img layoutImage) {
		root := t.TempDir()
		importInto(t, root, img)
		image := filepath.Join(t.TempDir(), "view.erofs")
		mustRun(t, root, "build", img.ref, "-o", image)
		testimage.RunTool(t, "fsck.erofs", image)
		mnt := mountErofs(t, image)
		requireSame(t, "the kernel's mount of layerfs build", walkMount(t, root, img.ref), walk(t, mnt))
		// The superblock's inode count, which dump.erofs reads and the
		// kernel gives as the inodes in use (df -i), is the files of the
		// tree, a hardlinked file once, as mkfs.erofs counts them.
		if got, want := erofsInodeCount(t, image), distinctInodes(t, mnt); got != want {
			t.Errorf("dump.erofs gives an inode count of %d; the kernel's mount holds %d inodes", got, want)
		}
		var st unix.Statfs_t
		must(t, unix.Statfs(mnt, &st))
		if used := st.Files - st.Ffree; used != uint64(distinctInodes(t, mnt)) {
			t.Errorf("statfs of the kernel's mount gives %d inodes in use, want %d", used, distinctInodes(t, mnt))
		}
		// Every directory lists "." and "..", as the FUSE mount does: glibc
		// drops an entry whose inode number is 0.
		for _, dir := range []string{mnt, filepath.Join(mnt, "etc")} {
			if _, err := os.Stat(dir); err != nil {
				continue
			}
			names := strings.Split(string(testimage.RunTool(t, "ls", "-fa", dir)), "\n")
			if !slices.Contains(names, ".") || !slices.Contains(names, "..") {
				t.Errorf("ls -fa %s lists no \".\" or \"..\": %q", dir, names)
			}
		}

		other := t.TempDir()
		importInto(t, other, img)
		again := filepath.Join(t.TempDir(), "again.erofs")
		mustRun(t, other, "build", img.ref, "-o", again)
		if !sameFile(t, image, again) {
			t.Errorf("two builds of %s from two stores differ", img.ref)
		}
	})
}

// TestBuildOutput checks what build writes to: a regular file only,
// replaced whole, keeping its owner and mode, never a FIFO; stdout with
// -o -, the same bytes as a file, but never a terminal, and a failed copy
// to it is named as such.
func TestBuildOutput(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	fifo := filepath.Join(t.TempDir(), "fifo")
	testimage.RunTool(t, "mkfifo", fifo)
	checkRefused(t, run(t, root, "build", "sample", "-o", fifo), "written with seeks")
	if r := run(t, root, "build", "sample"); r.code != 2 || !strings.Contains(r.stderr, "build needs -o FILE") {
		t.Errorf("build with no -o: exit %d, stderr %q; want a usage error", r.code, r.stderr)
	}
	target := filepath.Join(t.TempDir(), "disk.erofs")
	must(t, os.WriteFile(target, []byte("old"), 0o600))
	must(t, os.Chown(target, 1234, 1234))
	mustRun(t, root, "build", "sample", "-o", target)
	if st, err := os.Stat(target); err != nil || st.Size() <= 3 || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != 1234 || st.Sys().(*syscall.Stat_t).Gid != 1234 {
		t.Errorf("the rebuilt image: %v %v; want a whole image keeping mode 0600 and owner 1234:1234", st, err)
	}

	streamed := filepath.Join(t.TempDir(), "streamed.erofs")
	must(t, os.WriteFile(streamed, []byte(mustRun(t, root, "build", "sample", "-o", "-")), 0o644))
	testimage.RunTool(t, "fsck.erofs", streamed)
	if !sameFile(t, target, streamed) {
		t.Errorf("build -o - wrote other bytes than build -o FILE")
	}
	verbose := run(t, root, "build", "sample", "-o", "-", "-v")
	sum := sha256.Sum256([]byte(verbose.stdout))
	if want := fmt.Sprintf("stdout: sha256:%x, %d bytes", sum, len(verbose.stdout)); verbose.code != 0 || !strings.Contains(verbose.stderr, want) {
		t.Errorf("build -o - -v: exit %d, stderr %q; want %q", verbose.code, verbose.stderr, want)
	}
	var res map[string]any
	must(t, json.Unmarshal([]byte(mustRun(t, root, "build", "sample", "-o", target, "--json")), &res))
	image, err := os.ReadFile(target)
	must(t, err)
	if want := map[string]any{"digest": fmt.Sprintf("sha256:%x", sha256.Sum256(image)), "size": float64(len(image))}; fmt.Sprint(res) != fmt.Sprint(want) {
		t.Errorf("build --json: %v; want %v", res, want)
	}
	if r := run(t, root, "build", "sample", "-o", "-", "--json"); r.code != 2 || r.stdout != "" {
		t.Errorf("build -o - --json: exit %d, stdout %d bytes; want a usage error and nothing on stdout", r.code, len(r.stdout))
	}
	shown, stderr, code := runOnTTY(t, root, true, false, "build", "sample", "-o", "-")
	if code != 1 || !strings.Contains(stderr, "stdout is a terminal") || shown != "" {
		t.Errorf("build -o - to a terminal: exit %d, stderr %q, %d bytes shown; want refused", code, stderr, len(shown))
	}
	// A stdout that takes no bytes: the error says the copy of the
	// finished image failed, and where to.
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	must(t, err)
	defer full.Close()
	cmd := exec.Command(layerfsBin(t), "--root", root, "build", "sample", "-o", "-")
	var errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = full, &errb
	commandWithin(t, cmd, commandDeadline)
	checkRefused(t, result{code: cmd.ProcessState.ExitCode(), stderr: errb.String()}, "build to stdout: copy the image to /dev/stdout: write /dev/stdout: no space left on device")
}

// TestBuildGuestDisk boots a real guest with the sample's image from
// layerfs build as its virtio-blk disk, mounted as erofs: it sees exactly
// what layerfs mount shows on the host, as the virtio-fs guest does, and
// what the host kernel's mount of the image shows, owners, modes,
// xattrs (ping's security.capability) and hardlinks included, and can
// change nothing.
func TestBuildGuestDisk(t *testing.T) {
	requireRoot(t)
	k := debianKernel(t)
	root := sampleStore(t)
	image := filepath.Join(t.TempDir(), "sample.erofs")
	mustRun(t, root, "build", testimage.SampleName, "-o", image)

	res := runGuest(t, k, guestSpec{disk: guestDisk{image: image, fsType: "erofs"}, writes: guestWrites, timeout: 5 * time.Minute})
	checkGuestSees(t, res, root, testimage.SampleName)
	requireSame(t, "the guest's mount of the disk", walk(t, mountErofs(t, image)), res.tree)
}

// TestBuildToBlockDevice writes the sample's image to a loop device, as
// to a disk: the device starts with the bytes build -o FILE writes,
// fsck.erofs passes it and the kernel mounts the device showing what the
// layerfs mount shows. A device too small for the image is refused with
// not one of its bytes changed, and so is a device in use: the kernel
// holds it mounted.
func TestBuildToBlockDevice(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "fsck.erofs")
	root := sampleStore(t)
	image := filepath.Join(t.TempDir(), "sample.erofs")
	mustRun(t, root, "build", "sample", "-o", image)
	want, err := os.ReadFile(image)
	must(t, err)

	disk := loopDevice(t, 16<<20)
	if r := run(t, root, "build", "sample", "-o", disk); r.code != 0 || r.stdout != "" {
		t.Fatalf("build -o %s: exit %d, stdout %q, stderr %q", disk, r.code, r.stdout, r.stderr)
	}
	got := make([]byte, len(want))
	f, err := os.Open(disk)
	must(t, err)
	_, err = io.ReadFull(f, got)
	f.Close()
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Fatalf("%s does not start with the image build -o FILE writes", disk)
	}
	testimage.RunTool(t, "fsck.erofs", disk)
	mnt := mountErofs(t, disk)
	requireSame(t, "the kernel's mount of the block device", walkMount(t, root, "sample"), walk(t, mnt))
	checkRefused(t, run(t, root, "build", "sample", "-o", disk), "in use")

	small := loopDevice(t, int64(len(want))/2&^511)
	before, err := os.ReadFile(small)
	must(t, err)
	checkRefused(t, run(t, root, "build", "sample", "-o", small), "more than the block device's")
	after, err := os.ReadFile(small)
	must(t, err)
	if !bytes.Equal(before, after) {
		t.Errorf("a refused build changed %s", small)
	}
}

// loopDevice attaches a loop device to a new file of size bytes, every
// byte 0xa5, detached when the test ends.
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	backing := filepath.Join(t.TempDir(), "disk")
	must(t, os.WriteFile(backing, bytes.Repeat([]byte{0xa5}, int(size)), 0o600))
	dev := strings.TrimSpace(string(testimage.RunTool(t, "losetup", "--find", "--show", backing)))
	t.Cleanup(func() {
		if o, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v\n%s", dev, err, o)
		}
	})
	return dev
}

// erofsInodeCount is the superblock's inode count, as dump.erofs -s
// reads it.
func erofsInodeCount(t testing.TB, image string) int {
	t.Helper()
	testimage.RequireTool(t, "dump.erofs")
	out := string(testimage.RunTool(t, "dump.erofs", "-s", image))
	m := regexp.MustCompile(`(?m)^Filesystem inode count:\s+(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dump.erofs -s %s gives no inode count:\n%s", image, out)
	}
	n, err := strconv.Atoi(m[1])
	must(t, err)
	return n
}

// distinctInodes counts the inode numbers under dir, each once.
func distinctInodes(t testing.TB, dir string) int {
	t.Helper()
	seen := map[uint64]bool{}
	err := filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		seen[st.Ino] = true
		return nil
	})
	must(t, err)
	return len(seen)
}

// TestBuildFsckExtract unpacks each layerfs build with fsck.erofs
// --extract --preserve, erofs-utils' own reader of the image: the tree it
// writes is the kernel's mount of the image, but for what fsck.erofs 1.5
// does not carry over (xattrs, hardlinks, written as separate files, and
// setuid and setgid bits, which its chown after chmod clears).
func TestBuildFsckExtract(t *testing.T) {
	requireRoot(t)
	testimage.RequireTool(t, "fsck.erofs")
	imageCases(t, testimage.RuleCases(), func(t *testing.T, img layoutImage) {
		root := t.TempDir()
		importInto(t, root, img)
		image := filepath.Join(t.TempDir(), "view.erofs")
		mustRun(t, root, "build", img.ref, "-o", image)
		dst := filepath.Join(t.TempDir(), "extracted")
		testimage.RunTool(t, "fsck.erofs", "--extract="+dst, "--preserve", image)
		want := walk(t, mountErofs(t, image))
		for p, e := range want {
			e.Xattrs = nil
			if e.Type != oracle.TypeDir {
				e.HardlinkID, e.Nlink = p, 1
			}
			if e.Type == oracle.TypeReg {
				e.Mode &^= 0o6000
			}
			want[p] = e
		}
		requireSame(t, "fsck.erofs --extract of layerfs build", want, walk(t, dst))
	})
}
