package fs

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
)

// TestIdleBacking releases more passthrough files than are kept: the
// oldest idle ones are dropped, never one open again.
func TestIdleBacking(t *testing.T) {
	_, v := teststore.OpenImage(t, []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f", "f\n")}}})
	s := newServer(NewTree(v, nil))
	release := func(node uint64) {
		s.Release(nil, &fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: node}, Fh: backingFh})
	}
	const reopened = 7
	for node := uint64(1); node <= idleBacking+100; node++ {
		s.backing[node] = &backing{id: int32(node), refs: 1}
		release(node)
		if node == reopened {
			// Open again, as Open does for a file whose backing is kept.
			s.backing[node].refs++
		}
	}
	if got := len(s.backing); got != idleBacking+1 {
		t.Errorf("%d passthrough files kept, want %d idle and the one open", got, idleBacking)
	}
	if b := s.backing[reopened]; b == nil || b.refs != 1 {
		t.Errorf("the file open again lost its passthrough file: %+v", b)
	}
	for node := uint64(1); node <= 100; node++ {
		if _, ok := s.backing[node]; ok != (node == reopened) {
			t.Errorf("node %d: kept %v", node, ok)
		}
	}
	release(reopened)
	if b := s.backing[reopened]; b == nil || b.refs != 0 {
		t.Errorf("closed again, the file's passthrough file is %+v, want kept idle", b)
	}
}
