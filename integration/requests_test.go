package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
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

// TestWalksCostOnlyUnavoidableRequests counts, with the server's own
// counters, the FUSE requests walks of a mount cost: a cold walk that
// stats every entry is all READDIRPLUS (no OPENDIR round trip but the
// first, which tells the kernel it need not ask again, no LOOKUP, no
// GETATTR), and the same walk again costs nothing. Files open twice at
// once read right, and a view without xattrs lists none and supports no
// getxattr, which the kernel then answers itself. A program that lists
// through glibc (GNU ls) is given a big directory in replies as large as
// the kernel takes.
func TestWalksCostOnlyUnavoidableRequests(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := faultImage("plain", 1, testimage.Gzip)
	const wide = 4000
	var files []testimage.Entry
	for i := range wide {
		files = append(files, testimage.File(fmt.Sprintf("wide/f%04d", i), ""))
	}
	img.Layers = append(img.Layers, testimage.Layer{Compression: testimage.Gzip, Entries: files})
	mustRun(t, root, "import", writeFaultLayout(t, img))
	stats := filepath.Join(t.TempDir(), "requests.json")
	t.Setenv("LAYERFS_FUSE_STATS", stats)
	mnt := t.TempDir()
	srv := serveLogged(t, root, mnt, "plain")

	counts := func() map[string]uint64 {
		t.Helper()
		os.Remove(stats)
		if err := srv.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			data, err := os.ReadFile(stats)
			if err == nil {
				var m map[string]uint64
				if err := json.Unmarshal(data, &m); err != nil {
					t.Fatalf("%s: %v", stats, err)
				}
				return m
			}
			if !errors.Is(err, fs.ErrNotExist) || time.Now().After(deadline) {
				t.Fatalf("request counts: %v", err)
			}
		}
	}
	walk := func() (entries, dirs int) {
		t.Helper()
		err := filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			var st unix.Stat_t
			if err := unix.Lstat(p, &st); err != nil {
				return err
			}
			entries++
			if d.IsDir() {
				dirs++
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return entries, dirs
	}
	sub := func(after, before map[string]uint64) map[string]uint64 {
		d := map[string]uint64{}
		for op, v := range after {
			if v > before[op] {
				d[op] = v - before[op]
			}
		}
		return d
	}

	start := counts()
	ls := exec.Command(testimage.RequireTool(t, "ls"), "-f", filepath.Join(mnt, "wide"))
	if out, err := ls.Output(); err != nil || strings.Count(string(out), "\n") != wide+2 {
		t.Fatalf("ls -f of %d entries: %d lines, %v", wide, strings.Count(string(out), "\n"), err)
	}
	// fuse_direntplus is 152 bytes beside a name padded to 8; the most one
	// reply carries is the largest request, 128 KiB; the end is one more.
	listing := (wide + 2) * (152 + 8)
	if n, most := sub(counts(), start)["READDIRPLUS"], uint64((listing+128<<10-1)/(128<<10)+1); n > most {
		t.Errorf("ls -f of %d entries: %d READDIRPLUS requests, want at most %d", wide, n, most)
	}

	start = counts()
	entries, dirs := walk()
	cold := sub(counts(), start)
	t.Logf("cold walk of %d entries, %d directories: %v", entries, dirs, cold)
	if entries < 1000 {
		t.Fatalf("walked %d entries; the image has more than 1000", entries)
	}
	for _, op := range []string{"LOOKUP", "GETATTR", "RELEASEDIR"} {
		if cold[op] != 0 {
			t.Errorf("cold walk: %d %s requests, want none", cold[op], op)
		}
	}
	if cold["OPENDIR"] > 1 {
		t.Errorf("cold walk: %d OPENDIR requests, want at most the first", cold["OPENDIR"])
	}
	if n := cold["READDIRPLUS"]; n < uint64(dirs) || n > uint64(dirs+entries/10) {
		t.Errorf("cold walk: %d READDIRPLUS requests for %d directories of %d entries", n, dirs, entries)
	}

	before := counts()
	walk()
	if warm := sub(counts(), before); len(warm) != 0 {
		t.Errorf("warm walk: %v, want no request", warm)
	}

	// Two opens of one file at once pass through to the same object:
	// the kernel refuses an inode two backing files.
	a, err := os.Open(filepath.Join(mnt, "big/two"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if data, err := os.ReadFile(filepath.Join(mnt, "big/two-again")); err != nil || len(data) != 2<<20+17 {
		t.Errorf("read of big/two-again while big/two is open: %d bytes, %v", len(data), err)
	}
	if data, err := os.ReadFile(filepath.Join(mnt, "big/two")); err != nil || len(data) != 2<<20+17 {
		t.Errorf("second open of big/two: %d bytes, %v", len(data), err)
	}

	// No xattrs is an empty list, as on a disk file system: mkfs.erofs
	// fails on EOPNOTSUPP. A getxattr is not supported, and only the
	// first reaches the server.
	before = counts()
	for _, p := range []string{"big/two", "big", "."} {
		if n, err := unix.Llistxattr(filepath.Join(mnt, p), nil); n != 0 || err != nil {
			t.Errorf("listxattr %s of a view without xattrs: %d, %v; want an empty list", p, n, err)
		}
		for name, want := range map[string]error{
			"user.x":              unix.EOPNOTSUPP,
			"security.capability": unix.EOPNOTSUPP,
			// The kernel's own answer: no ACL.
			"system.posix_acl_access": unix.ENODATA,
		} {
			if _, err := unix.Lgetxattr(filepath.Join(mnt, p), name, nil); !errors.Is(err, want) {
				t.Errorf("getxattr %s %s of a view without xattrs: %v, want %v", p, name, err, want)
			}
		}
	}
	if xattrCalls := sub(counts(), before); xattrCalls["GETXATTR"] > 1 || xattrCalls["LISTXATTR"] != 3 {
		t.Errorf("3 listxattr and 9 getxattr calls of a view without xattrs cost %v, want 3 LISTXATTR and at most 1 GETXATTR", xattrCalls)
	}
}
