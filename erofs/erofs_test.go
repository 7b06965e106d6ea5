package erofs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	goerofs "github.com/erofs/go-erofs"
	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
)

// sampleSource is a small tree with a hardlinked pair, a symlink, a device
// and an overlay xattr, as a view would give it.
func sampleSource() fstest.MapFS {
	shared := []byte("shared bytes\n")
	return fstest.MapFS{
		".":        {Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}},
		"d":        {Mode: fs.ModeDir | 0o700, Sys: &view.Attr{UID: 7, Mtime: 5}},
		"d/a":      {Data: shared, Mode: 0o4755, Sys: &view.Attr{Nlink: 2, Ino: 42, Object: digest.FromBytes(shared)}},
		"b":        {Data: shared, Mode: 0o4755, Sys: &view.Attr{Nlink: 2, Ino: 42, Object: digest.FromBytes(shared)}},
		"empty":    {Mode: 0o600, Sys: &view.Attr{Xattrs: []view.Xattr{{Name: "trusted.overlay.opaque", Value: "y"}}}},
		"link":     {Data: []byte("d/a"), Mode: fs.ModeSymlink | 0o777, Sys: &view.Attr{}},
		"dev":      {Mode: fs.ModeDevice | fs.ModeCharDevice | 0o600, Sys: &view.Attr{Major: 4, Minor: 300}},
		"d/nested": {Data: []byte("x"), Mode: 0o644, Sys: &view.Attr{MtimeNs: 999999999, Object: digest.FromBytes([]byte("x"))}},
	}
}

func buildAndRead(t *testing.T, meta bool, src fs.FS, seed string) (fs.FS, []byte, Result) {
	t.Helper()
	out, err := os.Create(filepath.Join(t.TempDir(), "img"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	b := func(out *os.File, src fs.FS, opts Options) (Result, error) { return Build(out, src, opts) }
	if meta {
		b = func(out *os.File, src fs.FS, opts Options) (Result, error) { return BuildMeta(out, src, opts) }
	}
	res, err := b(out, src, Options{Seed: seed, Digest: true})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	data, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	img, err := goerofs.Open(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("read back: %v", err)
	}
	return img, data, res
}

func stat(t *testing.T, img fs.FS, name string) *goerofs.Stat {
	t.Helper()
	info, err := fs.Stat(img, name)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*goerofs.Stat)
}

// TestRootInodeIsNotZero: glibc's readdir drops entries of inode 0, so a
// root at nid 0 would lose "." and ".." from listings.
func TestRootInodeIsNotZero(t *testing.T) {
	for _, meta := range []bool{false, true} {
		img, _, _ := buildAndRead(t, meta, sampleSource(), "s")
		if root := stat(t, img, "."); root.Ino == 0 {
			t.Errorf("metadata-only %v: the root's inode number is 0", meta)
		}
		if data, err := fs.ReadFile(img, "d/nested"); err != nil || (!meta && string(data) != "x") {
			t.Errorf("metadata-only %v: read d/nested after the shift: %q, %v", meta, data, err)
		}
	}
}

func TestBuildHardlinksAreOneInode(t *testing.T) {
	img, _, _ := buildAndRead(t, false, sampleSource(), "s")
	a, b := stat(t, img, "d/a"), stat(t, img, "b")
	if a.Ino != b.Ino || a.Nlink != 2 || b.Size != int64(len("shared bytes\n")) {
		t.Errorf("d/a ino %d nlink %d, b ino %d size %d: want one inode, 2 links, 13 bytes", a.Ino, a.Nlink, b.Ino, b.Size)
	}
	data, err := fs.ReadFile(img, "b")
	if err != nil || string(data) != "shared bytes\n" {
		t.Errorf("read b: %q, %v", data, err)
	}
	if dev := stat(t, img, "dev"); dev.Rdev != 4<<8|300&0xff|(300&^0xff)<<12 {
		t.Errorf("dev rdev %#x", dev.Rdev)
	}
}

// TestDirectoryLinkCounts: a directory has 2 links and one per
// subdirectory in either form, as mkfs.erofs gives; a walker that
// trusts the count reads 2 as "no subdirectories here".
func TestDirectoryLinkCounts(t *testing.T) {
	src := sampleSource()
	src["d/sub"] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}
	src["d/sub2"] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}
	for _, meta := range []bool{false, true} {
		img, _, _ := buildAndRead(t, meta, src, "s")
		for name, want := range map[string]int{".": 3, "d": 4, "d/sub": 2} {
			if got := stat(t, img, name).Nlink; got != want {
				t.Errorf("metadata-only %v: %s has %d links, want %d", meta, name, got, want)
			}
		}
	}
}

