package output

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

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
