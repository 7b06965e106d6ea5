package output

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
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
	f, err := Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("new"); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(name, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 1234 || st.Gid != 1234 || st.Mode&0o7777 != 0o600 {
		t.Errorf("replaced: %d:%d mode %04o; want 1234:1234 0600", st.Uid, st.Gid, st.Mode&0o7777)
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
