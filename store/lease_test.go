package store

import (
	"context"
	"os"
	"slices"
	"testing"

	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
)

// TestLeasesOfOneProcess: a program holding two views of a store (two
// mounts, a build beside a mount) holds both. Each lease is a file of
// its own, so the second does not replace the first, and releasing one
// leaves the other: gc then keeps what the remaining view reads even
// after its image is removed.
func TestLeasesOfOneProcess(t *testing.T) {
	s, target := newSampleStore(t)
	releaseA, err := s.Lease(context.Background(), target, "a")
	if err != nil {
		t.Fatal(err)
	}
	releaseB, err := s.LeaseReading(context.Background(), target, "b")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetaImage(target.Digests(), view.Merged)
	f, _, err := s.PutMeta(context.Background(), m, func(out *os.File) (digest.Digest, int64, error) {
		_, err := out.Write([]byte("image"))
		return digest.FromString("image"), 5, err
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	releaseK, err := s.LeaseKernel(context.Background(), target, "/k", "layerfs:sample", m.Key())
	if err != nil {
		t.Fatal(err)
	}
	views := func() []string {
		t.Helper()
		live, stale, err := s.Leases()
		if err != nil || len(stale) != 0 {
			t.Fatalf("Leases: %v, stale %v", err, stale)
		}
		var out []string
		for _, l := range live {
			out = append(out, l.View)
		}
		slices.Sort(out)
		return out
	}
	if got := views(); !slices.Equal(got, []string{"/k", "a", "b"}) {
		t.Fatalf("live leases of views %q, want the three taken", got)
	}
	releaseA()
	releaseK()
	if got := views(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("after releasing a and /k: leases of %q, want b's still held", got)
	}

	if err := s.Untag(target.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(false); err != nil {
		t.Fatal(err)
	}
	for _, d := range target.Digests() {
		if !s.Extracted(d) {
			t.Errorf("gc removed layer %s, which a live lease names", d)
		}
	}
	releaseB()
	if got := views(); len(got) != 0 {
		t.Fatalf("after releasing every lease: leases of %q", got)
	}
	if _, err := s.GC(false); err != nil {
		t.Fatal(err)
	}
	for _, d := range target.Digests() {
		if s.Extracted(d) {
			t.Errorf("gc kept layer %s once no lease or image named it", d)
		}
	}
}