func TestBuildIsReproducible(t *testing.T) {
	_, one, r1 := buildAndRead(t, false, sampleSource(), "seed")
	_, two, r2 := buildAndRead(t, false, sampleSource(), "seed")
	_, other, r3 := buildAndRead(t, false, sampleSource(), "other seed")
	if !bytes.Equal(one, two) || r1 != r2 {
		t.Errorf("same source and seed: images differ (%s, %s)", r1.Digest, r2.Digest)
	}
	if r1.Digest != digest.FromBytes(one).String() || r1.Size != int64(len(one)) {
		t.Errorf("result %+v does not describe the %d-byte image", r1, len(one))
	}
	uuid := one[superblockOff+sbUUIDOff : superblockOff+sbUUIDOff+16]
	if bytes.Equal(uuid, make([]byte, 16)) || bytes.Equal(uuid, other[superblockOff+sbUUIDOff:][:16]) || r3 == r1 {
		t.Errorf("UUID %x is zero or does not follow the seed", uuid)
	}
}

func TestBuildMetaXattrs(t *testing.T) {
	src := sampleSource()
	big := bytes.Repeat([]byte("b"), inlineMaxSize+1)
	src["big"] = &fstest.MapFile{Data: big, Mode: 0o644, Sys: &view.Attr{Object: digest.FromBytes(big)}}
	img, _, _ := buildAndRead(t, true, src, "s")
	a := stat(t, img, "big")
	want := "/sha256/" + digest.FromBytes(big).Encoded()[:2] + "/" + digest.FromBytes(big).Encoded()
	if a.Xattrs[redirectXattr] != want || a.Xattrs[metacopyXattr] != "" || a.Size != int64(len(big)) {
		t.Errorf("big: xattrs %q size %d, want redirect %s, metacopy and %d bytes", a.Xattrs, a.Size, want, len(big))
	}
	if _, ok := a.Xattrs[metacopyXattr]; !ok {
		t.Errorf("big has no metacopy xattr")
	}
	// A small file's bytes are in the image, so it has neither.
	if small := stat(t, img, "d/a"); len(small.Xattrs) != 0 {
		t.Errorf("d/a: xattrs %q, want none: its bytes are inline", small.Xattrs)
	}
	for _, name := range []string{"d/a", "b", "d/nested"} {
		if data, err := fs.ReadFile(img, name); err != nil || !bytes.Equal(data, src[name].Data) {
			t.Errorf("read %s: %q, %v; want %q", name, data, err, src[name].Data)
		}
	}
	e := stat(t, img, "empty")
	if e.Xattrs["trusted.overlay.overlay.opaque"] != "y" || len(e.Xattrs) != 1 {
		t.Errorf("empty: xattrs %q, want only the escaped opaque", e.Xattrs)
	}
}

// TestBuildMetaInlinesAtMost: past inlineFiles small files, the rest are
// read through their redirects.
func TestBuildMetaInlinesAtMost(t *testing.T) {
	src := fstest.MapFS{".": {Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}}
	for i := range inlineFiles + 1 {
		data := []byte(fmt.Sprintf("%06d\n", i))
		src[fmt.Sprintf("f%06d", i)] = &fstest.MapFile{Data: data, Mode: 0o644, Sys: &view.Attr{Object: digest.FromBytes(data)}}
	}
	img, _, _ := buildAndRead(t, true, src, "s")
	if first := stat(t, img, "f000000"); len(first.Xattrs) != 0 {
		t.Errorf("f000000: xattrs %q, want none", first.Xattrs)
	}
	last := fmt.Sprintf("f%06d", inlineFiles)
	if _, ok := stat(t, img, last).Xattrs[metacopyXattr]; !ok {
		t.Errorf("%s, past the budget, has no metacopy xattr", last)
	}
}

