package archive

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/layerfs/layerfs/store"
)

// TestCompressedArchiveMembers reads members of a gzip tar too large to
// be kept from the index pass, in and out of archive order, several at a
// time and through a symlink, and refuses a link out of the archive.
func TestCompressedArchiveMembers(t *testing.T) {
	const n, size = 6, store.MaxMetadataSize + 1
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string][]byte{}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	add := func(h *tar.Header, body []byte) {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		body := make([]byte, size)
		for j := range body {
			body[j] = byte(rng.IntN(4))
		}
		want[name] = body
		add(&tar.Header{Name: "./" + name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg}, body)
	}
	add(&tar.Header{Name: "dir/layer.tar", Linkname: "../m3", Typeflag: tar.TypeSymlink}, nil)
	add(&tar.Header{Name: "zero", Linkname: "/dev/zero", Typeflag: tar.TypeSymlink}, nil)
	add(&tar.Header{Name: "up", Linkname: "../../etc/passwd", Typeflag: tar.TypeSymlink}, nil)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "a.tar.gz")
	if err := os.WriteFile(archive, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, closer, err := openSource(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	check := func(name, member string) {
		got, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else if !bytes.Equal(got, want[member]) {
			t.Errorf("%s: %d bytes, not those of %s", name, len(got), member)
		}
	}
	for _, order := range [][]int{{0, 1, 2, 3, 4, 5}, {5, 3, 1, 4, 0, 2}} {
		var wg sync.WaitGroup
		for _, i := range order {
			wg.Add(1)
			go func() {
				defer wg.Done()
				check(fmt.Sprintf("m%d", i), fmt.Sprintf("m%d", i))
			}()
		}
		wg.Wait()
	}
	check("dir/layer.tar", "m3")
	// A member left half read leaves its stream usable for later ones.
	f, err := fsys.Open("m1")
	if err != nil {
		t.Fatal(err)
	}
	io.CopyN(io.Discard, f, 100)
	f.Close()
	check("m4", "m4")
	for _, name := range []string{"zero", "up"} {
		if _, err := fsys.Open(name); err == nil || !strings.Contains(err.Error(), "outside the archive") {
			t.Errorf("open %s: %v, want a refusal naming the link out of the archive", name, err)
		}
	}
}
