package index

import (
	"crypto/sha256"
	"testing"
)

// FuzzIndex reads arbitrary bytes as an index file: a damaged index must
// be an error, never a panic, whichever record a mount asks for. Each
// input is read twice: as it is, and with its checksum recomputed so the
// structure checks behind the checksum get the damage too. The seeds in
// testdata/fuzz are indexes of internal/testimage's layers, written by
// store's TestFuzzSeedsAreCurrent with LAYERFS_WRITE_FUZZ_SEEDS=1.
func FuzzIndex(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		exercise(t, data)
		if len(data) >= headerSize+sumSize {
			fixed := append([]byte(nil), data...)
			body := len(fixed) - sumSize
			sum := sha256.Sum256(fixed[:body])
			copy(fixed[body:], sum[:])
			exercise(t, fixed)
		}
	})
}

// exercise calls every reader method a view uses on every record.
func exercise(t *testing.T, data []byte) {
	r, err := Parse(data)
	if err != nil {
		return
	}
	_ = r.Info()
	n := uint32(r.Len())
	for i := uint32(0); i <= n; i++ {
		r.TypeOf(i)
		r.InodeOf(i)
		name, _ := r.Name(i)
		e, err := r.Entry(i)
		if p, perr := r.Path(i); perr == nil && err == nil {
			r.Walk(p)
		}
		start, count, cerr := r.Children(i)
		if err != nil || cerr != nil {
			continue
		}
		if e.Type != TypeDir {
			t.Fatalf("record %d: Children answered for a %s", i, e.Type)
		}
		if start+count > n {
			t.Fatalf("record %d: children %d+%d of %d records", i, start, count, n)
		}
		r.Lookup(i, string(name))
		for c := start; c < start+count; c++ {
			if cn, err := r.Name(c); err == nil {
				r.Lookup(i, string(cn))
			}
		}
	}
}
