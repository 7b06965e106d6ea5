package output

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// TestCreateModes: a new output gets 0666 less the umask, as a file any
// tool creates does; a file replaced keeps its own mode.
func TestCreateModes(t *testing.T) {
	dir := t.TempDir()
	kept := filepath.Join(dir, "kept")
	if err := os.WriteFile(kept, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		umask int
		name  string
		want  fs.FileMode
	}{
		{0o077, filepath.Join(dir, "private"), 0o600},
		{0o022, filepath.Join(dir, "shared"), 0o644},
		{0o002, filepath.Join(dir, "group"), 0o664},
		{0o077, kept, 0o640},
		{0o022, kept, 0o640},
	} {
		old := unix.Umask(c.umask)
		f, err := Create(c.name)
		unix.Umask(old)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("new"); err != nil {
			t.Fatal(err)
		}
		if err := f.Commit(); err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(c.name); err != nil || st.Mode().Perm() != c.want {
			t.Errorf("%s under umask %03o: %v, %v; want mode %v", filepath.Base(c.name), c.umask, st.Mode(), err, c.want)
		}
	}
}

// TestCreateKeepsOwner: root replacing another user's file leaves it
// that user's, of its group and mode.
func TestCreateKeepsOwner(t *testing.T) {
	testimage.RequireRoot(t, "a file of another user's")
	name := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(name, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(name, 1234, 1234); err != nil {
		t.Fatal(err)
	}
	writeOutput(t, name, "new")
	var st unix.Stat_t
	if err := unix.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1234 || st.Gid != 1234 || st.Mode&0o7777 != 0o600 {
		t.Errorf("replaced: %d:%d mode %04o; want 1234:1234 0600", st.Uid, st.Gid, st.Mode&0o7777)
	}
}

// TestCreateKeepsACL: a file replaced keeps the ACL that lets another
// user read it, as cp or mkfs.erofs writing over it in place keep it,
// and its user xattrs; the kernel's own check of that user's read is
// the judge.
func TestCreateKeepsACL(t *testing.T) {
	testimage.RequireRoot(t, "reading as another user")
	const reader = 4321
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	name := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(name, []byte("old"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(name, 1234, 1234); err != nil {
		t.Fatal(err)
	}
	// acl_ea_header (version 2), then entries of tag, perm and id, in
	// tag order: user::rw- user:4321:r-- group::r-- mask::r-- other::---
	acl := []byte{2, 0, 0, 0}
	for _, e := range [][3]uint32{{0x01, 6, 0xffffffff}, {0x02, 4, reader}, {0x04, 4, 0xffffffff}, {0x10, 4, 0xffffffff}, {0x20, 0, 0xffffffff}} {
		acl = binary.LittleEndian.AppendUint16(acl, uint16(e[0]))
		acl = binary.LittleEndian.AppendUint16(acl, uint16(e[1]))
		acl = binary.LittleEndian.AppendUint32(acl, e[2])
	}
	if err := unix.Setxattr(name, "system.posix_acl_access", acl, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setxattr(name, "user.origin", []byte("mine"), 0); err != nil {
		t.Fatal(err)
	}
	readAs := func() (string, error) {
		cmd := exec.Command("cat", name)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: reader, Gid: reader}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := readAs(); err != nil || out != "old" {
		t.Fatalf("user %d reads the file before it is replaced: %q, %v", reader, out, err)
	}
	writeOutput(t, name, "new")
	if out, err := readAs(); err != nil || out != "new" {
		t.Errorf("user %d reads the replaced file: %q, %v; want what the ACL let it read", reader, out, err)
	}
	buf := make([]byte, 64)
	if n, err := unix.Getxattr(name, "user.origin", buf); err != nil || string(buf[:n]) != "mine" {
		t.Errorf("user.origin of the replaced file: %q, %v; want %q", buf[:max(n, 0)], err, "mine")
	}
}

// TestCreateReplacesWithoutXattrs: a file on a file system that lists no
// xattrs at all (EOPNOTSUPP: fuse-overlayfs with noxattrs, as sshfs and
// other FUSE file systems answer) is replaced as it always was.
func TestCreateReplacesWithoutXattrs(t *testing.T) {
	testimage.RequireRoot(t, "a FUSE mount")
	testimage.RequireTool(t, "fuse-overlayfs")
	dir := t.TempDir()
	for _, d := range []string{"lower", "upper", "work", "mnt"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mnt := filepath.Join(dir, "mnt")
	testimage.RunTool(t, "fuse-overlayfs", "-o", "noxattrs=1,lowerdir="+filepath.Join(dir, "lower")+",upperdir="+filepath.Join(dir, "upper")+",workdir="+filepath.Join(dir, "work"), mnt)
	t.Cleanup(func() { testimage.RunTool(t, "fusermount3", "-u", mnt) })
	name := filepath.Join(mnt, "disk.img")
	if err := os.WriteFile(name, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Listxattr(name, nil); !errors.Is(err, unix.ENOTSUP) {
		t.Fatalf("listxattr on fuse-overlayfs with noxattrs: %v; want %v", err, unix.ENOTSUP)
	}
	writeOutput(t, name, "new")
	if b, err := os.ReadFile(name); err != nil || string(b) != "new" {
		t.Errorf("replaced: %q, %v; want %q", b, err, "new")
	}
}

// writeOutput writes data as the output named name, through Create.
func writeOutput(t *testing.T, name, data string) {
	t.Helper()
	f, err := Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestCreateSeekableRefuses: a FIFO or a character device is refused
// for output written with seeks; what no output takes is refused as
// Create refuses it, for what it is.
func TestCreateSeekableRefuses(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		fifo:        "a FIFO, and the output is written with seeks",
		"/dev/null": "a character device, and the output is written with seeks",
		dir:         dir + ": is a directory",
	} {
		if _, err := CreateSeekable(name); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want %q", name, err, want)
		}
	}
}
