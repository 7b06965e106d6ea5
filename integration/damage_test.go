package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
)

// TestDamagedStoreUnderLiveMount damages the store of a live mount, an
// object removed, then the top layer's index truncated: what depends on
// them answers EIO and the server logs it, while it goes on serving
// everything else, and verify names both.
func TestDamagedStoreUnderLiveMount(t *testing.T) {
	requireRoot(t)
	var low, high []testimage.Entry
	body := func(p string) string { return "content of " + p + "\n" }
	for i := range 200 {
		p := fmt.Sprintf("low/f%03d", i)
		low = append(low, testimage.File(p, body(p)))
		p = fmt.Sprintf("high/f%03d", i)
		high = append(high, testimage.File(p, body(p)))
	}
	img := testimage.Image{Name: "damage", Layers: []testimage.Layer{{Entries: low}, {Entries: high}}}
	layout := writeFaultLayout(t, img)
	root := t.TempDir()
	mustRun(t, root, "import", layout)
	mnt := t.TempDir()
	srv := serveLogged(t, root, mnt, "damage")
	read := func(p string) error {
		b, err := os.ReadFile(filepath.Join(mnt, p))
		if err == nil && string(b) != body(p) {
			return fmt.Errorf("%s: read %q", p, b)
		}
		return err
	}
	// Looked up now, so the kernel holds their entries when the index
	// they came from is damaged.
	for _, p := range []string{"low/f001", "low/f002", "high/f001"} {
		if _, err := os.Stat(filepath.Join(mnt, p)); err != nil {
			t.Fatal(err)
		}
	}

	removeObject(t, root, body("low/f000"))
	if err := read("low/f000"); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a file whose object is gone: %v, want EIO", err)
	}
	for _, p := range []string{"low/f001", "low/f100", "high/f199"} {
		if err := read(p); err != nil {
			t.Errorf("after an object was removed: %v", err)
		}
	}
	waitFor(t, "the server logs the missing object", func() bool {
		return strings.Contains(srv.Log(), "object") && strings.Contains(srv.Log(), "no such file")
	})

	top := topLayerIndex(t, root, "damage")
	st, err := os.Stat(top)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(top, st.Size()/3); err != nil {
		t.Fatal(err)
	}
	var eio, ok int
	for i := range 200 {
		for _, dir := range []string{"low", "high"} {
			p := fmt.Sprintf("%s/f%03d", dir, i)
			switch err := read(p); {
			case err == nil:
				ok++
			case errors.Is(err, syscall.EIO):
				eio++
			default:
				t.Errorf("after the index was truncated: %v, want content or EIO", err)
			}
		}
	}
	if eio == 0 {
		t.Error("no read failed after the top layer's index was truncated")
	}
	// What the kernel already knows, and the lower layer's own contents,
	// are still served.
	for _, p := range []string{"low/f001", "low/f002"} {
		if err := read(p); err != nil {
			t.Errorf("file of the intact layer after the truncation: %v", err)
		}
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != nil || !srv.alive() {
		t.Fatalf("server gone after the truncation (%v):\n%s", err, srv.Log())
	}
	waitFor(t, "the server logs the truncated index's EIO", func() bool { return strings.Contains(srv.Log(), "EIO") })
	t.Logf("after truncation: %d reads answered EIO, %d served", eio, ok)

	r := run(t, root, "verify")
	if r.code != 1 || !strings.Contains(r.stderr, digestHex(body("low/f000"))) || !strings.Contains(r.stderr, filepath.Base(filepath.Dir(top))) {
		t.Errorf("verify of the damaged store: exit %d\n%s\nwant 1, naming the object and the layer", r.code, r.stderr)
	}
	// layers lists the damaged layer as not extracted, and says why.
	if r := run(t, root, "layers"); r.code != 0 || !strings.Contains(r.stderr, filepath.Base(filepath.Dir(top))) || !strings.Contains(r.stderr, "damaged layer index") {
		t.Errorf("layers of the damaged store: exit %d, stderr %q; want 0, naming the damaged index", r.code, r.stderr)
	}
}