// TestBuildMetaLayout: a directory of many blocks with its last one
// inline, a symlink target too long to be inline, hardlinks and a POSIX
// ACL, read back by go-erofs's reader.
func TestBuildMetaLayout(t *testing.T) {
	src := sampleSource()
	for i := range 3000 {
		data := []byte(fmt.Sprint(i))
		src[fmt.Sprintf("many/entry-%04d", i)] = &fstest.MapFile{Data: data, Mode: 0o644, Sys: &view.Attr{Object: digest.FromBytes(data), Mtime: int64(i)}}
	}
	src["many"] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}
	src["many/sub"] = &fstest.MapFile{Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}
	long := strings.Repeat("t", 4095)
	src["long"] = &fstest.MapFile{Data: []byte(long), Mode: fs.ModeSymlink | 0o777, Sys: &view.Attr{Link: long}}
	acl := string([]byte{2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff})
	src["d"].Sys.(*view.Attr).Xattrs = []view.Xattr{{Name: "system.posix_acl_access", Value: acl}}
	// Link counts without an identity are not hardlinks of each other.
	for _, name := range []string{"x1", "x2"} {
		src[name] = &fstest.MapFile{Data: []byte(name), Mode: 0o644, Sys: &view.Attr{Nlink: 2, Object: digest.FromString(name)}}
	}
	img, _, _ := buildAndRead(t, true, src, "s")
	if x1, x2 := stat(t, img, "x1"), stat(t, img, "x2"); x1.Ino == x2.Ino {
		t.Errorf("x1 and x2, of no Ino, are one inode %d", x1.Ino)
	}
	list, err := fs.ReadDir(img, "many")
	if err != nil || len(list) != 3001 {
		t.Fatalf("many: %d entries, %v; want 3001", len(list), err)
	}
	for i, e := range list[:3000] {
		info, err := e.Info()
		if want := fmt.Sprintf("entry-%04d", i); err != nil || e.Name() != want || info.ModTime().Unix() != int64(i) {
			t.Fatalf("entry %d: %s, %v, %v; want %s of mtime %d", i, e.Name(), info, err, want, i)
		}
	}
	if st := stat(t, img, "many"); st.Nlink != 3 {
		t.Errorf("many: %d links, want 3", st.Nlink)
	}
	if target, err := img.(fs.ReadLinkFS).ReadLink("long"); err != nil || target != long {
		t.Errorf("long: a target of %d bytes, %v; want 4095", len(target), err)
	}
	if a, b := stat(t, img, "d/a"), stat(t, img, "b"); a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("d/a ino %d nlink %d, b ino %d: want one inode of 2 links", a.Ino, a.Nlink, b.Ino)
	}
	// go-erofs's reader names index 2, the access ACL, with a dot after it.
	if got := stat(t, img, "d").Xattrs["system.posix_acl_access."]; got != acl {
		t.Errorf("d: ACL %x, want %x", got, acl)
	}
}

func TestBuildRefuses(t *testing.T) {
	noObject := sampleSource()
	noObject["d/nested"].Sys.(*view.Attr).Object = ""
	foreign := sampleSource()
	foreign["d/nested"].Sys = "not meta"
	otherXattr := sampleSource()
	otherXattr["d"].Sys.(*view.Attr).Xattrs = []view.Xattr{{Name: "other.name", Value: "v"}}
	aclSuffix := sampleSource()
	aclSuffix["d"].Sys.(*view.Attr).Xattrs = []view.Xattr{{Name: "system.posix_acl_access.x", Value: "v"}}
	for _, c := range []struct {
		name  string
		meta  bool
		src   fs.FS
		wants string
	}{
		{"content without an object", true, noObject, "d/nested"},
		{"Sys of another type", false, foreign, "d/nested"},
		{"an xattr of no EROFS namespace", true, otherXattr, "other.name"},
		{"an xattr of no EROFS namespace", true, aclSuffix, "system.posix_acl_access.x"},
	} {
		_, err := BuildMeta(&discard{}, c.src, Options{})
		if !c.meta {
			_, err = Build(&discard{}, c.src, Options{})
		}
		if err == nil || !strings.Contains(err.Error(), c.wants) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.wants)
		}
	}
}

