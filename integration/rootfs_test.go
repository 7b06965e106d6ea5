package integration

import (
	"fmt"
	"maps"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
)

// loopMount mounts a filesystem image read-only at a new directory,
// unmounted when the test ends.
func loopMount(t *testing.T, image string, args ...string) string {
	t.Helper()
	mnt := t.TempDir()
	testimage.RunTool(t, "mount", append(append(args, "-o", "loop,ro"), image, mnt)...)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
			forceUnmount(t, mnt)
		}
	})
	return mnt
}

// ext4Size is a size, in KiB, that holds tree as ext4 with room to spare.
func ext4Size(tree oracle.Tree) int64 {
	var bytes int64
	for _, e := range tree {
		bytes += e.Size + 4096
	}
	return bytes/1024*5/4 + 32<<10
}

// without returns tree less the path p and everything beneath it.
func without(tree oracle.Tree, p string) oracle.Tree {
	out := make(oracle.Tree, len(tree))
	for q, e := range tree {
		if q != p && !(len(q) > len(p) && q[:len(p)+1] == p+"/") {
			out[q] = e
		}
	}
	return out
}

// ext4Copied is tree with its mtimes as mkfs.ext4 -d (e2fsprogs 1.47.0)
// copies them: whole seconds, wrapped to 32 bits signed, as it sets none
// of the inode's extra time bits.
func ext4Copied(tree oracle.Tree) oracle.Tree {
	out := make(oracle.Tree, len(tree))
	for p, e := range tree {
		e.Mtime = oracle.Timespec{Sec: int64(int32(e.Mtime.Sec))}
		out[p] = e
	}
	return out
}

// miscounted returns the paths of files the mount shows with fewer links
// than it has names for them: a hardlink into a lower layer shows the
// lower file's count (see the report of issue 7). mkfs tools take the
// count at its word, so such names cannot come out as one file.
func miscounted(view oracle.Tree) map[string]bool {
	names := map[string]uint64{}
	for _, e := range view {
		if e.HardlinkID != "" {
			names[e.HardlinkID]++
		}
	}
	out := map[string]bool{}
	for p, e := range view {
		if e.HardlinkID != "" && e.Nlink < names[e.HardlinkID] {
			out[p] = true
		}
	}
	return out
}

// withoutLinks is tree with the link facts of paths left out.
func withoutLinks(tree oracle.Tree, paths map[string]bool) oracle.Tree {
	out := make(oracle.Tree, len(tree))
	for p, e := range tree {
		if paths[p] {
			e.Nlink, e.HardlinkID = 0, ""
		}
		out[p] = e
	}
	return out
}

// longestName is the longest name of a path of tree.
func longestName(tree oracle.Tree) string {
	var longest string
	for p := range tree {
		if name := filepath.Base(p); len(name) > len(longest) {
			longest = name
		}
	}
	return longest
}

// checkRootfs builds ext4 and erofs root disks straight from the mount of
// img, with no unpack step, checks both with their fsck, mounts them and
// compares them with the mount.
func checkRootfs(t *testing.T, root string, img layoutImage) {
	t.Helper()
	mnt := mountDaemon(t, root, img.ref)
	view := walk(t, mnt)
	if _, ok := view["lost+found"]; ok {
		t.Fatal("the image has a lost+found, which mkfs.ext4 would replace")
	}
	bad := miscounted(view)
	if len(bad) > 0 {
		t.Logf("the mount miscounts the links of %v: not comparing their link facts", bad)
	}
	view = withoutLinks(view, bad)
	dir := t.TempDir()

	ext4 := filepath.Join(dir, "root.ext4")
	// 4 KiB blocks, as a root disk has them, also hold long symlink targets.
	testimage.RunTool(t, "mkfs.ext4", "-q", "-b", "4096", "-d", mnt, ext4, fmt.Sprintf("%dk", ext4Size(view)))
	testimage.RunTool(t, "e2fsck", "-fn", ext4)
	// mkfs.ext4 -d (e2fsprogs 1.47.0) makes each name of a hardlinked
	// symlink a symlink of its own.
	unlinked := maps.Clone(bad)
	for p, e := range view {
		if e.Type == oracle.TypeSymlink && e.Nlink > 1 {
			unlinked[p] = true
		}
	}
	got := withoutLinks(without(walk(t, loopMount(t, ext4)), "lost+found"), unlinked)
	// mkfs.ext4 gives the root directory attributes of its own.
	requireSame(t, "ext4 from the mount", ext4Copied(withoutLinks(view, unlinked)), got, oracle.IgnoreRootAttrs())

	erofs := filepath.Join(dir, "root.erofs")
	if name := longestName(view); len(name) >= 255 {
		// mkfs.erofs 1.5 (bookworm) fails on a name of 255 bytes with
		// "Could not format the device: No such file or directory". Any
		// other outcome is checked: another failure, or a version that
		// takes the name and must then build the same tree.
		out, err := exec.Command(testimage.RequireTool(t, "mkfs.erofs"), "--quiet", erofs, mnt).CombinedOutput()
		if err != nil && strings.Contains(string(out), "Could not format the device") {
			t.Logf("no erofs disk: this mkfs.erofs cannot take the %d-byte name of %s", len(name), name)
			return
		}
		if err != nil {
			t.Fatalf("mkfs.erofs: %v\n%s", err, out)
		}
	} else {
		testimage.RunTool(t, "mkfs.erofs", "--quiet", erofs, mnt)
	}
	testimage.RunTool(t, "fsck.erofs", erofs)
	got = withoutLinks(walk(t, loopMount(t, erofs, "-t", "erofs")), bad)
	requireSame(t, "erofs from the mount", view, got)
}

// TestRootfsFromMount is the VM root disk workflow of the README, run on
// the sample image, every rule case and the Debian image.
func TestRootfsFromMount(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	t.Run("sample", func(t *testing.T) {
		img := sampleImage(t)
		importInto(t, root, img)
		checkRootfs(t, root, img)
	})
	t.Run("rules", func(t *testing.T) {
		for _, c := range testimage.RuleCases() {
			t.Run(c.Name, func(t *testing.T) {
				t.Parallel()
				img := ruleImage(t, c)
				importInto(t, root, img)
				checkRootfs(t, root, img)
			})
		}
	})
	t.Run("debian", func(t *testing.T) {
		if testing.Short() {
			t.Skip("the Debian image is left out of -short runs")
		}
		img := debianLayoutImage(t)
		importInto(t, root, img)
		checkRootfs(t, root, img)
	})
}
