package viewops

import (
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view"
)

func TestModeString(t *testing.T) {
	for _, tt := range []struct {
		t    view.Type
		mode uint32
		want string
	}{
		{view.TypeReg, 0o644, "-rw-r--r--"},
		{view.TypeReg, 0o4755, "-rwsr-xr-x"},
		{view.TypeReg, 0o6644, "-rwSr-Sr--"},
		{view.TypeDir, 0o1777, "drwxrwxrwt"},
		{view.TypeDir, 0o1770, "drwxrwx--T"},
		{view.TypeSymlink, 0o777, "lrwxrwxrwx"},
		{view.TypeChar, 0o666, "crw-rw-rw-"},
		{view.TypeBlock, 0o660, "brw-rw----"},
		{view.TypeFifo, 0, "p---------"},
	} {
		if got := ModeString(tt.t, tt.mode); got != tt.want {
			t.Errorf("ModeString(%v, %o) = %s, want %s", tt.t, tt.mode, got, tt.want)
		}
	}
}

func list(t *testing.T, p string, opt ListOptions, layers ...string) string {
	t.Helper()
	_, v := teststore.OpenImage(t, teststore.RuleCase(t, layers[0]).Layers)
	var b strings.Builder
	if err := List(&b, v, p, opt); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// The expected listings are what GNU ls -lnA --time-style='+%Y-%m-%d
// %H:%M' writes for the same files; integration tests compare with ls
// itself.
func TestListLong(t *testing.T) {
	got := list(t, "dev", ListOptions{Long: true}, "special-files")
	want := `prw------- 1 0 0             0 2024-01-02 03:04 fifo
brw-rw---- 1 0 0    7,    4101 2024-01-02 03:04 loop
crw-rw-rw- 1 0 0 4095, 1048575 2024-01-02 03:04 max
crw-rw-rw- 1 0 0    1,       3 2024-01-02 03:04 null
brw-rw---- 1 0 0    8,       0 2024-01-02 03:04 sda
crw-rw-rw- 1 0 0  136,     300 2024-01-02 03:04 tty-big
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	got = list(t, "/home/user", ListOptions{Long: true}, "owners")
	want = "lrwxrwxrwx 1 1000 1000 7 2024-01-02 03:04 link -> ../user\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestListRecursive(t *testing.T) {
	got := list(t, "/", ListOptions{Recursive: true}, "hardlink-target-first")
	want := "/:\na\nb\nd\nsub\n\n/sub:\nc\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	got = list(t, "sub/c", ListOptions{Long: true}, "hardlink-target-first")
	want = "-rw-r----- 4 10 20 13 2024-01-02 03:04 sub/c\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