// topLayerIndex is the index file of image name's highest layer.
func topLayerIndex(t *testing.T, root, name string) string {
	t.Helper()
	out := mustRun(t, root, "layers", "--no-trunc")
	var top string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "sha256:") && strings.Contains(line, name) {
			top = strings.TrimPrefix(f[0], "sha256:")
		}
	}
	if top == "" {
		t.Fatalf("no layer of %s in:\n%s", name, out)
	}
	return filepath.Join(root, "layers", "sha256", top, "index")
}

// TestLayerOpensBesideADamagedImage removes an image's manifest blob: a
// layer of it still opens by digest, with a warning naming the image.
func TestLayerOpensBesideADamagedImage(t *testing.T) {
	root := sampleStore(t)
	manifest := strings.TrimSpace(mustRun(t, root, "images", "-q", "--no-trunc"))
	layers := strings.Fields(mustRun(t, root, "layers", "-q", "--no-trunc"))
	if len(layers) == 0 {
		t.Fatal("no layers")
	}
	must(t, os.Remove(filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(manifest, "sha256:"))))
	r := run(t, root, "ls", layers[0])
	if r.code != 0 || r.stdout == "" || !strings.Contains(r.stderr, "image sample: ") || !strings.Contains(r.stderr, manifest) {
		t.Errorf("ls of a layer beside a damaged image: exit %d, stdout %q, stderr %q; want the listing and a warning naming the image", r.code, r.stdout, r.stderr)
	}
}

// TestShortObject cuts one file's object short in the store: every
// reader of the view refuses that file, naming its object, where it would
// otherwise give the file's size with fewer bytes (a read past them ends
// early, and build pads an EROFS file with zeros), and an -o file is left
// as it was.
func TestShortObject(t *testing.T) {
	requireRoot(t)
	var entries []testimage.Entry
	body := func(p string) string { return strings.Repeat("content of "+p+"\n", 5) }
	for i := range 20 {
		p := fmt.Sprintf("d/f%02d", i)
		entries = append(entries, testimage.File(p, body(p)))
	}
	img := testimage.Image{Name: "short", Layers: []testimage.Layer{{Entries: entries}}}
	root := t.TempDir()
	mustRun(t, root, "import", writeFaultLayout(t, img))
	victim := body("d/f07")
	must(t, os.Truncate(objectPath(root, victim), 3))
	named := func(stderr string) bool {
		return strings.Contains(stderr, digestHex(victim)) && strings.Contains(stderr, "damaged object")
	}

	for _, cmd := range [][]string{{"build", "short", "-o"}, {"export", "short", "-o"}} {
		out := filepath.Join(t.TempDir(), "out")
		must(t, os.WriteFile(out, []byte("kept\n"), 0o644))
		r := run(t, root, append(cmd, out)...)
		if b, err := os.ReadFile(out); r.code != 1 || !named(r.stderr) || err != nil || string(b) != "kept\n" {
			t.Errorf("%s over a short object: exit %d, stderr %q, -o file %q (%v); want exit 1 naming the damaged object, the file as it was", cmd[0], r.code, r.stderr, b, err)
		}
	}
	if r := run(t, root, "cat", "short", "/d/f07"); r.code != 1 || !named(r.stderr) {
		t.Errorf("cat of a short object: exit %d, stderr %q; want exit 1 naming the damaged object", r.code, r.stderr)
	}

	mnt := t.TempDir()
	srv := serveLogged(t, root, mnt, "short")
	if _, err := os.ReadFile(filepath.Join(mnt, "d/f07")); !errors.Is(err, syscall.EIO) {
		t.Errorf("read of a file whose object is short: %v, want EIO", err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "d/f08")); err != nil || string(b) != body("d/f08") {
		t.Errorf("read of an intact file beside it: %q, %v", b, err)
	}
	waitFor(t, "the server logs the damaged object", func() bool { return named(srv.Log()) })
}
