package oracle

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMountManyLayers stacks more layers than one page of mount options can
// name, which only the lowerdir+ path of the new mount API can mount.
func TestMountManyLayers(t *testing.T) {
	requireIntegration(t)
	base := t.TempDir()
	const n = 40
	var dirs []string
	for i := range n {
		d := filepath.Join(base, fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 120)))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "top"), []byte(fmt.Sprint(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("only%03d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, d)
	}
	if _, ok := legacyOptions(dirs); ok {
		t.Fatal("the layer paths fit in one page; the test would not reach fsconfig")
	}
	tree, target := mountTree(t, dirs)
	if got := len(children(tree, ".")); got != n+1 {
		t.Errorf("merged root has %d entries, want %d", got, n+1)
	}
	b, err := os.ReadFile(filepath.Join(target, "top"))
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != fmt.Sprint(n-1) {
		t.Errorf("top: %q, want the last layer's %d", b, n-1)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(target, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Flags&unix.ST_RDONLY == 0 {
		t.Error("mount is writable")
	}
}

// TestMountSingleLayer checks that one overlay-format layer mounts alone
// and shows neither its whiteouts nor its opaque marks.
func TestMountSingleLayer(t *testing.T) {
	requireIntegration(t)
	d := t.TempDir()
	if err := unix.Mknod(filepath.Join(d, "gone"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(d, "o"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(filepath.Join(d, "o"), opaqueXattr, []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d, "o", "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tree, target := mountTree(t, []string{d})
	mustAbsent(t, tree, "gone")
	if e := mustGet(t, tree, "o"); e.Xattrs != nil {
		t.Errorf("o: xattrs %q shown", e.Xattrs)
	}
	mustGet(t, tree, "o/f")
	if err := os.WriteFile(filepath.Join(target, "new"), nil, 0o644); err == nil {
		t.Error("wrote into a read-only overlay")
	}
}

func TestMountNoLayers(t *testing.T) {
	if _, err := Mount(nil, t.TempDir()); err == nil {
		t.Error("mounted an overlay of no layers")
	}
}
