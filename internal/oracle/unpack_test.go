package oracle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// capNetRaw is a VFS_CAP_REVISION_2 security.capability value with the
// effective flag and CAP_NET_RAW (bit 13) permitted, as setcap cap_net_raw+ep
// writes it.
const capNetRaw = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"

func ts(sec int64) Timespec { return Timespec{Sec: sec} }

func sum(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])
}

// threeLayers builds three layers with GNU tar, one per compression, that
// exercise every rule the unpacker applies.
func threeLayers(t *testing.T) []string {
	out := t.TempDir()

	s := newStage(t)
	s.dir(".", attrs{mtime: ts(1000)})
	s.dir("etc", attrs{mode: 0o750, gid: 42, mtime: ts(2000), xattrs: map[string]string{"user.dir": "lower"}})
	s.file("etc/passwd", "root:x:0:0\n", attrs{mtime: ts(2001)})
	s.file("etc/deleteme", "x", attrs{})
	s.dir("opq", attrs{mtime: ts(2100)})
	s.file("opq/a", "a", attrs{})
	s.dir("opq/d", attrs{mode: 0o701})
	s.dir("imp", attrs{mode: 0o711, uid: 7, gid: 8, mtime: Timespec{3000, 123456789}, xattrs: map[string]string{"user.imp": "lower"}})
	s.file("imp/old", "old", attrs{})
	s.dir("keep", attrs{})
	s.file("keep/x", "x", attrs{})
	s.dir("wd", attrs{mode: 0o750, mtime: ts(2200)})
	s.file("wd/old", "old", attrs{})
	s.dir("dir2file", attrs{})
	s.file("dir2file/child", "c", attrs{})
	s.file("file2dir", "f", attrs{})
	s.file("same", "old", attrs{})
	s.dir("bin", attrs{})
	s.file("bin/su", "su", attrs{mode: 0o4755, mtime: ts(2300)})
	s.file("bin/sg", "sg", attrs{mode: 0o2755, gid: 5})
	s.dir("hl", attrs{})
	s.file("hl/a", "hl", attrs{mode: 0o640, uid: 3})
	s.hardlink("hl/b", "hl/a")
	s.fifo("fifo1", attrs{mode: 0o640, mtime: ts(2400)})
	s.symlink("sym", "etc/passwd", attrs{uid: 9, mtime: ts(4000)})
	s.file("cap", "cap", attrs{mode: 0o755, xattrs: map[string]string{"security.capability": capNetRaw, "user.x": "1"}})
	s.dir("dev", attrs{})
	s.chardev("dev/null", 1, 3, attrs{mode: 0o666})
	s.dir("tmp", attrs{mode: 0o1777})
	s.dir("d2f", attrs{})
	s.file("d2f/k", "k", attrs{})
	l1 := s.tar(filepath.Join(out, "l1.tar.gz"), "gzip")

	s = newStage(t)
	s.marker("etc/.wh.deleteme")
	s.file("etc/new", "new", attrs{})
	s.dir("opq", attrs{mode: 0o700, mtime: ts(5000)})
	s.file("opq/c", "c", attrs{})
	s.marker("opq/.wh..wh..opq")
	s.file("imp/new", "new", attrs{})
	s.file("newimp/sub/file", "f", attrs{})
	s.marker(".wh.keep")
	s.marker(".wh.wd")
	s.file("wd/new", "n", attrs{})
	s.file("dir2file", "now a file", attrs{})
	s.dir("file2dir", attrs{mode: 0o705})
	s.file("file2dir/inner", "i", attrs{})
	s.file("same", "new", attrs{})
	s.marker(".wh.same")
	s.file("hl2/x", "x", attrs{mode: 0o600})
	s.hardlink("hl2/y", "hl2/x")
	s.hardlink("hl2/z", "hl2/x")
	l2 := s.tar(filepath.Join(out, "l2.tar.zst"), "zstd")

	s = newStage(t)
	s.marker("etc/.wh.new")
	s.file("opq/sub/f", "f", attrs{})
	s.file("opq/d/f", "f", attrs{})
	s.file("keep/y", "y", attrs{})
	s.file("wd/more", "m", attrs{})
	s.file("d2f", "now a file", attrs{})
	l3 := s.tar(filepath.Join(out, "l3.tar"), "")
	// As umoci writes a directory that became a file: the file, then
	// whiteouts beneath it for the old children.
	s = newStage(t)
	s.marker("d2f/.wh.k")
	s.tar(l3, "append")

	return []string{l1, l2, l3}
}