// failingOpen is a source whose file fails to open, as a view's does
// when its object is gone.
type failingOpen struct{ fstest.MapFS }

func (f failingOpen) Open(name string) (fs.File, error) {
	if name == "d/nested" {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return f.MapFS.Open(name)
}

func (f failingOpen) ReadLink(name string) (string, error) { return f.MapFS.ReadLink(name) }

// TestBuildNamesAFileThatFailsOnce: the source's error already names the
// file, as an fs.FS's errors do.
func TestBuildNamesAFileThatFailsOnce(t *testing.T) {
	_, err := Build(&discard{}, failingOpen{sampleSource()}, Options{})
	if err == nil || !errors.Is(err, fs.ErrNotExist) || strings.Count(err.Error(), "open d/nested") != 1 {
		t.Errorf("error %v; want one naming the open of d/nested once", err)
	}
}

// resized is a source whose file d/nested reads as data, whatever size
// its listing gives: an object cut short or grown in a store.
type resized struct {
	fstest.MapFS
	data string
}

func (r resized) Open(name string) (fs.File, error) {
	if name == "d/nested" {
		return fstest.MapFS{name: {Data: []byte(r.data)}}.Open(name)
	}
	return r.MapFS.Open(name)
}

func (r resized) ReadLink(name string) (string, error) { return r.MapFS.ReadLink(name) }

// TestBuildRefusesAFileOfAnotherSize: the bytes a file reads are its
// content only when there are as many as its size says. A 100-byte file
// is kept inline, a 5000-byte one in blocks: go-erofs pads the one and
// stops at the size of the other.
func TestBuildRefusesAFileOfAnotherSize(t *testing.T) {
	for _, size := range []int{100, 5000} {
		for _, data := range []string{strings.Repeat("x", size-1), strings.Repeat("x", size+1)} {
			src := sampleSource()
			src["d/nested"].Data = []byte(strings.Repeat("x", size))
			_, err := Build(&discard{}, resized{src, data}, Options{})
			if !errors.Is(err, view.ErrDamagedObject) || !strings.Contains(err.Error(), "d/nested") {
				t.Errorf("a %d-byte file that reads %d bytes: error %v, want one naming d/nested, a damaged object", size, len(data), err)
			}
		}
	}
}

func TestObjectPath(t *testing.T) {
	hexDigest := strings.Repeat("ab", 32)
	if p, err := ObjectPath("sha256:" + hexDigest); err != nil || p != "/sha256/ab/"+hexDigest {
		t.Errorf("ObjectPath: %q, %v", p, err)
	}
	for _, bad := range []string{"", "sha256", "sha256:", ":abc", "sha256:ab/../cd", "a/b:abcd"} {
		if _, err := ObjectPath(bad); err == nil {
			t.Errorf("ObjectPath(%q) accepted", bad)
		}
	}
}

// discard is an Output that keeps nothing, for builds expected to fail.
type discard struct{ off int64 }

func (d *discard) Write(p []byte) (int, error) { d.off += int64(len(p)); return len(p), nil }
func (d *discard) Seek(off int64, whence int) (int64, error) {
	if whence == io.SeekStart {
		d.off = off
	}
	return d.off, nil
}
func (d *discard) ReadAt([]byte, int64) (int, error)      { return 0, errors.New("nothing kept") }
func (d *discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

// openCounter is a source that counts the files open at once, and, with
// a limit, refuses to open more than that many as a process out of
// descriptors does (EMFILE).
type openCounter struct {
	fstest.MapFS
	mu                sync.Mutex
	open, most, limit int
	refused           int
	// slow makes each file's first read wait, as a cold disk does, so
	// that the files opened ahead are open while it waits.
	slow time.Duration
}

type countedFile struct {
	fs.File
	c    *openCounter
	read bool
}

func (f *countedFile) Read(p []byte) (int, error) {
	if !f.read {
		f.read = true
		time.Sleep(f.c.slow)
	}
	return f.File.Read(p)
}

func (c *openCounter) Open(name string) (fs.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limit > 0 && c.open >= c.limit {
		c.refused++
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EMFILE}
	}
	f, err := c.MapFS.Open(name)
	if err != nil {
		return nil, err
	}
	c.open++
	c.most = max(c.most, c.open)
	return &countedFile{File: f, c: c}, nil
}

func (f *countedFile) Close() error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	f.c.open--
	return f.File.Close()
}

