package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"reflect"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestPartialResumes writes part of a blob, closes it as a killed fetch
// would leave it, and finishes it in a second Partial: the hash covers
// the bytes of both.
func TestPartialResumes(t *testing.T) {
	s, err := OpenForWriting(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("layerfs partial "), 4096)
	desc := ocispec.Descriptor{Digest: digest.FromBytes(data), Size: int64(len(data))}
	p, err := s.Partial(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(data[:1000])
	p.Close()
	p, err = s.Partial(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	if p.Size() != 1000 {
		t.Fatalf("reopened partial holds %d bytes, want 1000", p.Size())
	}
	p.Write(data[1000:])
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(s.BlobPath(desc.Digest))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("committed blob: %v, %d bytes", err, len(got))
	}
	if _, err := s.Partial(context.Background(), desc); !errors.Is(err, ErrHaveBlob) {
		t.Fatalf("Partial of a committed blob: %v, want ErrHaveBlob", err)
	}
}

// TestPartialRefusesWrongBytes commits bytes of the right size but the
// wrong digest: nothing is kept, neither blob nor partial.
func TestPartialRefusesWrongBytes(t *testing.T) {
	s, err := OpenForWriting(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{Digest: digest.FromString("right"), Size: 5}
	p, err := s.Partial(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("wrong"))
	if err := p.Commit(); !errors.Is(err, ErrMismatch) {
		t.Fatalf("commit of wrong bytes: %v, want ErrMismatch", err)
	}
	if s.HasBlob(desc.Digest) {
		t.Error("wrong bytes were committed")
	}
	p, err = s.Partial(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	if p.Size() != 0 {
		t.Errorf("a refused blob left %d bytes to resume from", p.Size())
	}
}

// TestPartialLongerThanBlob drops staged bytes past the blob's size,
// which cannot belong to it.
func TestPartialLongerThanBlob(t *testing.T) {
	s, err := OpenForWriting(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	desc := ocispec.Descriptor{Digest: digest.FromString("abc"), Size: 3}
	p, err := s.Partial(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	p.Write([]byte("abcdef"))
	p.Close()
	if p, err = s.Partial(context.Background(), desc); err != nil {
		t.Fatal(err)
	}
	if p.Size() != 0 {
		t.Fatalf("partial longer than its blob kept %d bytes", p.Size())
	}
	p.Write([]byte("abc"))
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestPartialCommitsOnlyVerified: a caller outside the store reaches the
// store with a Partial's bytes only through its Commit, which checks them.
// An exported field would hand out the staged file, whose own Commit
// renames it to any path, checked against nothing when asked.
func TestPartialCommitsOnlyVerified(t *testing.T) {
	for f := range reflect.TypeFor[Partial]().Fields() {
		if f.IsExported() {
			t.Errorf("Partial exports field %s", f.Name)
		}
	}
}
