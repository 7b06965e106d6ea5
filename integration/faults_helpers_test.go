package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// faultImage is an image big enough that an import runs long enough to be
// killed at many points: many small files, some larger than store's
// in-memory limit, a whiteout, a hardlink, all over three layers.
func faultImage(name string, seed byte, c testimage.Compression) testimage.Image {
	big := func(n int, b byte) string {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i*7) ^ b
		}
		return string(buf)
	}
	ls := testimage.Synthetic(2, 600, c)
	ls[0].Entries = []testimage.Entry{
		testimage.File("big/one", big(3<<20, seed)),
		testimage.File("big/two", big(2<<20+17, seed+1)),
		testimage.Hardlink("big/two-again", "big/two"),
	}
	ls = append(ls, testimage.Layer{Compression: c, Entries: []testimage.Entry{
		testimage.Whiteout("big", "one"),
		testimage.File("big/three", big(1<<20+5, seed+2)),
		testimage.File(fmt.Sprintf("seed-%d", seed), "distinct\n"),
	}})
	return testimage.Image{Name: name, Layers: ls}
}

// writeFaultLayout writes images as an OCI layout in a new directory.
func writeFaultLayout(t testing.TB, images ...testimage.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	if _, err := testimage.WriteLayout(dir, images...); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkStore fails t unless the store at root verifies and every layer
// index present in it, whether an image uses it or not, is complete: its
// checksum holds and every object it names is there with its content.
// This is what "a layer is extracted exactly when its index exists" asks.
func checkStore(t testing.TB, root, when string) {
	t.Helper()
	if r := run(t, root, "verify"); r.code != 0 {
		t.Fatalf("%s: verify: exit %d\n%s", when, r.code, r.stderr)
	}
	idxs, _ := filepath.Glob(filepath.Join(root, "layers", "sha256", "*", "index"))
	for _, p := range idxs {
		r, err := index.Open(p, true)
		if err != nil {
			t.Fatalf("%s: a listed layer's index is incomplete: %v", when, err)
		}
		for i := uint32(0); i < uint32(r.Len()); i++ {
			e, err := r.Entry(i)
			if err != nil {
				t.Fatalf("%s: %s: %v", when, p, err)
			}
			if e.Object == "" {
				continue
			}
			hex := e.Object.Encoded()
			b, err := os.ReadFile(filepath.Join(root, "objects", "sha256", hex[:2], hex))
			if err != nil || digest.FromBytes(b) != e.Object {
				t.Fatalf("%s: layer %s names object %s, which is missing or damaged (%v)", when, filepath.Base(filepath.Dir(p)), e.Object, err)
			}
		}
		r.Close()
	}
}

// storeFiles lists the regular files under root, relative path to size.
func storeFiles(t testing.TB, root string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func totalSize(files map[string]int64) int64 {
	var n int64
	for _, s := range files {
		n += s
	}
	return n
}

// sameFiles fails t unless got lists the same files of the same sizes as
// want, naming the differences.
func sameFiles(t testing.TB, when string, want, got map[string]int64) {
	t.Helper()
	var diffs []string
	for p, s := range want {
		if g, ok := got[p]; !ok || g != s {
			diffs = append(diffs, fmt.Sprintf("%s: %d bytes, want %d (present %v)", p, g, s, ok))
		}
	}
	for p, s := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: %d bytes, not in a clean store", p, s))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Fatalf("%s: store differs from a clean one (%d bytes vs %d):\n%s", when, totalSize(got), totalSize(want), strings.Join(diffs, "\n"))
	}
}

// tmpfsDir mounts a new tmpfs of size bytes for the test. Stores that are
// killed, raced or filled live on one: syncfs there costs nothing, while
// on a shared disk it waits for every other writer's data, and what a
// SIGKILL can leave does not depend on the filesystem.
func tmpfsDir(t testing.TB, size int64) string {
	t.Helper()
	requireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0755", size)); err != nil {
		t.Fatalf("mount tmpfs at %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
	return dir
}

// fgServer is a foreground `layerfs mount` this test started: its process
// and everything it logged.
type fgServer struct {
	cmd  *exec.Cmd
	mnt  string
	mu   sync.Mutex
	log  bytes.Buffer
	done chan struct{}
}

func (s *fgServer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Write(p)
}

// Log is what the server has written to stderr so far.
func (s *fgServer) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// alive reports whether the server process is still running.
func (s *fgServer) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// serveLogged runs `layerfs mount args... mnt` in the foreground and returns once
// the mount answers; the mount is undone and the server waited for when
// the test ends.
func serveLogged(t testing.TB, root, mnt string, args ...string) *fgServer {
	t.Helper()
	s := &fgServer{mnt: mnt, done: make(chan struct{})}
	s.cmd = exec.Command(layerfsBin(t), append(append([]string{"--root", root, "--log-level", "info", "mount"}, args...), mnt)...)
	s.cmd.Stderr = s
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		if s.alive() {
			unmount(t, root, mnt)
		}
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			s.cmd.Process.Kill()
			t.Errorf("server of %s did not exit after its unmount", mnt)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(s.Log(), "mounted") {
		if !s.alive() || time.Now().After(deadline) {
			t.Fatalf("mount %s did not come up:\n%s", mnt, s.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

// digestHex is the hex sha256 of s.
func digestHex(s string) string { return digest.FromString(s).Encoded() }

// objectPath is where a store keeps the content body.
func objectPath(root, body string) string {
	hex := digestHex(body)
	return filepath.Join(root, "objects", "sha256", hex[:2], hex)
}

// removeObject removes every name the store has for the object of body,
// its name under objects/ and each layer's link to it, so that no
// file handle opens it either.
func removeObject(t testing.TB, root, body string) {
	t.Helper()
	links, err := filepath.Glob(filepath.Join(root, "layers", "sha256", "*", "links", digestHex(body)))
	if err != nil || len(links) == 0 {
		t.Fatalf("no layer links the object of %q: %v", body, err)
	}
	for _, name := range append(links, objectPath(root, body)) {
		if err := os.Remove(name); err != nil {
			t.Fatal(err)
		}
	}
}