func (c *openCounter) ReadLink(name string) (string, error) { return c.MapFS.ReadLink(name) }

// TestBuildOpensBoundedFiles: a view of a million files must not need a
// million descriptors. Files are opened ahead of the copy, a bounded
// window of them, whether go-erofs copies them with the data (large) or
// inlines them with the metadata (small); each lands where it belongs.
func TestBuildOpensBoundedFiles(t *testing.T) {
	src := &openCounter{MapFS: fstest.MapFS{".": {Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}}}
	for i := range 4 * prefetchFiles {
		data := []byte(fmt.Sprint(i))
		if i%2 == 0 {
			data = bytes.Repeat(data, 5000)
		}
		src.MapFS[fmt.Sprintf("f%04d", i)] = &fstest.MapFile{Data: data, Mode: 0o644, Sys: &view.Attr{}}
	}
	// Past the output's buffer: written straight through, in its place.
	src.MapFS["f0042"].Data = bytes.Repeat([]byte("big\n"), 1<<18)
	img, _, _ := buildAndRead(t, false, src, "s")
	t.Logf("%d files open at most", src.most)
	if limit := prefetchFiles + prefetchWorkers + 1; src.most > limit || src.open != 0 {
		t.Errorf("%d files open at most, %d left open; want at most %d and 0", src.most, src.open, limit)
	}
	for _, name := range []string{"f0042", "f0043"} {
		want, _ := fs.ReadFile(src.MapFS, name)
		if data, err := fs.ReadFile(img, name); err != nil || !bytes.Equal(data, want) {
			t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(data), err, len(want))
		}
	}
}

// TestBuildWithinFewDescriptors: a process allowed few descriptors
// (ulimit -n) still builds, the full image and the metadata-only one:
// files opened ahead are only a speed-up, given up when an open is
// refused for want of a descriptor, and the copy opens its file itself.
func TestBuildWithinFewDescriptors(t *testing.T) {
	for _, meta := range []bool{false, true} {
		src := &openCounter{MapFS: fstest.MapFS{".": {Mode: fs.ModeDir | 0o755, Sys: &view.Attr{}}}, limit: 3, slow: time.Millisecond}
		for i := range 300 {
			data := []byte(fmt.Sprint(i))
			if i%3 == 0 && !meta { // a metadata-only image holds small files only
				data = bytes.Repeat(data, 5000)
			}
			src.MapFS[fmt.Sprintf("f%04d", i)] = &fstest.MapFile{Data: data, Mode: 0o644, Sys: &view.Attr{Object: digest.FromBytes(data)}}
		}
		img, _, _ := buildAndRead(t, meta, src, "s")
		if src.open != 0 || src.most > src.limit {
			t.Errorf("meta %v: %d files left open, %d open at most; want 0 and at most %d", meta, src.open, src.most, src.limit)
		}
		t.Logf("meta %v: %d files open at most, %d opens refused", meta, src.most, src.refused)
		if src.refused == 0 {
			t.Errorf("meta %v: no open was refused: the test tests nothing", meta)
		}
		if meta {
			continue
		}
		for _, name := range []string{"f0000", "f0001", "f0299"} {
			want, _ := fs.ReadFile(src.MapFS, name)
			if data, err := fs.ReadFile(img, name); err != nil || !bytes.Equal(data, want) {
				t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(data), err, len(want))
			}
		}
	}
}
