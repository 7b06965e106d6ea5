package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// timedRun runs layerfs like run, but with extra environment, failing the
// test when it has not finished within limit; it also returns the peak
// resident set of the process and how long it ran. The peak is VmHWM,
// read while the process runs: rusage's maxrss would count the test
// process's own memory, which the child shares until it executes.
func timedRun(t testing.TB, limit time.Duration, env []string, root string, args ...string) (result, int64, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, layerfsBin(t), append([]string{"--root", root}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("layerfs %s: %v", strings.Join(args, " "), err)
	}
	done := make(chan struct{})
	var peak int64
	go func() {
		defer close(done)
		status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
		for ctx.Err() == nil {
			if hwm := vmHWM(status); hwm > peak {
				peak = hwm
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	err := cmd.Wait()
	took := time.Since(start)
	cancel()
	<-done
	if took >= limit {
		t.Fatalf("layerfs %s: still running after %s", strings.Join(args, " "), limit)
	}
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("layerfs %s: %v", strings.Join(args, " "), err)
	}
	return r, peak, took
}

// vmHWM is the peak resident set in a /proc/PID/status file of layerfs,
// 0 once the process is gone or while it is still the test's own child
// that has not executed layerfs yet.
func vmHWM(status string) int64 {
	b, err := os.ReadFile(status)
	if err != nil || !strings.HasPrefix(string(b), "Name:\tlayerfs\n") {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(v), " kB"), &kb)
			return kb << 10
		}
	}
	return 0
}

