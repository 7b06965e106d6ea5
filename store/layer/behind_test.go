package layer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"testing"
)

// TestBehindWriter writes a stream in pieces of every size, from a byte
// to several buffers, and checks that the destination got it whole and
// in order, against the hash of the stream itself.
func TestBehindWriter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 5*behindBuffers*chunkSize+12345)
	for i := range src {
		src[i] = byte(rng.IntN(256))
	}
	var dst bytes.Buffer
	w := Behind(&dst)
	for rest := src; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(3*chunkSize))
		if m, err := w.Write(rest[:n]); m != n || err != nil {
			t.Fatalf("Write of %d bytes: %d, %v", n, m, err)
		}
		rest = rest[n:]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := sha256.Sum256(dst.Bytes()), sha256.Sum256(src); got != want || dst.Len() != len(src) {
		t.Fatalf("destination holds %d bytes with sha256 %x, want %d with %x", dst.Len(), got, len(src), want)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

type failingWriter struct{ after int }

var errFull = errors.New("no space left")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.after < len(p) {
		return 0, errFull
	}
	f.after -= len(p)
	return len(p), nil
}

// TestBehindWriterError checks that the destination's error reaches the
// writer, at a later Write and at Close.
func TestBehindWriterError(t *testing.T) {
	w := Behind(&failingWriter{after: chunkSize})
	piece := make([]byte, chunkSize)
	var err error
	for i := 0; i < 4*behindBuffers && err == nil; i++ {
		_, err = w.Write(piece)
	}
	if !errors.Is(err, errFull) {
		t.Errorf("Write after the destination failed: %v, want %v", err, errFull)
	}
	if err := w.Close(); !errors.Is(err, errFull) {
		t.Errorf("Close: %v, want %v", err, errFull)
	}
}
