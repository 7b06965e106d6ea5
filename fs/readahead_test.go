package fs

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view"
)

// TestReadAhead opens the files of a directory one after another, as a
// walk does, and checks that the objects opened ahead are the ones the
// files name (their bytes hash to the digest), that all but the first few
// opens find theirs ready, that a jump elsewhere starts over, and that
// closing leaves no descriptor open.
func TestReadAhead(t *testing.T) {
	const files = 200
	var entries []testimage.Entry
	for i := range files {
		entries = append(entries, testimage.File(fmt.Sprintf("d/f%03d", i), fmt.Sprintf("content of file %d\n", i%190)))
	}
	s, v := teststore.OpenImage(t, []testimage.Layer{{Entries: entries}})
	dir, ok, err := v.Lookup(v.Root(), "d")
	if err != nil || !ok {
		t.Fatalf("lookup d: %v, %v", ok, err)
	}
	children, err := v.List(dir)
	if err != nil || len(children) != files {
		t.Fatalf("list d: %d children, %v", len(children), err)
	}
	fdsBefore := openFds(t)

	ra := newReadAhead(v, view.ByName(s.OpenObject))
	hits := 0
	open := func(c view.Child) {
		t.Helper()
		a, err := v.Attr(view.Node{c.Top})
		if err != nil {
			t.Fatal(err)
		}
		f := ra.take(c.Top, a.Object)
		if f == nil {
			return
		}
		hits++
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != a.Object {
			t.Errorf("%s: the object opened ahead holds %s, the file names %s", c.Name, got, a.Object)
		}
	}
	idle := func() {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			ra.mu.Lock()
			done := ra.workers == 0
			ra.mu.Unlock()
			if done {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("read-ahead still working after 10s")
			}
		}
	}
	for _, c := range children[:100] {
		open(c)
		idle()
	}
	if hits < 95 {
		t.Errorf("%d of 100 opens in order found their object ready, want all but the first few", hits)
	}

	// A jump back is not foreseen, and the run after it is.
	hits = 0
	open(children[0])
	idle()
	if hits != 0 {
		t.Errorf("an open far behind the window found its object ready")
	}
	for _, c := range children[1:50] {
		open(c)
		idle()
	}
	if hits < 45 {
		t.Errorf("%d of 49 opens after a jump found their object ready", hits)
	}

	ra.close()
	if after := openFds(t); after != fdsBefore {
		t.Errorf("%d descriptors open after close, %d before", after, fdsBefore)
	}
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