func unpackAll(t *testing.T, blobs []string) []string {
	t.Helper()
	var dirs []string
	for i, b := range blobs {
		dst := filepath.Join(t.TempDir(), "layer")
		if err := UnpackLayer(b, dst, dirs); err != nil {
			t.Fatalf("layer %d: %v", i+1, err)
		}
		dirs = append(dirs, dst)
	}
	return dirs
}

func mountTree(t *testing.T, dirs []string) (Tree, string) {
	t.Helper()
	target := t.TempDir()
	unmount, err := Mount(dirs, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	})
	tree, err := Walk(target)
	if err != nil {
		t.Fatal(err)
	}
	return tree, target
}

func TestUnpackOverlayFormat(t *testing.T) {
	requireIntegration(t)
	dirs := unpackAll(t, threeLayers(t))
	l1, l2 := dirs[0], dirs[1]

	isWhiteout := func(p string) bool {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", p, err)
			return false
		}
		return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 && st.Uid == 0 && st.Gid == 0
	}
	for _, p := range []string{"keep", "etc/deleteme"} {
		if !isWhiteout(filepath.Join(l2, p)) {
			t.Errorf("layer 2 %s: want a 0/0 character device", p)
		}
	}
	for _, p := range []string{"opq", "wd"} {
		if o, err := isOpaque(filepath.Join(l2, p)); err != nil || !o {
			t.Errorf("layer 2 %s: want opaque, got %v, %v", p, o, err)
		}
	}
	if o, _ := isOpaque(filepath.Join(l1, "opq")); o {
		t.Error("layer 1 opq: opaque without a marker")
	}

	l2tree, err := Walk(l2)
	if err != nil {
		t.Fatal(err)
	}
	for p := range l2tree {
		if strings.HasPrefix(filepath.Base(p), whiteoutPrefix) {
			t.Errorf("layer 2 %s: marker left behind", p)
		}
	}
	if e := mustGet(t, l2tree, "same"); e.Type != TypeReg || e.SHA256 != sum("new") {
		t.Errorf("layer 2 same: a whiteout hid its own layer's entry: %+v", e)
	}
	// Implied directories carry the lower attributes in the layer itself,
	// so that overlayfs shows them.
	if e := mustGet(t, l2tree, "etc"); e.Mode != 0o750 || e.GID != 42 || e.Mtime != ts(2000) || e.Xattrs["user.dir"] != "lower" {
		t.Errorf("layer 2 etc: want 0750 0:42 mtime 2000 user.dir, got %+v", e)
	}
	if e := mustGet(t, l2tree, "."); e.Mtime != ts(1000) {
		t.Errorf("layer 2 root: want mtime 1000 from layer 1, got %v", e.Mtime)
	}
}

