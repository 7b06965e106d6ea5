package integration

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/erofs"
	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// buildImage writes src as an EROFS image file (metadata-only with meta)
// and checks it with fsck.erofs.
func buildImage(t testing.TB, src string, meta bool, seed string) (string, erofs.Result) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "image.erofs")
	out, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	build := func(out *os.File, src fs.FS, opts erofs.Options) (erofs.Result, error) {
		return erofs.Build(out, src, opts)
	}
	if meta {
		build = func(out *os.File, src fs.FS, opts erofs.Options) (erofs.Result, error) {
			return erofs.BuildMeta(out, src, opts)
		}
	}
	res, err := build(out, erofs.DirFS(src, meta), erofs.Options{Seed: seed})
	if err != nil {
		t.Fatalf("build EROFS image of %s: %v", src, err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	fsck := testimage.RequireTool(t, "fsck.erofs")
	if o, err := exec.Command(fsck, file).CombinedOutput(); err != nil {
		t.Fatalf("fsck.erofs %s: %v\n%s", file, err, o)
	}
	return file, res
}

// mountErofs mounts image read-only with the kernel, unmounted when the
// test ends.
func mountErofs(t testing.TB, image string) string {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount(image, mnt, "erofs", unix.MS_RDONLY, ""); err != nil {
		// Kernels before 6.12 mount only block devices.
		mount := testimage.RequireTool(t, "mount")
		if o, err2 := exec.Command(mount, "-t", "erofs", "-o", "ro,loop", image, mnt).CombinedOutput(); err2 != nil {
			t.Fatalf("mount erofs %s: %v; with a loop device: %v\n%s", image, err, err2, o)
		}
	}
	t.Cleanup(func() { unmountOrDetach(t, mnt) })
	return mnt
}

func unmountOrDetach(t testing.TB, mnt string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := unix.Unmount(mnt, 0)
		if err == nil || err == unix.EINVAL {
			return
		}
		if err != unix.EBUSY || time.Now().After(deadline) {
			t.Errorf("unmount %s: %v; detaching it", mnt, err)
			if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
				t.Errorf("detach %s: %v", mnt, err)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// copyTree copies src to a new directory with every attribute, hardlinks
// included, through GNU tar as the oracle unpacks layers.
func copyTree(t testing.TB, src string) string {
	t.Helper()
	tar := testimage.RequireTool(t, "tar")
	dst := t.TempDir()
	cmd := `"$0" -C "$1" --xattrs --xattrs-include='*' --acls -cf - . | "$0" -C "$2" --xattrs --xattrs-include='*' --acls --numeric-owner -xpf -`
	if o, err := exec.Command("sh", "-c", cmd, tar, src, dst).CombinedOutput(); err != nil {
		t.Fatalf("copy %s: %v\n%s", src, err, o)
	}
	// tar sets the root's attributes from its "." entry except its mtime
	// when entries follow it; keep the source's.
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.UtimesNano(dst, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		t.Fatal(err)
	}
	return dst
}

// relinkSpecialFiles makes the names of each device or FIFO that tree
// shows as one file one file again in dir, a copy of tree by copyTree:
// GNU tar writes each name of one as a member of its own. The parents
// keep the mtimes tree gives them.
func relinkSpecialFiles(t testing.TB, dir string, tree oracle.Tree) {
	t.Helper()
	for p, e := range tree {
		special := e.Type == oracle.TypeChar || e.Type == oracle.TypeBlock || e.Type == oracle.TypeFIFO
		if !special || e.HardlinkID == "" || e.HardlinkID == p {
			continue
		}
		must(t, os.Remove(filepath.Join(dir, p)))
		must(t, os.Link(filepath.Join(dir, e.HardlinkID), filepath.Join(dir, p)))
		parent := path.Dir(p)
		mt := tree[parent].Mtime
		ts := unix.Timespec{Sec: mt.Sec, Nsec: mt.Nsec}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, parent), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// checkBuild builds a complete image of the directory src, mounts it and
// requires the kernel to show exactly what src shows; a second build from
// a copy of src, made later, must give the same bytes.
func checkBuild(t *testing.T, src string) {
	t.Helper()
	want := walk(t, src)
	image, res := buildImage(t, src, false, "seed")
	requireSame(t, "EROFS image", want, walk(t, mountErofs(t, image)))
	copied := copyTree(t, src)
	relinkSpecialFiles(t, copied, want)
	requireSame(t, "copy of the source", want, walk(t, copied))
	image2, res2 := buildImage(t, copied, false, "seed")
	if res != res2 {
		t.Errorf("two builds of the same tree differ: %+v and %+v", res, res2)
	}
	if !sameFile(t, image, image2) {
		t.Errorf("two builds of the same tree are not byte-identical")
	}
}

func sameFile(t testing.TB, a, b string) bool {
	t.Helper()
	da, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(da, db)
}

// checkMeta builds a metadata-only image of src, puts each file's content
// under its object path, mounts overlayfs with the objects as a data-only
// lower layer and requires it to show exactly what src shows.
func checkMeta(t *testing.T, src string) {
	t.Helper()
	checkMetaWith(t, src, storeObjects(t, src))
}

// checkMetaWith is checkMeta over a given objects directory.
func checkMetaWith(t *testing.T, src, objects string) {
	t.Helper()
	want := walk(t, src)
	image, _ := buildImage(t, src, true, "seed")
	meta := mountErofs(t, image)
	mnt := t.TempDir()
	opts := "ro,metacopy=on,redirect_dir=on,lowerdir=" + meta + "::" + objects
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("mount overlay %s: %v", opts, err)
	}
	t.Cleanup(func() { unmountOrDetach(t, mnt) })
	requireSame(t, "overlay over the metadata-only image", want, walk(t, mnt))
}

// storeObjects lays out the content of every regular file of src as the
// store does (objects/sha256/XX/HEX) and returns the objects directory.
func storeObjects(t testing.TB, src string) string {
	t.Helper()
	objects := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		data, err := io.ReadAll(in)
		if err != nil || len(data) == 0 {
			return err
		}
		name, err := erofs.ObjectPath(digest.FromBytes(data).String())
		if err != nil {
			return err
		}
		dst := filepath.Join(objects, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, data, 0o644)
	})
	if err != nil {
		t.Fatalf("lay out objects of %s: %v", src, err)
	}
	return objects
}

func TestErofsRuleCases(t *testing.T) {
	requireRoot(t)
	for _, c := range extractableRuleCases() {
		t.Run(c.Name, func(t *testing.T) {
			src := overlayMount(t, unpackLayers(t, ruleImage(t, c).blobs))
			checkBuild(t, src)
			checkMeta(t, src)
		})
	}
}

func TestErofsSample(t *testing.T) {
	requireRoot(t)
	src := overlayMount(t, unpackLayers(t, sampleImage(t).blobs))
	checkBuild(t, src)
	checkMeta(t, src)
}

// TestErofsLimits: a 10,000-entry directory, 255-byte names, a path of
// 4096 bytes, hardlinks, devices, FIFOs, odd modes, nanosecond mtimes and
// every xattr namespace.
func TestErofsLimits(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	must := fatalOn(t)
	big := filepath.Join(src, "big")
	must(os.Mkdir(big, 0o755))
	for i := range 10000 {
		must(os.WriteFile(filepath.Join(big, fmt.Sprintf("entry-%05d", i)), []byte(fmt.Sprint(i)), 0o644))
	}
	// The deepest path is as long as the walks of the mounts, which use
	// absolute paths, can stat: PATH_MAX less the mount point and some
	// slack for mount points a few bytes longer than src.
	rel := deepPath(4095 - len(src) - 1 - 32)
	must(os.MkdirAll(filepath.Join(src, filepath.Dir(rel)), 0o755))
	must(os.WriteFile(filepath.Join(src, rel), []byte("deep"), 0o600))
	must(os.WriteFile(filepath.Join(src, "linked"), []byte("one file"), 0o4755))
	must(os.Link(filepath.Join(src, "linked"), filepath.Join(src, "link2")))
	must(os.Link(filepath.Join(src, "linked"), filepath.Join(big, "link3")))
	must(unix.Mknod(filepath.Join(src, "chr"), unix.S_IFCHR|0o620, int(unix.Mkdev(4, 300))))
	must(unix.Mknod(filepath.Join(src, "blk"), unix.S_IFBLK|0o660, int(unix.Mkdev(259, 70000))))
	must(unix.Mkfifo(filepath.Join(src, "fifo"), 0o644))
	must(os.WriteFile(filepath.Join(src, "none"), nil, 0))
	must(os.Chmod(filepath.Join(src, "none"), 0))
	must(os.Mkdir(filepath.Join(src, "sticky"), 0o755))
	must(os.Chmod(filepath.Join(src, "sticky"), 0o1777))
	must(os.Symlink(strings.Repeat("t", 4095), filepath.Join(src, "symlink")))
	x := filepath.Join(src, "xattrs")
	must(os.WriteFile(x, []byte("x"), 0o2711))
	must(unix.Lsetxattr(x, "security.capability", []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0))
	must(unix.Lsetxattr(x, "trusted.overlay.redirect", []byte("/elsewhere"), 0))
	must(unix.Lsetxattr(x, "trusted.long."+strings.Repeat("k", 200), []byte("v"), 0))
	must(unix.Lsetxattr(x, "user.empty", nil, 0))
	// user::rw-, user:1000:r--, group::r--, mask::r--, other::---
	acl := []byte{2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 2, 0, 4, 0, 0xe8, 3, 0, 0, 4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff,
		0x10, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}
	must(unix.Lsetxattr(filepath.Join(src, "sticky"), "system.posix_acl_access", acl, 0))
	must(unix.Lsetxattr(filepath.Join(src, "sticky"), "system.posix_acl_default", acl, 0))
	must(os.Lchown(x, 1234, 5678))
	must(unix.UtimesNano(x, []unix.Timespec{{Sec: 1, Nsec: 2}, {Sec: 1700000000, Nsec: 123456789}}))
	checkBuild(t, src)
	checkMeta(t, src)
}

// deepPath is a relative path of exactly n bytes made of 255-byte names.
func deepPath(n int) string {
	var b strings.Builder
	for n-b.Len() > 255 {
		b.WriteString(strings.Repeat("d", 255) + "/")
	}
	b.WriteString(strings.Repeat("f", n-b.Len()))
	return b.String()
}

// TestErofsHostile: a tree whose own overlay xattrs name another object,
// claim metacopy and make a directory opaque shows exactly itself through
// the kernel mount of its metadata-only image, nothing of the objects it
// points at.
func TestErofsHostile(t *testing.T) {
	requireRoot(t)
	src := t.TempDir()
	must := fatalOn(t)
	secret := []byte("another image's secret\n")
	secretPath, err := erofs.ObjectPath(digest.FromBytes(secret).String())
	must(err)
	for _, f := range []string{"redirected", "empty"} {
		content := []byte("my own bytes\n")
		if f == "empty" {
			content = nil
		}
		p := filepath.Join(src, f)
		must(os.WriteFile(p, content, 0o644))
		must(unix.Lsetxattr(p, "trusted.overlay.redirect", []byte(secretPath), 0))
		must(unix.Lsetxattr(p, "trusted.overlay.metacopy", nil, 0))
	}
	must(os.Mkdir(filepath.Join(src, "opaque"), 0o755))
	must(unix.Lsetxattr(filepath.Join(src, "opaque"), "trusted.overlay.opaque", []byte("y"), 0))
	must(os.WriteFile(filepath.Join(src, "opaque", "kept"), []byte("kept\n"), 0o644))
	must(os.Mkdir(filepath.Join(src, "moved"), 0o755))
	must(unix.Lsetxattr(filepath.Join(src, "moved"), "trusted.overlay.redirect", []byte("/sha256"), 0))
	objects := storeObjects(t, src)
	must(os.MkdirAll(filepath.Join(objects, filepath.Dir(secretPath)), 0o755))
	must(os.WriteFile(filepath.Join(objects, secretPath), secret, 0o644))
	checkMetaWith(t, src, objects)
}

// fatalOn ends t on any error given to the function it returns.
func fatalOn(t *testing.T) func(error) {
	return func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestErofsDebian(t *testing.T) {
	requireRoot(t)
	src := overlayMount(t, unpackLayers(t, debianLayoutImage(t).blobs))
	checkBuild(t, src)
	checkMeta(t, src)
}
