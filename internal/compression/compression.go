// Package compression tells the compression of a layer or an image archive
// by its magic bytes, and undoes it.
package compression

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Compression formats an archive or a layer may come in, told by magic.
var magics = []struct {
	name  string
	magic []byte
}{
	{"gzip", []byte{0x1f, 0x8b}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0}},
	{"bzip2", []byte("BZh")},
}

// Sniff names the compression br starts with, "" for none.
func Sniff(br *bufio.Reader) string {
	magic, _ := br.Peek(6)
	for _, c := range magics {
		if bytes.HasPrefix(magic, c.magic) {
			return c.name
		}
	}
	return ""
}

// maxZstdWindow is the largest window a zstd frame may ask for, what the
// zstd tool decodes without being told more (--long or --memory). A
// decoder keeps a window of what it decoded, so a frame of a few bytes
// asking for the format's 512 MiB, over a stream of zeros, would hold
// that much memory; every compression level writes at most this.
const maxZstdWindow = 128 << 20

// zstdReader says why a frame's window is refused.
type zstdReader struct{ *zstd.Decoder }

func (z zstdReader) Read(p []byte) (int, error) {
	n, err := z.Decoder.Read(p)
	if errors.Is(err, zstd.ErrWindowSizeExceeded) {
		err = fmt.Errorf("zstd: a frame asks for a window of more than %d MiB, which the zstd tool too decodes only when told to (compressed with --long=28 or more?): %w", maxZstdWindow>>20, err)
	}
	return n, err
}

// NewReader undoes the compression br starts with, as docker load does
// for the archives it takes. done releases the decompressor.
func NewReader(br *bufio.Reader) (io.Reader, func(), error) {
	kind := Sniff(br)
	var r io.Reader
	closer := func() {}
	var err error
	switch kind {
	case "":
		return br, closer, nil
	case "gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(br); err == nil {
			r, closer = zr, func() { zr.Close() }
		}
	case "zstd":
		var zr *zstd.Decoder
		if zr, err = zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxZstdWindow)); err == nil {
			r, closer = zstdReader{zr}, zr.Close
		}
	case "xz":
		r, err = xz.NewReader(br)
	case "bzip2":
		r = bzip2.NewReader(br)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kind, err)
	}
	return r, closer, nil
}
