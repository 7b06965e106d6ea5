package index

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

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
