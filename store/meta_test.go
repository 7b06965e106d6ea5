package store

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
)

// TestMetaCache: a meta image is found by its view's identity, checked
// against its record when opened, reported by verify when damaged, kept
// by gc while an image holds its layers and removed once none does.
func TestMetaCache(t *testing.T) {
	s, target := newSampleStore(t)
	m := NewMetaImage(target.Digests(), view.Merged)
	if single := NewMetaImage(target.Digests(), view.Single); single.Key() == m.Key() {
		t.Errorf("a merged and a single-layer view share the key %s", m.Key())
	}
	if lower := NewMetaImage(target.Digests()[:1], view.Merged); lower.Key() == m.Key() {
		t.Errorf("two layer stacks share the key %s", m.Key())
	}
	if _, _, err := s.OpenMeta(m); !errors.Is(err, ErrNotFound) {
		t.Fatalf("OpenMeta of an empty cache: %v, want ErrNotFound", err)
	}
	content := []byte("an image's bytes")
	f, rec, err := s.PutMeta(context.Background(), m, func(out *os.File) (digest.Digest, int64, error) {
		_, err := out.Write(content)
		return digest.FromBytes(content), int64(len(content)), err
	})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	assertNoTemps(t, s)
	f, got, err := s.OpenMeta(m)
	if err != nil {
		t.Fatalf("OpenMeta after PutMeta: %v", err)
	}
	data, _ := io.ReadAll(f)
	f.Close()
	if string(data) != string(content) || got.Digest != rec.Digest || got.Key() != m.Key() {
		t.Errorf("OpenMeta gives %q, record %+v; want %q, %+v", data, got, content, rec)
	}

	if f, err := s.GC(false); err != nil || f.Metas != 0 {
		t.Errorf("gc with the image in the store: %+v, %v; want the meta image kept", f, err)
	}
	damaged := append([]byte{}, content...)
	damaged[0] ^= 0xff
	if err := os.WriteFile(s.path(metaImageRel(m.Key())), damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.OpenMeta(m); !errors.Is(err, ErrMismatch) {
		t.Errorf("OpenMeta of a damaged image: %v, want ErrMismatch", err)
	}
	checked, problems, err := s.Verify(nil)
	if err != nil || checked.Metas != 1 || len(problems) != 1 || problems[0].What != "meta image" || !strings.Contains(problems[0].String(), "rebuilds it") {
		t.Errorf("verify of a damaged meta image: %+v, %v, %v", checked, problems, err)
	}

	if err := s.Untag("sample"); err != nil {
		t.Fatal(err)
	}
	if f, err := s.GC(false); err != nil || f.Metas != 2 {
		t.Errorf("gc with the image gone: %+v, %v; want the meta image and its record removed", f, err)
	}
	if names, err := s.metaEntries(); err != nil || len(names) != 0 {
		t.Errorf("meta/ after gc: %q, %v", names, err)
	}
}
