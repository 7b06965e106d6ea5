package store

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// linkNames lists layer d's links directory, failing when it has none.
func linkNames(t *testing.T, s *Store, d digest.Digest) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(s.layerDir(d), linksDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// requireLinks checks that layer d's links are its objects, each the
// very file the store keeps, and nothing else.
func requireLinks(t *testing.T, s *Store, d digest.Digest) {
	t.Helper()
	want := map[string]bool{}
	if err := s.objectsOf(d, func(o digest.Digest) { want[o.Encoded()] = true }); err != nil {
		t.Fatal(err)
	}
	names := linkNames(t, s, d)
	if len(names) != len(want) {
		t.Errorf("layer %s: %d links for %d objects", d, len(names), len(want))
	}
	for _, n := range names {
		if !want[n] {
			t.Errorf("layer %s: link %s is not one of its objects", d, n)
			continue
		}
		li, err := os.Lstat(filepath.Join(s.layerDir(d), linksDir, n))
		if err != nil {
			t.Fatal(err)
		}
		oi, err := os.Lstat(s.ObjectPath(digest.NewDigestFromEncoded(digest.SHA256, n)))
		if err != nil {
			t.Fatal(err)
		}
		if !os.SameFile(li, oi) {
			t.Errorf("layer %s: link %s is another file than the object", d, n)
		}
	}
}

// An import links each layer's objects into its links directory; a layer
// without one (extracted before links existed) gets it from
// EnsureLinks; verify finds a link that is not the object, or none, and
// links the object again in place.
func TestLinks(t *testing.T) {
	s, target := newSampleStore(t)
	layers := target.Digests()
	for _, d := range layers {
		requireLinks(t, s, d)
	}

	d := layers[0]
	if err := os.RemoveAll(filepath.Join(s.layerDir(d), linksDir)); err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureLinks(context.Background(), layers); err != nil {
		t.Fatal(err)
	}
	requireLinks(t, s, d)

	victim := filepath.Join(s.layerDir(d), linksDir, linkNames(t, s, d)[0])
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(victim, []byte("not the object\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	_, problems, err := s.Verify([]Target{target})
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || problems[0].ID != d.String() || !strings.Contains(problems[0].Err.Error(), "links") || !strings.Contains(problems[0].Err.Error(), "linked again") {
		t.Fatalf("verify of a damaged link found %v, want one problem of layer %s's links, linked again", problems, d)
	}
	// In place: the directory a kernel mount holds is the one repaired.
	requireLinks(t, s, d)
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	if _, problems, err := s.Verify([]Target{target}); err != nil || len(problems) != 1 || !strings.Contains(problems[0].Err.Error(), "linked again") {
		t.Fatalf("verify of a missing link: %v %v, want it linked again", problems, err)
	}
	requireLinks(t, s, d)
	if _, problems, err := s.Verify([]Target{target}); err != nil || len(problems) != 0 {
		t.Errorf("verify after links were made again: %v %v", problems, err)
	}

	// A repair is a write: it waits for a gc that holds the store.
	if err := os.Remove(victim); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.lock(context.Background(), gcLock, unix.LOCK_EX, "test")
	if err != nil {
		t.Fatal(err)
	}
	verified := make(chan []Problem)
	go func() {
		_, problems, err := s.Verify([]Target{target})
		if err != nil {
			problems = append(problems, Problem{What: "verify", Err: err})
		}
		verified <- problems
	}()
	select {
	case problems := <-verified:
		t.Fatalf("verify repaired links while gc held the store: %v", problems)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := os.Lstat(victim); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("link relinked while gc held the store: %v", err)
	}
	unlock()
	if problems := <-verified; len(problems) != 1 || !strings.Contains(problems[0].Err.Error(), "linked again") {
		t.Fatalf("verify after gc let go: %v, want the link made again", problems)
	}
	requireLinks(t, s, d)
}

// TestRootOfLinks tells the store of a kernel mount from its data-only
// layers, and no store from directories that are not all one store's
// links directories.
func TestRootOfLinks(t *testing.T) {
	hex := strings.Repeat("ab", 32)
	links := func(root string) string { return root + "/layers/sha256/" + hex + "/links" }
	for _, c := range []struct {
		dirs []string
		want string
	}{
		{[]string{links("/srv/a,b c")}, "/srv/a,b c"},
		{[]string{links("/srv/a"), links("/srv/a") + "/"}, "/srv/a"},
		{[]string{links("/srv/a"), links("/srv/b")}, ""},
		{[]string{"/srv/a/layers/sha256/" + hex + "/index"}, ""},
		{[]string{"/srv/a/layers/sha256/xyz/links"}, ""},
		{[]string{"/srv/a/objects/sha256/" + hex + "/links"}, ""},
		{nil, ""},
	} {
		if got := RootOfLinks(c.dirs); got != c.want {
			t.Errorf("RootOfLinks(%q) = %q, want %q", c.dirs, got, c.want)
		}
	}
}