// emptyFiles generates dirs directories of perDir empty files each.
func emptyFiles(dirs, perDir int) func(tw *tar.Writer) error {
	return func(tw *tar.Writer) error {
		for d := 0; d < dirs; d++ {
			dir := fmt.Sprintf("d%04d", d)
			if err := testimage.Dir(dir, 0o755).AddTo(tw); err != nil {
				return err
			}
			for f := 0; f < perDir; f++ {
				if err := testimage.File(fmt.Sprintf("%s/f%07d", dir, f), "").AddTo(tw); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// TestImportMemoryIsBounded imports layers of 2,000,000 entries and of one
// directory of 1,000,000 in a child process whose peak resident set must
// stay under 100 MiB, then checks the mount against GNU tar's listing of
// the same layer: the entry count, and a sample of the entries.
func TestImportMemoryIsBounded(t *testing.T) {
	requireRoot(t)
	tarTool := testimage.RequireTool(t, "tar")
	const maxRSS = 100 << 20
	for _, c := range []struct {
		name         string
		dirs, perDir int
	}{
		{"2m-entries", 2000, 1000},
		{"1m-one-directory", 1, 1000000},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := writeImage(t, testimage.Image{Name: c.name, Layers: []testimage.Layer{{Stream: emptyFiles(c.dirs, c.perDir)}}})
			root := t.TempDir()
			r, peak, took := timedRun(t, 5*time.Minute, nil, root, "import", img.layout)
			if r.code != 0 {
				t.Fatalf("import: exit %d: %s", r.code, r.stderr)
			}
			t.Logf("import of %d entries: %s, peak RSS %.1f MiB", c.dirs*(c.perDir+1), took.Round(time.Millisecond), float64(peak)/(1<<20))
			if peak <= 0 || peak > maxRSS {
				t.Errorf("import peaked at %d bytes resident, want under %d", peak, maxRSS)
			}
			out, err := exec.Command(tarTool, "--quoting-style=literal", "-tzf", img.blobs[0]).Output()
			if err != nil {
				t.Fatalf("tar -t: %v", err)
			}
			names := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
			if len(names) != c.dirs*(c.perDir+1) {
				t.Fatalf("GNU tar lists %d entries, the generator wrote %d", len(names), c.dirs*(c.perDir+1))
			}
			mnt := mountDaemon(t, root, img.ref)
			top, err := os.ReadDir(mnt)
			if err != nil || len(top) != c.dirs {
				t.Fatalf("mount root lists %d entries (%v), GNU tar %d directories", len(top), err, c.dirs)
			}
			// A sample rather than a walk of millions of entries: about
			// 500, spread evenly over GNU tar's listing, are checked with
			// lstat, and the last entry's directory is listed whole.
			seen := 0
			for i := 0; i < len(names); i += len(names)/500 + 1 {
				name := strings.TrimSuffix(names[i], "/")
				st, err := os.Lstat(filepath.Join(mnt, name))
				if err != nil {
					t.Fatalf("GNU tar lists %s, the mount: %v", name, err)
				}
				if wantDir := strings.HasSuffix(names[i], "/"); st.IsDir() != wantDir || (!wantDir && st.Size() != 0) {
					t.Fatalf("%s: mode %v size %d, GNU tar lists %q", name, st.Mode(), st.Size(), names[i])
				}
				seen++
			}
			last := strings.TrimSuffix(names[len(names)-1], "/")
			d, err := os.Open(filepath.Join(mnt, filepath.Dir(last)))
			if err != nil {
				t.Fatal(err)
			}
			inDir, err := d.Readdirnames(-1)
			d.Close()
			if err != nil || len(inDir) != c.perDir {
				t.Fatalf("%s lists %d entries (%v), GNU tar %d", filepath.Dir(last), len(inDir), err, c.perDir)
			}
			t.Logf("%d sampled entries and a directory of %d match GNU tar's listing", seen, len(inDir))
		})
	}
}

// sparseFormats are the ways GNU tar writes a sparse file: as a member of
// type 'S' in its own format, its default, and in each PAX sparse format.
var sparseFormats = []struct {
	name string
	args []string
}{
	{"gnu", []string{"--format=gnu"}},
	{"posix-0.0", []string{"--format=posix", "--sparse-version=0.0"}},
	{"posix-0.1", []string{"--format=posix", "--sparse-version=0.1"}},
	{"posix-1.0", []string{"--format=posix", "--sparse-version=1.0"}},
}

// sparseLayer has GNU tar write, with formatArgs, a layer of two files of
// size bytes: "sparse", mostly a hole, with a few bytes of data at its
// start, at unaligned offsets inside and at its end, more runs of data
// than a GNU header's sparse map holds; and "hole", a hole alone.
func sparseLayer(t testing.TB, formatArgs []string, size int64) []byte {
	t.Helper()
	tarTool := testimage.RequireTool(t, "tar")
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	type run struct {
		off  int64
		data string
	}
	runs := []run{{0, "head"}, {size/3 + 123, strings.Repeat("middle ", 700)}, {size - 4, "tail"}}
	for i := int64(1); i <= 30; i++ {
		runs = append(runs, run{size/2 + i*(size/64) + i, fmt.Sprintf("run %d", i)})
	}
	for _, r := range runs {
		if _, err := f.WriteAt([]byte(r.data), r.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	hole := filepath.Join(dir, "hole")
	if err := os.WriteFile(hole, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(hole, size); err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{"--sparse"}, formatArgs...), "-cf", "-", "-C", dir, "sparse", "hole")
	out, err := exec.Command(tarTool, args...).Output()
	if err != nil {
		t.Fatalf("tar %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// allocated is the disk space the files under dir take.
func allocated(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		total += info.Sys().(*syscall.Stat_t).Blocks * 512
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// TestSparseFileMatchesGNUTar imports a layer holding sparse files of
// 48 MiB in each format GNU tar writes them: the mount shows the entries,
// bytes and sizes GNU tar extracts from the same layer, and the store
// keeps the holes.
func TestSparseFileMatchesGNUTar(t *testing.T) {
	requireRoot(t)
	tarTool := testimage.RequireTool(t, "tar")
	const size = 48 << 20
	for _, f := range sparseFormats {
		t.Run(f.name, func(t *testing.T) {
			layer := sparseLayer(t, f.args, size)
			src := dockerDir(t, filepath.Join(t.TempDir(), "src"), layer)
			ref := t.TempDir()
			if out, err := exec.Command(tarTool, "-xf", filepath.Join(src, "layer.tar"), "-C", ref).CombinedOutput(); err != nil {
				t.Fatalf("tar -x: %v\n%s", err, out)
			}
			want := walk(t, ref)
			if want["sparse"].Size != size || want["hole"].Size != size {
				t.Fatalf("GNU tar extracts files of %d and %d bytes, want %d", want["sparse"].Size, want["hole"].Size, size)
			}
			root := t.TempDir()
			mustRun(t, root, "import", src)
			requireSame(t, "the mount", want, walk(t, mountDaemon(t, root, "docker.io/bad/stream:1")), oracle.IgnoreRootAttrs())
			if used := allocated(t, filepath.Join(root, "objects")); used > 1<<20 {
				t.Errorf("objects take %d bytes on disk for files of a few kilobytes of data in %d", used, 2*size)
			}
			checkStore(t, root, "after a sparse import")
		})
	}
}

// smallTmpfs mounts a 256 MiB tmpfs for a store, unmounted when the test
// ends, lazily if it must.
func smallTmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// gzipZeros returns a gzip stream of head, n zero bytes, then tail.
func gzipZeros(t testing.TB, head []byte, n int64, tail []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	zw, err := gzip.NewWriterLevel(&out, gzip.BestCompression)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(head)
	zeros := make([]byte, 1<<20)
	for ; n > 0; n -= int64(len(zeros)) {
		zw.Write(zeros[:min(n, int64(len(zeros)))])
	}
	zw.Write(tail)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestExpansionBombsRefused imports, into a store on a 256 MiB tmpfs,
// layers of a few kilobytes that expand to 128 GiB (sparse files in each
// format GNU tar writes them) or of 2 MiB that gzip expands 1000 times (a file of
// zeros, and a stream of zeros): each is refused, naming the layer, before
// the filesystem fills; the store verifies and tmp/ is empty. With the
// limit off, a sparse file larger than the filesystem is stored sparse.
func TestExpansionBombsRefused(t *testing.T) {
	requireRoot(t)
	root := filepath.Join(smallTmpfs(t), "store")
	mustRun(t, root, "import", "../testdata/sample")
	const bomb = 2 << 30
	var fileHeader bytes.Buffer // the header alone: the zeros follow, then the end
	if err := tar.NewWriter(&fileHeader).WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Mode: 0o644, Size: bomb, ModTime: testimage.DefaultModTime}); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"gzip-file":   gzipZeros(t, fileHeader.Bytes(), bomb+1024, nil),
		"gzip-stream": gzipZeros(t, nil, bomb, nil),
	}
	for _, f := range sparseFormats {
		cases["sparse-"+f.name] = sparseLayer(t, f.args, 64<<30)
	}
	check := func(t *testing.T) {
		t.Helper()
		checkStore(t, root, "after a bomb")
		if left, err := os.ReadDir(filepath.Join(root, "tmp")); err != nil || len(left) > 0 {
			t.Errorf("tmp/ holds %d entries (%v)", len(left), err)
		}
		var fs unix.Statfs_t
		if err := unix.Statfs(root, &fs); err != nil {
			t.Fatal(err)
		}
		if used := int64(fs.Blocks-fs.Bfree) * fs.Bsize; used > 32<<20 {
			t.Errorf("the store's filesystem has %d bytes used", used)
		}
	}
	for name, layer := range cases {
		t.Run(name, func(t *testing.T) {
			t.Logf("layer of %d bytes", len(layer))
			src := dockerDir(t, filepath.Join(t.TempDir(), "src"), layer)
			r, _, took := timedRun(t, 2*time.Minute, nil, root, "import", src)
			t.Logf("refused in %s: %s", took.Round(time.Millisecond), strings.TrimSpace(r.stderr))
			if r.code != 1 || !strings.Contains(r.stderr, "expands beyond the limit") || !strings.Contains(r.stderr, "layer sha256:") {
				t.Errorf("exit %d, stderr %q; want exit 1 and a refusal naming the layer", r.code, r.stderr)
			}
			check(t)
		})
	}
	t.Run("sparse-stored-sparse", func(t *testing.T) {
		src := dockerDir(t, filepath.Join(t.TempDir(), "src"), sparseLayer(t, sparseFormats[len(sparseFormats)-1].args, 1<<30))
		r, _, took := timedRun(t, 2*time.Minute, []string{"LAYERFS_EXPANSION_LIMIT=off"}, root, "import", src)
		if r.code != 0 {
			t.Fatalf("import with the limit off: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("1 GiB sparse file imported in %s", took.Round(time.Millisecond))
		if r, _, _ := timedRun(t, 2*time.Minute, nil, root, "verify"); r.code != 0 {
			t.Fatalf("verify: exit %d: %s", r.code, r.stderr)
		}
		if left, err := os.ReadDir(filepath.Join(root, "tmp")); err != nil || len(left) > 0 {
			t.Errorf("tmp/ holds %d entries (%v)", len(left), err)
		}
		if used := allocated(t, filepath.Join(root, "objects")); used > 8<<20 {
			t.Errorf("objects take %d bytes on disk", used)
		}
	})
}

// TestHardlinkChains imports a layer of a 20,000-link chain (each link
// naming the one before) and compares it with kernel overlayfs; then an
// image of 200 layers, each linking the file of the layer beneath, which
// it compares with umoci's unpack. Their import times are logged; make
// bench measures them.
func TestHardlinkChains(t *testing.T) {
	requireRoot(t)
	t.Run("one-layer", func(t *testing.T) {
		const links = 20000
		es := []testimage.Entry{testimage.File("f", "chain\n").WithMode(0o640).WithOwner(3, 4)}
		for i := 1; i <= links; i++ {
			prev := fmt.Sprintf("l%05d", i-1)
			if i == 1 {
				prev = "f"
			}
			es = append(es, testimage.Hardlink(fmt.Sprintf("l%05d", i), prev))
		}
		img := writeImage(t, testimage.Image{Name: "chain", Layers: []testimage.Layer{{Entries: es}}})
		root := t.TempDir()
		r, _, took := timedRun(t, 2*time.Minute, nil, root, "import", img.layout)
		if r.code != 0 {
			t.Fatalf("import: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("a chain of %d links imported in %s", links, took.Round(time.Millisecond))
		requireSame(t, "chain", oracleTree(t, img.blobs), walk(t, mountDaemon(t, root, img.ref)))
	})
	t.Run("across-layers", func(t *testing.T) {
		const layers = 200
		img := testimage.Image{Name: "chain-layers", Layers: []testimage.Layer{{Entries: []testimage.Entry{
			testimage.File("f000", "chain\n").WithMode(0o4750).WithOwner(5, 6).WithXattr("user.k", "v"),
		}}}}
		for i := 1; i < layers; i++ {
			img.Layers = append(img.Layers, testimage.Layer{Entries: []testimage.Entry{
				testimage.Hardlink(fmt.Sprintf("f%03d", i), fmt.Sprintf("f%03d", i-1)),
			}})
		}
		li := writeImage(t, img)
		root := t.TempDir()
		r, _, took := timedRun(t, 2*time.Minute, nil, root, "import", li.layout)
		if r.code != 0 {
			t.Fatalf("import: exit %d: %s", r.code, r.stderr)
		}
		t.Logf("%d layers of chained links imported in %s", layers, took.Round(time.Millisecond))
		bundle := filepath.Join(t.TempDir(), "bundle")
		testimage.RunTool(t, "umoci", "unpack", "--image", li.layout+":"+li.ref, bundle)
		want := walk(t, filepath.Join(bundle, "rootfs"))
		got := walk(t, mountDaemon(t, root, li.ref))
		// umoci makes every name one file; a view shows each link to a
		// lower layer as a file of its own (README, Decisions).
		for p, e := range want {
			if g, ok := got[p]; ok && e.Type == got[p].Type {
				e.Nlink, e.HardlinkID = g.Nlink, g.HardlinkID
				want[p] = e
			}
		}
		requireSame(t, "chain across layers", want, got, oracle.IgnoreRootAttrs())
	})
}

// TestZstdWindowBounded imports a zstd layer of a few kilobytes whose
// frame asks for a 512 MiB window (zstd --long=29 writes such frames;
// the zstd tool refuses to decode them unless told to) over 300 MiB of
// zeros: a decoder keeps a window of what it decoded, so granting it
// would hold 300 MiB of memory for a layer of kilobytes. It must be
// refused, naming the window and the layer, within 100 MiB resident.
func TestZstdWindowBounded(t *testing.T) {
	requireRoot(t)
	var layer bytes.Buffer
	zw, err := zstd.NewWriter(&layer, zstd.WithWindowSize(512<<20), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	diffID := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, diffID))
	const size = 300 << 20
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Mode: 0o644, Size: size, ModTime: testimage.DefaultModTime}); err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for n := 0; n < size; n += len(zeros) {
		if _, err := tw.Write(zeros); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	src := dockerDir(t, filepath.Join(t.TempDir(), "src"), layer.Bytes())
	config := fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%x"]}}`, diffID.Sum(nil))
	if err := os.WriteFile(filepath.Join(src, "config.json"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	r, peak, _ := timedRun(t, 2*time.Minute, nil, root, "import", src)
	t.Logf("layer of %d bytes: exit %d, peak RSS %.1f MiB, stderr %q", layer.Len(), r.code, float64(peak)/(1<<20), r.stderr)
	if r.code != 1 || !strings.Contains(r.stderr, "window") || !strings.Contains(r.stderr, "layer sha256:") {
		t.Errorf("exit %d, stderr %q; want exit 1 and a refusal naming the window and the layer", r.code, r.stderr)
	}
	if peak <= 0 || peak > 100<<20 {
		t.Errorf("import peaked at %d bytes resident, want under %d", peak, 100<<20)
	}
}
