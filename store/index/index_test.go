package index

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"github.com/opencontainers/go-digest"
)

func sampleTree() *Node {
	root := NewRoot()
	add := func(parent *Node, e Entry) *Node {
		n := &Node{Entry: e}
		if e.Type == TypeDir {
			n.Children = map[string]*Node{}
		}
		parent.Children[e.Name] = n
		return n
	}
	etc := add(root, Entry{Name: "etc", Type: TypeDir, Mode: 0o755, Mtime: 5, MtimeNs: 7})
	add(etc, Entry{Name: "passwd", Type: TypeReg, Mode: 0o644, Size: 3, Object: digest.FromString("abc"), Nlink: 1,
		Xattrs: []Xattr{{"user.a", "1"}, {"security.capability", "\x00\x01"}}})
	a := add(root, Entry{Name: "bin", Type: TypeReg, Mode: 0o4755, UID: 7, GID: 8, Size: 4, Object: digest.FromString("abcd"), Nlink: 2})
	b := add(root, Entry{Name: "sh", Type: TypeReg, Mode: 0o4755, UID: 7, GID: 8, Size: 4, Object: digest.FromString("abcd"), Nlink: 2})
	b.LinkTo(a)
	add(root, Entry{Name: "lib", Type: TypeSymlink, Link: "usr/lib", Size: 7, Mode: 0o777})
	add(root, Entry{Name: "null", Type: TypeChar, Major: 1, Minor: 3, Mode: 0o666})
	add(etc, Entry{Name: ".wh.motd", Type: TypeReg, Mode: 0o644})
	return root
}

func writeIndex(t *testing.T, root *Node) string {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, root, Info{DiffID: digest.FromString("layer"), ContentBytes: 7}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "index")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundTrip(t *testing.T) {
	r, err := Open(writeIndex(t, sampleTree()), true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Len() != 8 || r.Info().DiffID != digest.FromString("layer") || r.Info().ContentBytes != 7 {
		t.Fatalf("Len %d, Info %+v", r.Len(), r.Info())
	}
	start, count, err := r.Children(0)
	if err != nil || count != 5 {
		t.Fatalf("root children %d %d %v", start, count, err)
	}
	var names []string
	for i := start; i < start+count; i++ {
		n, _ := r.Name(i)
		names = append(names, string(n))
	}
	if want := []string{"bin", "etc", "lib", "null", "sh"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("children %v, want sorted", names)
	}
	rec, ok, err := r.Walk("etc/passwd")
	if err != nil || !ok {
		t.Fatalf("Walk etc/passwd: %v %v", ok, err)
	}
	e, err := r.Entry(rec)
	if err != nil {
		t.Fatal(err)
	}
	if e.Object != digest.FromString("abc") || len(e.Xattrs) != 2 || e.Xattrs[1].Value != "\x00\x01" {
		t.Fatalf("entry %+v", e)
	}
	if p, _ := r.Path(rec); p != "etc/passwd" {
		t.Fatalf("Path = %q", p)
	}
	bin, _, _ := r.Walk("bin")
	sh, _, _ := r.Walk("sh")
	if r.InodeOf(bin) != r.InodeOf(sh) || r.InodeOf(bin) == r.InodeOf(rec) {
		t.Fatalf("hardlinks: inodes %d %d (other %d)", r.InodeOf(bin), r.InodeOf(sh), r.InodeOf(rec))
	}
	if _, ok, _ := r.Walk("etc/nothing"); ok {
		t.Fatal("found a missing name")
	}
	if _, ok, _ := r.Walk("lib/x"); ok {
		t.Fatal("walked through a symlink")
	}
}

func TestDamageIsAnError(t *testing.T) {
	good, err := os.ReadFile(writeIndex(t, sampleTree()))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 10, headerSize, len(good) - 1} {
		t.Run(fmt.Sprintf("truncated-%d", n), func(t *testing.T) {
			if _, err := Parse(good[:n]); !errors.Is(err, errCorrupt) {
				t.Fatalf("Parse of %d bytes: %v", n, err)
			}
		})
	}
	for _, off := range []int{3, 20, headerSize + 9, headerSize + recordSize + 70, len(good) - 40} {
		t.Run(fmt.Sprintf("flipped-%d", off), func(t *testing.T) {
			bad := bytes.Clone(good)
			bad[off] ^= 0x40
			if _, err := Parse(bad); !errors.Is(err, errCorrupt) {
				t.Fatalf("Parse with byte %d flipped: %v", off, err)
			}
		})
	}
}

