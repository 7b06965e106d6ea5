package store

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store/layer"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

func TestCheckDigest(t *testing.T) {
	for d, want := range map[digest.Digest]string{
		digest.Digest("sha512:" + strings.Repeat("ab", 64)): "sha512 digests are not supported",
		digest.Digest("sha256:" + strings.Repeat("ab", 32)): "",
		digest.Digest("sha256:abc"):                         "invalid",
	} {
		err := checkDigest(d)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("checkDigest(%s) = %v, want %q", d, err, want)
		}
	}
}

// TestDirectBlob stages a blob the way an import does, through
// layer.Behind in pieces of uneven size, and checks that the committed
// file holds the stream whole, and that on ext4, where O_DIRECT works, its
// bytes did not go through the page cache.
func TestDirectBlob(t *testing.T) {
	s, err := OpenForWriting(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	src := make([]byte, 5<<20+123)
	rand.NewChaCha8([32]byte{1}).Read(src)
	w, err := s.stageDirect("blob")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	behind := layer.Behind(w)
	for rest := src; len(rest) > 0; {
		n := min(len(rest), 1+len(rest)%70001)
		if _, err := behind.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	if err := behind.Close(); err != nil {
		t.Fatal(err)
	}
	want := digest.FromBytes(src)
	final := filepath.Join(s.path(tmpDir), "committed")
	if err := w.Commit(final, int64(len(src)), want); err != nil {
		t.Fatal(err)
	}

	var fs unix.Statfs_t
	if err := unix.Statfs(final, &fs); err != nil {
		t.Fatal(err)
	}
	ext4 := fs.Type == unix.EXT4_SUPER_MAGIC
	if ext4 {
		// Written through the page cache, every page would still be
		// there after the commit's fsync; written straight, only the
		// tail's.
		if n := residentPages(t, final, len(src)); n > 1 {
			t.Errorf("%d pages of a blob staged with O_DIRECT are in the page cache", n)
		}
	}
	got, err := os.ReadFile(final)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, src) {
		t.Fatalf("committed blob has %d bytes hashing %s, want %d hashing %s", len(got), digest.FromBytes(got), len(src), want)
	}
	if !ext4 {
		testimage.Unavailable(t, "file system %#x of the test's directory is not ext4: the page cache was not checked", fs.Type)
	}
}

func residentPages(t *testing.T, name string, size int) int {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (size+os.Getpagesize()-1)/os.Getpagesize())
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}
