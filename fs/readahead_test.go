package fs

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view"
)

// TestReadAhead opens the files of a two-layer view one after another, as
// a walk does after listing their directory, with the objects' bytes
// dropped from memory first. It checks that the objects opened ahead are
// those of files the view shows (their bytes hash to the digest the file
// names), never those of files the upper layer replaced or whited out;
// that all but the first few opens find theirs ready; that in a directory
// listed during a cold walk even the first does; that a walk over objects
// in memory opens nothing ahead; and that closing leaves no descriptor
// open. The read-ahead's clock is the test's: dropping the objects from
// memory between the walks takes as long as the disk makes it, which is
// not time a walk spends.
func TestReadAhead(t *testing.T) {
	const files = 200
	var lower, upper []testimage.Entry
	for i := range files {
		name := fmt.Sprintf("f%03d", i)
		lower = append(lower, testimage.File("d/"+name, fmt.Sprintf("lower %d\n", i%190)))
		switch i % 10 {
		case 3:
			upper = append(upper, testimage.File("d/"+name, fmt.Sprintf("upper %d\n", i)))
		case 7:
			upper = append(upper, testimage.Whiteout("d", name))
		}
	}
	s, v := teststore.OpenImage(t, []testimage.Layer{{Entries: lower}, {Entries: upper}})
	dir, ok, err := v.Lookup(v.Root(), "d")
	if err != nil || !ok {
		t.Fatalf("lookup d: %v, %v", ok, err)
	}
	children, err := v.List(dir)
	if err != nil || len(children) != files-files/10 {
		t.Fatalf("list d: %d children, %v", len(children), err)
	}
	shown := map[digest.Digest]bool{}
	for _, c := range children {
		shown[attr(t, v, c).Object] = true
	}
	// evict drops the bytes of every object the view shows from memory,
	// as a cold cache has none of them.
	evict := func() {
		t.Helper()
		for object := range shown {
			f, err := s.OpenObject(object)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			// Pages still being read in, after a read-ahead's advice,
			// are dropped once read.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
					t.Fatal(err)
				}
				if !resident(t, f) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("object %s stays in memory 10s after POSIX_FADV_DONTNEED: the test needs TMPDIR on a disk file system", object)
				}
			}
			f.Close()
		}
	}
	fdsBefore := openFds(t)

	var fetchedMu sync.Mutex
	fetched := 0
	ra := newReadAhead(v, func(r view.Ref, a view.Attr) (*os.File, error) {
		fetchedMu.Lock()
		defer fetchedMu.Unlock()
		fetched++
		if !shown[a.Object] {
			t.Errorf("opened ahead object %s, of a file the view hides", a.Object)
		}
		return s.OpenObject(a.Object)
	})
	clock := time.Now()
	ra.now = func() time.Time { return clock }
	hits := 0
	open := func(c view.Child) {
		t.Helper()
		a := attr(t, v, c)
		f := ra.take(c.Top, a.Object)
		if f == nil {
			if f, err = s.OpenObject(a.Object); err != nil {
				t.Fatal(err)
			}
			ra.missed(c.Top, f)
			f.Close()
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
	walk := func(cs []view.Child) {
		t.Helper()
		hits = 0
		for _, c := range cs {
			open(c)
			idle()
		}
	}

	evict()
	ra.listed(2, children)
	walk(children[:100])
	if hits < 95 {
		t.Errorf("%d of 100 opens in order found their object ready, want all but the first few", hits)
	}

	evict()
	ra.listed(2, children)
	idle()
	walk(children[:50])
	if hits != 50 {
		t.Errorf("%d of 50 opens found their object ready in a directory listed during a cold walk, want all", hits)
	}

	// With every object in memory, and the cold walk over:
	for object := range shown {
		f, err := s.OpenObject(object)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	clock = clock.Add(coldWalk)
	fetched = 0
	ra.listed(2, children)
	walk(children)
	if fetched != 0 || hits > 2*aheadMax {
		t.Errorf("a walk over objects in memory opened %d ahead", fetched)
	}

	ra.close()
	if after := openFds(t); after != fdsBefore {
		t.Errorf("%d descriptors open after close, %d before", after, fdsBefore)
	}
}

func attr(t *testing.T, v view.View, c view.Child) view.Attr {
	t.Helper()
	a, err := v.Attr(view.Node{c.Top})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// resident tells whether any byte of f is in memory.
func resident(t *testing.T, f *os.File) bool {
	t.Helper()
	var st unix.Cachestat_t
	if err := unix.Cachestat(uint(f.Fd()), &unix.CachestatRange{}, &st, 0); err != nil {
		t.Fatal(err)
	}
	return st.Cache != 0
}

func openFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