func TestMergedView(t *testing.T) {
	requireIntegration(t)
	tree, _ := mountTree(t, unpackAll(t, threeLayers(t)))

	for p := range tree {
		if strings.HasPrefix(filepath.Base(p), whiteoutPrefix) {
			t.Errorf("%s: marker shows in the merged view", p)
		}
	}
	wantChildren := map[string][]string{
		".":        {"bin", "cap", "d2f", "dev", "dir2file", "etc", "fifo1", "file2dir", "hl", "hl2", "imp", "keep", "newimp", "opq", "same", "sym", "tmp", "wd"},
		"etc":      {"passwd"},
		"opq":      {"c", "d", "sub"},
		"imp":      {"new", "old"},
		"keep":     {"y"},
		"wd":       {"more", "new"},
		"file2dir": {"inner"},
		"newimp":   {"sub"},
	}
	for dir, want := range wantChildren {
		if got := children(tree, dir); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: children %q, want %q", dir, got, want)
		}
	}

	dirAttrs := []struct {
		path     string
		mode     uint32
		uid, gid uint32
		mtime    Timespec
		xattrs   map[string]string
	}{
		{".", 0o755, 0, 0, ts(1000), nil},
		{"etc", 0o750, 0, 42, ts(2000), map[string]string{"user.dir": "lower"}},
		{"opq", 0o700, 0, 0, ts(5000), nil},
		{"opq/d", 0o755, 0, 0, ts(0), nil}, // the lower opq/d is beneath an opaque dir
		{"opq/sub", 0o755, 0, 0, ts(0), nil},
		{"imp", 0o711, 7, 8, Timespec{3000, 123456789}, map[string]string{"user.imp": "lower"}},
		{"newimp", 0o755, 0, 0, ts(0), nil},
		{"newimp/sub", 0o755, 0, 0, ts(0), nil},
		{"keep", 0o755, 0, 0, ts(0), nil}, // the lower keep is whited out
		{"wd", 0o750, 0, 0, ts(2200), nil},
		{"file2dir", 0o705, 0, 0, ts(0), nil},
		{"tmp", 0o1777, 0, 0, ts(0), nil},
	}
	for _, w := range dirAttrs {
		e := mustGet(t, tree, w.path)
		got := Entry{Type: e.Type, Mode: e.Mode, UID: e.UID, GID: e.GID, Mtime: e.Mtime, Xattrs: e.Xattrs}
		want := Entry{Type: TypeDir, Mode: w.mode, UID: w.uid, GID: w.gid, Mtime: w.mtime, Xattrs: w.xattrs}
		for _, line := range Diff(Tree{w.path: want}, Tree{w.path: got}) {
			t.Error(line)
		}
	}

	for _, p := range []string{"etc/deleteme", "etc/new", "opq/a", "keep/x", "wd/old", "dir2file/child"} {
		mustAbsent(t, tree, p)
	}
	if e := mustGet(t, tree, "dir2file"); e.Type != TypeReg || e.SHA256 != sum("now a file") {
		t.Errorf("dir2file: want the upper file, got %+v", e)
	}
	if e := mustGet(t, tree, "d2f"); e.Type != TypeReg || e.SHA256 != sum("now a file") {
		t.Errorf("d2f: want layer 3's file, got %+v", e)
	}
	if e := mustGet(t, tree, "same"); e.SHA256 != sum("new") {
		t.Errorf("same: want layer 2's content, got %+v", e)
	}

	for _, names := range [][]string{{"hl/a", "hl/b"}, {"hl2/x", "hl2/y", "hl2/z"}} {
		for _, p := range names {
			e := mustGet(t, tree, p)
			if e.HardlinkID != names[0] || e.Nlink != uint64(len(names)) {
				t.Errorf("%s: hardlink %q nlink %d, want %q nlink %d", p, e.HardlinkID, e.Nlink, names[0], len(names))
			}
		}
	}
	if e := mustGet(t, tree, "hl/b"); e.Mode != 0o640 || e.UID != 3 || e.SHA256 != sum("hl") {
		t.Errorf("hl/b: %+v", e)
	}
	if e := mustGet(t, tree, "bin/su"); e.Mode != 0o4755 || e.Mtime != ts(2300) {
		t.Errorf("bin/su: want setuid 04755 mtime 2300, got %04o %v", e.Mode, e.Mtime)
	}
	if e := mustGet(t, tree, "bin/sg"); e.Mode != 0o2755 || e.GID != 5 {
		t.Errorf("bin/sg: want setgid 02755 gid 5, got %04o %d", e.Mode, e.GID)
	}
	if e := mustGet(t, tree, "fifo1"); e.Type != TypeFIFO || e.Mode != 0o640 || e.Mtime != ts(2400) {
		t.Errorf("fifo1: %+v", e)
	}
	if e := mustGet(t, tree, "sym"); e.Type != TypeSymlink || e.Link != "etc/passwd" || e.Size != int64(len("etc/passwd")) || e.UID != 9 || e.Mtime != ts(4000) {
		t.Errorf("sym: %+v", e)
	}
	if e := mustGet(t, tree, "cap"); !reflect.DeepEqual(e.Xattrs, map[string]string{"security.capability": capNetRaw, "user.x": "1"}) {
		t.Errorf("cap: xattrs %q", e.Xattrs)
	}
	if e := mustGet(t, tree, "dev/null"); e.Type != TypeChar || e.DevMajor != 1 || e.DevMinor != 3 || e.Mode != 0o666 {
		t.Errorf("dev/null: %+v", e)
	}
	if e := mustGet(t, tree, "etc/passwd"); e.Type != TypeReg || e.Size != 11 || e.SHA256 != sum("root:x:0:0\n") || e.Nlink != 1 || e.HardlinkID != "etc/passwd" {
		t.Errorf("etc/passwd: %+v", e)
	}
}