// TestXattrEntries: the header counts the records that carry xattrs, and
// an index of the version before the count reads as not knowing it.
func TestXattrEntries(t *testing.T) {
	data, err := os.ReadFile(writeIndex(t, sampleTree()))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if n := r.Info().XattrEntries; n != 1 {
		t.Errorf("XattrEntries %d, want 1: etc/passwd", n)
	}

	old := bytes.Clone(data)
	hdrVersion.put(old, oldVersion)
	hdrXattrEntries.put(old, 0)
	body := len(old) - sumSize
	sum := sha256.Sum256(old[:body])
	copy(old[body:], sum[:])
	if r, err = Parse(old); err != nil {
		t.Fatalf("version %d index: %v", oldVersion, err)
	}
	if n := r.Info().XattrEntries; n != -1 {
		t.Errorf("version %d index: XattrEntries %d, want -1", oldVersion, n)
	}

	var buf bytes.Buffer
	w, err := NewWriter(&buf, &bytes.Buffer{}, 2, StringBytes(Entry{Name: "a"}), Info{DiffID: digest.FromString("layer"), XattrEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []Entry{{Type: TypeDir}, {Name: "a", Type: TypeReg}} {
		if err := w.Add(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err == nil {
		t.Error("a writer told of 1 record with xattrs closed after none")
	}
}

// TestReleasedMappingStaysReadable: a walk gives the mapping back as it
// goes, so the kernel's count of the mapping's resident pages stays near
// releaseEvery records, however many are read; what was decoded before a
// release still reads the same after it.
func TestReleasedMappingStaysReadable(t *testing.T) {
	root := NewRoot()
	const files = 4 * releaseEvery
	for i := range files {
		name := fmt.Sprintf("file-%06d", i)
		root.Children[name] = &Node{Entry: Entry{Name: name, Type: TypeReg, Mode: 0o644, Size: int64(i + 1),
			Object: digest.FromString(name), Nlink: 1}}
	}
	r, err := Open(writeIndex(t, root), false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	start, count, err := r.Children(0)
	if err != nil || count != files {
		t.Fatalf("root: %d children, %v", count, err)
	}
	first, err := r.Entry(start)
	if err != nil {
		t.Fatal(err)
	}
	for pass := range 2 {
		for i := range count {
			e, err := r.Entry(start + i)
			if want := fmt.Sprintf("file-%06d", i); err != nil || e.Name != want || e.Size != int64(i+1) {
				t.Fatalf("pass %d, record %d: %q of %d bytes, %v; want %s", pass, start+i, e.Name, e.Size, err, want)
			}
		}
	}
	if first.Name != "file-000000" || first.Object != digest.FromString("file-000000") {
		t.Errorf("an entry decoded before the releases reads %q %s after them", first.Name, first.Object)
	}
	resident, total := mappingRSS(t, r.data)
	t.Logf("%d of %d KiB of the mapping resident", resident>>10, total>>10)
	if limit := int64(releaseEvery * (recordSize + 64)); resident > limit || total < 2*limit {
		t.Errorf("%d of %d bytes of the mapping resident after reading every record twice; want at most %d", resident, total, limit)
	}
}

// mappingRSS is the kernel's count of the resident bytes of the mapping
// that holds data, and its size, from /proc/self/smaps.
func mappingRSS(t *testing.T, data []byte) (resident, size int64) {
	t.Helper()
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(&data[0])))
	in := false
	for _, line := range strings.Split(string(smaps), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			in = strings.HasPrefix(f[0], addr)
			continue
		}
		if !in {
			continue
		}
		var kb int64
		if _, err := fmt.Sscanf(line, "Size: %d kB", &kb); err == nil {
			size = kb << 10
		}
		if _, err := fmt.Sscanf(line, "Rss: %d kB", &kb); err == nil {
			return kb << 10, size
		}
	}
	t.Fatalf("no mapping at %s in /proc/self/smaps", addr)
	return 0, 0
}
