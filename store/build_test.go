package store

import (
	"bytes"
	"testing"

	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
)

// indexOf extracts one layer blob into s and returns its index bytes.
func indexOf(t *testing.T, s *Store, layer []byte) ([]byte, error) {
	t.Helper()
	x, err := s.newExtraction(0)
	if err != nil {
		t.Fatal(err)
	}
	defer x.abort()
	if _, err := x.read(bytes.NewReader(layer)); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := x.writeIndex(&buf, index.Info{DiffID: digest.FromBytes(layer)}); err != nil {
		t.Fatalf("accepted layer gives no index: %v", err)
	}
	return buf.Bytes(), nil
}

// TestSpilledIndexIsTheSame builds every rule case's index twice: in
// memory, and with runs of a few records spilled to disk and merged. Both
// must give the same bytes, and the same refusals.
func TestSpilledIndexIsTheSame(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	layers := seedLayers(t)
	type outcome struct {
		index []byte
		err   error
	}
	var inMemory []outcome
	for _, l := range layers {
		b, err := indexOf(t, s, l)
		inMemory = append(inMemory, outcome{b, err})
	}
	saved := runBytes
	runBytes = 200
	defer func() { runBytes = saved }()
	for i, l := range layers {
		b, err := indexOf(t, s, l)
		want := inMemory[i]
		if (err == nil) != (want.err == nil) || (err != nil && err.Error() != want.err.Error()) {
			t.Errorf("layer %d: spilled error %v, in memory %v", i, err, want.err)
		}
		if !bytes.Equal(b, want.index) {
			t.Errorf("layer %d: spilled index differs from the one built in memory", i)
		}
	}
}
