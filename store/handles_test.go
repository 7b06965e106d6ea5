package store

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
)

// objectRecord is a record whose file has content, by view layer.
type objectRecord struct {
	layer  int
	rec    uint32
	object digest.Digest
	size   int64
}

func objectRecords(t *testing.T, s *Store, layers []digest.Digest) []objectRecord {
	t.Helper()
	var recs []objectRecord
	for i, d := range layers {
		r, err := s.openIndex(d, false)
		if err != nil {
			t.Fatal(err)
		}
		for rec := uint32(0); rec < uint32(r.Len()); rec++ {
			e, err := r.Entry(r.InodeOf(rec))
			if err != nil {
				t.Fatal(err)
			}
			if e.Type == index.TypeReg && e.Object != "" {
				recs = append(recs, objectRecord{i, rec, e.Object, e.Size})
			}
		}
		r.Close()
	}
	if len(recs) == 0 {
		t.Fatal("the sample has no file with content")
	}
	return recs
}

// A root mount opens objects by the handles written at import: each opens
// the content its digest names. The handles of a store copied elsewhere,
// or of an object written anew, name other inodes and are refused, and
// the object is then opened by name.
func TestHandlesOpenTheirObjectsOnly(t *testing.T) {
	testimage.RequireRoot(t, "opening by file handle")
	s, target := newSampleStore(t)
	layers := target.Digests()
	if _, err := os.Stat(filepath.Join(s.layerDir(layers[0]), handlesFile)); err != nil {
		testimage.Unavailable(t, "no handles written on this file system (%v)", err)
	}
	recs := objectRecords(t, s, layers)

	h := s.OpenHandles(layers)
	defer h.Close()
	for _, r := range recs {
		f := h.Open(r.layer, r.rec, r.object, r.size)
		if f == nil {
			t.Fatalf("layer %d record %d: no object by handle", r.layer, r.rec)
		}
		dg := digest.SHA256.Digester()
		_, err := io.Copy(dg.Hash(), f)
		f.Close()
		if err != nil || dg.Digest() != r.object {
			t.Errorf("layer %d record %d: opened content %s (%v), want %s", r.layer, r.rec, dg.Digest(), err, r.object)
		}
	}
	if f := h.Open(0, recs[0].rec, recs[0].object, recs[0].size+1); f != nil {
		f.Close()
		t.Errorf("a handle opened an object of another size than its record's")
	}

	copied := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", s.root, copied).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	c, err := Open(copied)
	if err != nil {
		t.Fatal(err)
	}
	ch := c.OpenHandles(layers)
	defer ch.Close()
	for _, r := range recs {
		if f := ch.Open(r.layer, r.rec, r.object, r.size); f != nil {
			f.Close()
			t.Fatalf("the copied store opened layer %d record %d by the original's handle", r.layer, r.rec)
		}
	}

	r := recs[0]
	p := s.ObjectPath(r.object)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	// Every name of the object goes, its layer's link too, so that its
	// inode is freed and the handle names nothing or another file.
	for _, name := range []string{p, filepath.Join(s.layerDir(layers[r.layer]), linksDir, r.object.Encoded())} {
		if err := os.Remove(name); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(p, data, 0o400); err != nil {
		t.Fatal(err)
	}
	if f := h.Open(r.layer, r.rec, r.object, r.size); f != nil {
		f.Close()
		t.Errorf("the handle of a removed object opened a file")
	}
}