func TestUnpackRejectsNonEmptyDst(t *testing.T) {
	requireIntegration(t)
	dst := t.TempDir()
	if err := os.WriteFile(filepath.Join(dst, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := newStage(t)
	s.file("f", "f", attrs{})
	blob := s.tar(filepath.Join(t.TempDir(), "l.tar"), "")
	if err := UnpackLayer(blob, dst, nil); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("want a not-empty error, got %v", err)
	}
}

// TestUnpackRefusesEntryUnderFile checks that only whiteout markers beneath
// a file of the same layer are forgiven, not content.
func TestUnpackRefusesEntryUnderFile(t *testing.T) {
	requireIntegration(t)
	s := newStage(t)
	s.file("f", "f", attrs{})
	blob := s.tar(filepath.Join(t.TempDir(), "l.tar"), "")
	s = newStage(t)
	s.file("f/x", "x", attrs{})
	s.tar(blob, "append")
	err := UnpackLayer(blob, filepath.Join(t.TempDir(), "l"), nil)
	if err == nil || !strings.Contains(err.Error(), "f/x") {
		t.Errorf("want an error naming f/x, got %v", err)
	}
}

func TestUnpackCorruptBlob(t *testing.T) {
	requireIntegration(t)
	s := newStage(t)
	s.file("f", strings.Repeat("data", 10000), attrs{})
	blob := s.tar(filepath.Join(t.TempDir(), "l.tar.gz"), "gzip")
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blob, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := UnpackLayer(blob, filepath.Join(t.TempDir(), "l"), nil); err == nil {
		t.Error("a truncated gzip layer unpacked without error")
	}
}

// plainTar is a small tar made by Go, enough to check decompression.
func plainTar(t *testing.T) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	body := strings.Repeat("layer bytes ", 1000)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(tw, body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestOpenLayerDetectsCompression(t *testing.T) {
	raw := plainTar(t)
	var gz bytes.Buffer
	gw := gzip.NewWriter(&gz)
	if _, err := gw.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	zs := enc.EncodeAll(raw, nil)

	dir := t.TempDir()
	for name, blob := range map[string][]byte{"plain": raw, "gzip": gz.Bytes(), "zstd": zs} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, blob, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := openLayer(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := r.Close(); err != nil {
			t.Fatalf("%s: close: %v", name, err)
		}
		if !bytes.Equal(got, raw) {
			t.Errorf("%s: decompressed %d bytes, want the %d of the tar", name, len(got), len(raw))
		}
	}

	// The library path is the fallback where no zstd program is installed.
	p := filepath.Join(dir, "zstd")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := zstdLibrary(f, f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, raw) {
		t.Errorf("zstd library: %d bytes, %v", len(got), err)
	}
	r.Close()

	// A truncated stream must fail on either path, not end early.
	if err := os.WriteFile(p, zs[:len(zs)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if r, err := openLayer(p); err == nil {
		if _, err := io.ReadAll(r); err == nil {
			t.Error("truncated zstd read without error")
		}
		r.Close()
	}
}

// TestListingNames checks the parsing of GNU tar's own verbose listing of
// directories whose names its quoting escapes.
func TestListingNames(t *testing.T) {
	testimage.RequireTool(t, "tar")
	src := t.TempDir()
	names := []string{"a\nb", `c\d`, "tab\there", "caf\xc3\xa9", " lead", "two  spaces", `q"uote`, "x\x01y", "a -> b"}
	want := map[string]unix.Timespec{".": {Sec: 7}}
	for i, n := range names {
		if err := os.Mkdir(filepath.Join(src, n), 0o755); err != nil {
			t.Fatal(err)
		}
		mt := unix.Timespec{Sec: int64(1e9 + i), Nsec: int64(i * 100000001 % 1e9)}
		if err := unix.UtimesNano(filepath.Join(src, n), []unix.Timespec{mt, mt}); err != nil {
			t.Fatal(err)
		}
		want[n] = mt
	}
	if err := os.WriteFile(filepath.Join(src, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.UtimesNano(src, []unix.Timespec{{Sec: 7}, {Sec: 7}}); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(t.TempDir(), "t.tar")
	if b, err := exec.Command("tar", "--format=posix", "-C", src, "-cf", blob, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, b)
	}
	cmd := exec.Command("tar", "--quoting-style=escape", "--numeric-owner", "--full-time", "--utc", "-tvf", blob)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := readListing(bytes.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		var g []string
		for n, mt := range got {
			g = append(g, fmt.Sprintf("%q@%d.%09d", n, mt.Sec, mt.Nsec))
		}
		sort.Strings(g)
		t.Errorf("listing\n%s\nparsed as %s", out, g)
	}
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{
		"./": ".", ".": ".", "/": ".", "./etc/": "etc", "/usr/bin/x": "usr/bin/x", "a//b/": "a/b",
	} {
		if got := cleanName(in); got != want {
			t.Errorf("cleanName(%q) = %q, want %q", in, got, want)
		}
	}
}
