package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// tool runs a program that RequireTool finds, failing t with its output.
func tool(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(testimage.RequireTool(t, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// shell runs a pipeline of real tools.
func shell(t testing.TB, script string) {
	t.Helper()
	out, err := exec.Command("bash", "-o", "pipefail", "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
}

// TestClientsThroughMount builds what users build from a mount of the
// Debian image, with the real tools, and compares each result with kernel
// overlayfs over the same layers.
func TestClientsThroughMount(t *testing.T) {
	requireRoot(t)
	img := debianLayoutImage(t)
	root := t.TempDir()
	importInto(t, root, img)
	mnt := mountDaemon(t, root, img.ref)
	want := oracleTree(t, img.blobs)

	t.Run("mkfs.ext4", func(t *testing.T) {
		disk := filepath.Join(t.TempDir(), "root.ext4")
		if err := os.WriteFile(disk, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(disk, 1<<30); err != nil {
			t.Fatal(err)
		}
		// 256-byte inodes keep nanosecond times and room for xattrs.
		tool(t, "mkfs.ext4", "-q", "-F", "-I", "256", "-d", mnt, disk)
		tool(t, "e2fsck", "-fn", disk)
		dir := t.TempDir()
		tool(t, "mount", "-t", "ext4", "-o", "ro,loop,noload", disk, dir)
		t.Cleanup(func() {
			if err := unix.Unmount(dir, 0); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		got := walk(t, dir)
		// mkfs.ext4 makes lost+found itself; it is not from the image.
		if e, ok := got["lost+found"]; !ok || e.Type != oracle.TypeDir {
			t.Errorf("the ext4 image has no lost+found")
		}
		delete(got, "lost+found")
		// Making lost+found in the root stamps the root's mtime with the
		// time of the mkfs, after the copy set it. Nothing else may
		// differ: mkfs.ext4 copies every xattr this image has, its
		// user.* ones and security.capability.
		if r, ok := got["."]; ok {
			r.Mtime = want["."].Mtime
			got["."] = r
		}
		requireSame(t, "ext4 made by mkfs.ext4 -d", want, got)
	})

	t.Run("tar", func(t *testing.T) {
		dir := t.TempDir()
		// POSIX format keeps nanoseconds and xattrs.
		shell(t, "tar --format=posix --xattrs --xattrs-include='*' --numeric-owner -C "+mnt+" -cf - . | "+
			"tar --xattrs --xattrs-include='*' --numeric-owner --same-owner --same-permissions -C "+dir+" -xf -")
		requireSame(t, "tar -c of the mount, extracted", want, walk(t, dir))
	})

	t.Run("rsync", func(t *testing.T) {
		dir := t.TempDir()
		tool(t, "rsync", "-aHAX", mnt+"/", dir+"/")
		requireSame(t, "rsync -aHAX of the mount", want, walk(t, dir))
	})
}
