package integration

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// sandbox is a directory holding a store and everything a bad-input case
// is given, so that a case can be checked to write nothing outside the
// store: the tree outside root must not change.
type sandbox struct {
	dir, root string
}

func newSandbox(t *testing.T) sandbox {
	dir := t.TempDir()
	sb := sandbox{dir: dir, root: filepath.Join(dir, "store")}
	mustRun(t, sb.root, "import", "../testdata/sample")
	return sb
}

// outside lists every path under the sandbox but in the store, with its
// type and size.
func (sb sandbox) outside(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(sb.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == sb.root {
			return filepath.SkipDir
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %v %d\n", p, info.Mode(), info.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// refused checks a failed command as README documents it: exit 1, one
// line on stderr starting "layerfs:" and saying want, nothing on stdout;
// or for a usage error exit 2, the message then the usage line. Then
// that nothing outside the store changed and the store verifies.
func (sb sandbox) refused(t *testing.T, before string, r result, want string) {
	t.Helper()
	msg, usage, _ := strings.Cut(r.stderr, "\nUsage: layerfs")
	if r.code == 2 {
		msg = strings.TrimSuffix(strings.TrimSuffix(msg, "\n"), "?")
		if usage == "" {
			t.Errorf("usage error without the usage line: %q", r.stderr)
		}
	}
	if (r.code != 1 && (r.code != 2 || usage == "")) || !strings.HasPrefix(r.stderr, "layerfs: ") ||
		(!strings.HasPrefix(msg, "layerfs: unknown command") && strings.Count(strings.TrimSpace(msg), "\n") > 0) ||
		!strings.Contains(msg, want) || r.stdout != "" {
		t.Errorf("exit %d, stdout %q, stderr %q; want exit 1 (2 with the usage line) and one line saying %q", r.code, r.stdout, r.stderr, want)
	}
	if after := sb.outside(t); after != before {
		t.Errorf("the command changed files outside the store:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	checkStore(t, sb.root, "after a refused command")
}

// TestBadArguments runs every command with missing and extra arguments,
// malformed and unknown digests and names, and paths that do not exist or
// are not what they should be.
func TestBadArguments(t *testing.T) {
	requireRoot(t)
	sb := newSandbox(t)
	file := filepath.Join(sb.dir, "file")
	empty := filepath.Join(sb.dir, "empty")
	missing := filepath.Join(sb.dir, "missing")
	if err := os.WriteFile(file, []byte("not an image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	unknown := "sha256:" + strings.Repeat("ab", 32)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"frobnicate"}, "unknown command"},
		{[]string{"--log-level", "loud", "images"}, "--log-level"},
		{[]string{"images", "--no-such-flag"}, "unknown flag"},
		{[]string{"import"}, "requires at least 1 arg"},
		{[]string{"import", missing}, "no such file or directory"},
		{[]string{"import", file}, "not a tar archive"},
		{[]string{"import", empty}, "neither an OCI image layout"},
		{[]string{"import", "--platform", "linux", "../testdata/sample"}, "want os/arch"},
		{[]string{"layers", "extra"}, "not found"},
		{[]string{"layers", "sample", "extra"}, "accepts at most 1 arg"},
		{[]string{"mounts", "extra"}, "unknown command"},
		{[]string{"gc", "extra"}, "unknown command"},
		{[]string{"inspect"}, "requires at least 1 arg"},
		{[]string{"inspect", "no-such-image"}, "not found"},
		{[]string{"inspect", "sha256:xyz"}, "not an image name, nor a digest"},
		{[]string{"inspect", "887de7c1b19"}, "not an image name, nor a digest"},
		{[]string{"inspect", unknown}, "not found"},
		{[]string{"rm"}, "requires at least 1 arg"},
		{[]string{"rm", "no-such-image"}, "not found"},
		{[]string{"rm", "sha256:f300a35215b6"}, "was not imported on its own (import --layer) but as a layer of sample; rm the images that use it"},
		{[]string{"rm", "sampel"}, `did you mean "sample"?`},
		{[]string{"serve", "sample"}, "serve needs --virtiofs SOCKET"},
		{[]string{"import", "--layer", empty}, "a directory, not a layer tar file"},
		{[]string{"verify", "no-such-image"}, "not found"},
		{[]string{"verify", unknown}, "not found"},
		{[]string{"mount"}, "requires at least 2 arg"},
		{[]string{"mount", "sample"}, "requires at least 2 arg"},
		{[]string{"mount", "sample", missing}, "no such file or directory"},
		{[]string{"mount", "sample", file}, "not a directory"},
		{[]string{"mount", "no-such-image", empty}, "not found"},
		{[]string{"mount", "--overlay", "sample", empty}, "--overlay shows one layer"},
		{[]string{"mount", "sha256:887de7c1b19c", "sha256:f300a35215b6", empty}, "is an image"},
		{[]string{"umount"}, "accepts 1 arg"},
		{[]string{"umount", empty, empty}, "accepts 1 arg"},
		{[]string{"umount", empty}, "not a layerfs mount"},
		{[]string{"umount", missing}, missing + ": does not exist"},
		{[]string{"umount", ""}, "MOUNTPOINT is empty"},
		{[]string{"mount", "sample", ""}, "MOUNTPOINT is empty"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			before := sb.outside(t)
			sb.refused(t, before, run(t, sb.root, c.args...), c.want)
		})
	}
	t.Logf("%d bad argument lists", len(cases))
}

// dockerDir writes a docker-archive as a directory holding one image whose
// only layer is the given bytes, with that layer's own digest as diff_id,
// so that whatever refuses it is the stream itself.
func dockerDir(t *testing.T, dir string, layer []byte) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["%s"]}}`, digest.FromBytes(layer))
	files := map[string]string{
		"manifest.json": `[{"Config":"config.json","RepoTags":["bad/stream:1"],"Layers":["layer.tar"]}]`,
		"config.json":   config,
		"layer.tar":     string(layer),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func gzipOf(b []byte) []byte {
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	zw.Write(b)
	zw.Close()
	return out.Bytes()
}

// TestHostileLayers imports every kind of layer docs/semantics.md refuses, and
// the hostile kinds it contains: each refusal is one clear line, exit 1,
// naming the entry or the stream's fault; each contained one imports; and
// neither writes or deletes anything outside the store, which verifies.
func TestHostileLayers(t *testing.T) {
	requireRoot(t)
	sb := newSandbox(t)
	img := func(name string, ls ...[]testimage.Entry) testimage.Image {
		im := testimage.Image{Name: name}
		for _, es := range ls {
			im.Layers = append(im.Layers, testimage.Layer{Entries: es})
		}
		return im
	}
	type hostile struct {
		name string
		src  func() string
		want string // "" when the layer is contained: it must import
	}
	layout := func(im testimage.Image) func() string {
		return func() string { return writeFaultLayout(t, im) }
	}
	var cases []hostile
	for _, c := range testimage.RefusedCases() {
		entry := c.BadEntry
		if entry != "./" {
			entry = strings.TrimSuffix(entry, "/")
		}
		cases = append(cases, hostile{c.Name, layout(testimage.Image{Name: c.Name, Layers: c.Layers}), fmt.Sprintf("entry %q", entry)})
	}
	long := testimage.Tar(t, testimage.File("a", strings.Repeat("x", 4096)))
	bigHeader := testimage.Tar(t, testimage.File("claims-more", strings.Repeat("y", 1<<20)))
	corrupt := gzipOf(long)
	corrupt[len(corrupt)/2] ^= 0xff
	checksum := bytes.Clone(long)
	checksum[148] ^= 0x07 // the header's checksum field
	stream := func(name string, b []byte) func() string {
		return func() string { return dockerDir(t, filepath.Join(sb.dir, "src", name), b) }
	}
	cases = append(cases,
		hostile{"symlink-escape-absolute", layout(img("x", []testimage.Entry{testimage.Symlink("evil", "/"), testimage.File("evil/escaped", "x")})), `entry "evil/escaped"`},
		hostile{"symlink-escape-relative", layout(img("x", []testimage.Entry{testimage.Symlink("up", "../../../.."), testimage.File("up/escaped", "x")})), `entry "up/escaped"`},
		hostile{"hardlink-to-host-file", layout(img("x", []testimage.Entry{testimage.Hardlink("pw", "/etc/passwd")})), `entry "pw"`},
		hostile{"hardlink-cycle", layout(img("x", []testimage.Entry{testimage.Hardlink("a", "b"), testimage.Hardlink("b", "a")})), "hardlink cycle"},
		hostile{"hardlink-to-itself", layout(img("x", []testimage.Entry{testimage.Hardlink("a", "a")})), "hardlink cycle"},
		hostile{"hardlink-to-dir", layout(img("x", []testimage.Entry{testimage.Dir("d", 0o755), testimage.Hardlink("h", "d")})), "hardlink to directory"},
		hostile{"whiteout-escape-by-path", layout(img("x", []testimage.Entry{testimage.File("d/../../.wh.etc", "")})), "leaves the layer"},
		hostile{"truncated-tar", stream("truncated-tar", long[:1024]), "truncated stream"},
		hostile{"header-claims-more", stream("header-claims-more", bigHeader[:8192]), "truncated stream"},
		hostile{"truncated-gzip", stream("truncated-gzip", gzipOf(long)[:40]), "unexpected EOF"},
		hostile{"corrupt-gzip", stream("corrupt-gzip", corrupt), "layer"},
		hostile{"bad-header-checksum", stream("bad-header-checksum", checksum), "invalid tar header"},
		hostile{"garbage", stream("garbage", bytes.Repeat([]byte("garbage!"), 200)), "layer"},
		hostile{"xz", stream("xz", append([]byte{0xfd, '7', 'z', 'X', 'Z', 0}, long...)), "layers compressed with xz are not supported"},
		// Contained: harmless in the index, shown by the mount as they are.
		hostile{"symlink-to-host-file", layout(img("x", []testimage.Entry{testimage.Symlink("shadow", "/etc/shadow"), testimage.Symlink("up", "../../..")})), ""},
		hostile{"devices-setuid-caps", layout(img("x", []testimage.Entry{testimage.CharDev("mem", 1, 1), testimage.BlockDev("sda", 8, 0), testimage.File("suid", "x").WithMode(0o4755), testimage.File("cap", "x").WithXattr("security.capability", testimage.FileCapability(21))})), ""},
		hostile{"whiteout-of-host-path", layout(img("x", []testimage.Entry{testimage.File("a", "a")}, []testimage.Entry{testimage.Whiteout("etc", "passwd"), testimage.Opaque("usr")})), ""},
		hostile{"empty-layer", stream("empty-layer", nil), ""},
	)
	// unextracted are the layer directories with no index: a refused
	// layer leaves none (the layers of its image before it may stay,
	// extracted, until gc).
	unextracted := func() []string {
		dir := filepath.Join(sb.root, "layers", "sha256")
		es, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var dirs []string
		for _, e := range es {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "index")); e.IsDir() && err != nil {
				dirs = append(dirs, e.Name())
			}
		}
		return dirs
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.src()
			before := sb.outside(t)
			r := run(t, sb.root, "import", src)
			if c.want != "" {
				sb.refused(t, before, r, c.want)
				if out := mustRun(t, sb.root, "images"); strings.Count(out, "\n") != 2 {
					t.Errorf("a refused image is listed:\n%s", out)
				}
				if left := unextracted(); len(left) > 0 {
					t.Errorf("layer directories with no index left: %v", left)
				}
				return
			}
			if r.code != 0 {
				t.Fatalf("contained layer refused: %s", r.stderr)
			}
			if after := sb.outside(t); after != before {
				t.Errorf("import changed files outside the store:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			checkStore(t, sb.root, "after a contained import")
		})
	}
	t.Logf("%d hostile layers", len(cases))
}

// TestUnusableRoot points the store at a root that cannot hold it: a
// read-only filesystem, a regular file, and a full disk. Each is a clear
// error, and the full disk leaves nothing of the import behind.
func TestUnusableRoot(t *testing.T) {
	requireRoot(t)
	ro := t.TempDir()
	if err := unix.Mount("tmpfs", ro, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(ro, unix.MNT_DETACH)
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// An empty directory is an empty store to a read-only command, and to
	// gc, which finds nothing to free there; neither creates anything.
	// Anything that is not a directory is not a store.
	if r := run(t, ro, "images", "-q"); r.code != 0 || r.stdout != "" {
		t.Errorf("images on the empty read-only root: exit %d, %q %q; want 0 and nothing", r.code, r.stdout, r.stderr)
	}
	if r := run(t, ro, "gc"); r.code != 0 || !strings.HasPrefix(r.stdout, "removed 0 blobs, 0 layers, 0 objects") {
		t.Errorf("gc on the empty read-only root: exit %d, %q %q; want 0 and nothing removed", r.code, r.stdout, r.stderr)
	}
	for _, c := range []struct {
		root, want string
		args       [][]string
	}{
		{ro, "read-only file system", [][]string{{"import", "../testdata/sample"}}},
		{file, "is not a layerfs store", [][]string{{"import", "../testdata/sample"}, {"images"}, {"gc"}}},
	} {
		for _, args := range c.args {
			r := run(t, c.root, args...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "layerfs: ") || !strings.Contains(r.stderr, c.want) {
				t.Errorf("%s on root %s: exit %d, %q; want 1 and %q", args[0], c.root, r.code, r.stderr, c.want)
			}
		}
	}

	full := tmpfsDir(t, 2<<20)
	// An import makes the store even when its source is missing.
	if r := run(t, full, "import", filepath.Join(t.TempDir(), "missing")); r.code != 1 {
		t.Fatalf("import of a missing layout: exit %d, %q", r.code, r.stderr)
	}
	mustRun(t, full, "gc")
	base := storeFiles(t, full)
	big := writeFaultLayout(t, faultImage("too-big", 7, testimage.Gzip))
	r := run(t, full, "import", big)
	if r.code != 1 || !strings.Contains(r.stderr, "no space left on device") {
		t.Fatalf("import onto a full disk: exit %d, %q; want 1 and no space", r.code, r.stderr)
	}
	t.Logf("full disk: %s", strings.TrimSpace(r.stderr))
	// What is left is complete (layers the import finished before the
	// disk filled, kept for a rerun) or nothing: gc takes the store back
	// to exactly what it was.
	if left, _ := os.ReadDir(filepath.Join(full, "tmp")); len(left) > 0 {
		t.Errorf("the failed import left %d temp files", len(left))
	}
	checkStore(t, full, "after the full disk")
	if out := mustRun(t, full, "images"); strings.Count(out, "\n") != 1 {
		t.Errorf("image listed after a failed import:\n%s", out)
	}
	mustRun(t, full, "gc")
	sameFiles(t, "full disk, then gc", base, storeFiles(t, full))
}
