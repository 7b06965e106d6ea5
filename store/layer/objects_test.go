package layer

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
)

// TestStagedObjects extracts a layer whose files repeat content, small
// and large, end in holes, or are in the store already, and checks the
// staged objects against the files' own bytes: one object per distinct
// content, each named by its sha256, whole, and counted once.
func TestStagedObjects(t *testing.T) {
	small := "small content\n"
	large := strings.Repeat("0123456789abcdef", (smallFile+3*sparseBlock)/16)
	trailingHole := "data before a hole" + strings.Repeat("\x00", 3*sparseBlock)
	largeHole := strings.Repeat("x", smallFile) + strings.Repeat("\x00", 5*sparseBlock)
	zeros := strings.Repeat("\x00", 2*sparseBlock+7)
	stored := "already in the store\n"
	files := []testimage.Entry{
		testimage.File("a", small),
		testimage.File("b", small),
		testimage.File("c", large),
		testimage.File("d", large),
		testimage.File("e", trailingHole),
		testimage.File("f", largeHole),
		testimage.File("g", zeros),
		testimage.File("h", stored),
		testimage.File("i", stored),
	}
	objects := t.TempDir()
	objectPath := func(d digest.Digest) string { return filepath.Join(objects, d.Encoded()) }
	if err := os.WriteFile(objectPath(digest.FromString(stored)), []byte(stored), 0o600); err != nil {
		t.Fatal(err)
	}
	x, err := New(t.TempDir(), 0, objectPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Abort()
	if _, err := x.Read(bytes.NewReader(testimage.Tar(t, files...))); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{}
	var contentBytes, objectBytes int64
	for _, body := range []string{small, small, large, large, trailingHole, largeHole, zeros, stored, stored} {
		contentBytes += int64(len(body))
		name := digest.FromString(body).Encoded()
		if _, ok := want[name]; !ok {
			objectBytes += int64(len(body))
		}
		want[name] = body
	}
	staged, err := os.ReadDir(x.ObjectsDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(staged) != len(want) {
		t.Errorf("%d objects staged, want one per distinct content: %d", len(staged), len(want))
	}
	for _, de := range staged {
		got, err := os.ReadFile(filepath.Join(x.ObjectsDir(), de.Name()))
		if err != nil {
			t.Fatal(err)
		}
		body, ok := want[de.Name()]
		switch {
		case !ok:
			t.Errorf("staged object %s is no file's content", de.Name())
		case string(got) != body:
			t.Errorf("staged object %s holds %d bytes hashing %s, want %d", de.Name(), len(got), digest.FromBytes(got), len(body))
		}
	}
	if inStore, err := os.Stat(objectPath(digest.FromString(stored))); err != nil {
		t.Fatal(err)
	} else if st, err := os.Stat(filepath.Join(x.ObjectsDir(), digest.FromString(stored).Encoded())); err != nil || !os.SameFile(st, inStore) {
		t.Errorf("content the store has is staged as a copy, not a link to the store's file (%v)", err)
	}
	if content, objs := x.Sizes(); content != contentBytes || objs != objectBytes {
		t.Errorf("sizes: content %d, objects %d; want %d and %d", content, objs, contentBytes, objectBytes)
	}
}
