// Package erofs writes a view as an EROFS image: a complete one, file
// contents included, for a VM's disk (Build), or a metadata-only one whose
// regular files point into the store's objects through overlayfs's
// metacopy and redirect xattrs, for a composefs-style kernel mount
// (BuildMeta). It reads its input only through io/fs, each FileInfo's
// Sys() a *view.Attr as view.NewFS gives them, so any view, or any
// directory through DirFS, can be written.
//
// A VM's root disk from an image of a store, with v its view opened as
// package view shows and out an *os.File:
//
//	res, err := erofs.Build(out, view.NewFS(v, view.ByName(s.OpenObject)),
//		erofs.Options{Seed: seed})
//
// seed names the view, for its UUID: layerfs build's is the layer
// digests joined by commas, lowest first, so that seed gives the bytes
// the command gives.
package erofs

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"

	goerofs "github.com/erofs/go-erofs"
	"github.com/layerfs/layerfs/view"
)

// Options makes a build reproducible: the same source and options give the
// same bytes, wherever and whenever the build runs.
type Options struct {
	// Seed derives the image's UUID (e.g. the view's layer digests); an
	// empty seed gives a zero UUID.
	Seed string
	// BuildTime is stored in the superblock, in seconds; zero keeps
	// images independent of when they were made.
	BuildTime uint64
	// Digest asks for Result.Digest, which costs reading the finished
	// image back whole.
	Digest bool
	// Redirect gives BuildMeta the path, beneath the kernel mount's
	// data-only layer, of a non-empty regular file's bytes; nil means
	// ObjectPath of its object, for a data-only layer laid out as the
	// store's objects directory.
	Redirect func(a *view.Attr) string
}

// Output is where an image goes: the writer seeks back to fill in offsets,
// and the finished image's directories are read back to be rewritten.
type Output interface {
	io.WriteSeeker
	io.ReaderAt
}

// MetaOutput is where a metadata-only image goes: written from its start
// on, with the few fields known only at the end written in place, and
// read back for its digest.
type MetaOutput interface {
	io.WriterAt
	io.ReaderAt
}

// Result describes a written image.
type Result struct {
	// Digest is the sha256 of the whole image ("sha256:<hex>"), when
	// Options.Digest asks for it.
	Digest string `json:"digest,omitempty"`
	Size   int64  `json:"size"`
}

// readLinkFS is how a source gives symlink targets (as io/fs.ReadLinkFS).
type readLinkFS interface {
	fs.FS
	ReadLink(name string) (string, error)
}

// Build writes src as a complete EROFS image to out.
func Build(out Output, src fs.FS, opts Options) (Result, error) {
	rl, err := checkSource(src)
	if err != nil {
		return Result{}, err
	}
	start, err := out.Seek(0, io.SeekCurrent)
	if err != nil {
		return Result{}, fmt.Errorf("erofs: output position: %w", err)
	}
	if start != 0 {
		return Result{}, fmt.Errorf("erofs: output must start at offset 0, not %d", start)
	}
	adapted := &sourceFS{src: rl, links: newLinkTable(), ahead: newPrefetcher(), regular: map[string]fs.FileInfo{}, subdirs: map[string]uint32{}}
	defer adapted.ahead.stop()
	buffered := newWriteBuffer(out)
	w := goerofs.Create(buffered, goerofs.WithBuildTime(opts.BuildTime, 0))
	if err := w.CopyFrom(adapted); err != nil {
		return Result{}, fmt.Errorf("erofs: copy source: %w", err)
	}
	if err := adapted.setDirLinks(w); err != nil {
		return Result{}, fmt.Errorf("erofs: %w", err)
	}
	if err := errors.Join(w.Close(), buffered.flush()); err != nil {
		return Result{}, fmt.Errorf("erofs: write image: %w", err)
	}
	size, err := out.Seek(0, io.SeekEnd)
	if err != nil {
		return Result{}, fmt.Errorf("erofs: image size: %w", err)
	}
	if err := rewriteNids(out, size, adapted.links, uuidFrom(opts.Seed)); err != nil {
		return Result{}, fmt.Errorf("erofs: %w", err)
	}
	return finished(out, size, opts.Digest)
}

// BuildMeta writes src as a metadata-only EROFS image to out, for
// overlayfs with the store's objects directory as a data-only lower layer
// (lowerdir=IMAGE::DATA): each regular file with content has its size,
// no data blocks, and the metacopy and redirect xattrs that send overlayfs
// to its bytes in DATA (Options.Redirect). The source's own overlay xattrs are escaped
// so that overlayfs shows them instead of obeying them.
func BuildMeta(out MetaOutput, src fs.FS, opts Options) (Result, error) {
	rl, err := checkSource(src)
	if err != nil {
		return Result{}, err
	}
	return buildMeta(out, rl, opts)
}

// checkSource makes sure src can give what an image holds.
func checkSource(src fs.FS) (readLinkFS, error) {
	rl, ok := src.(readLinkFS)
	if !ok {
		return nil, errors.New("erofs: source has no ReadLink method for symlink targets")
	}
	if _, ok := src.(fs.ReadDirFS); !ok {
		return nil, errors.New("erofs: source is not an fs.ReadDirFS")
	}
	return rl, nil
}

// writeBuffer gathers go-erofs's many small writes (directory entries,
// padding, metadata) into few system calls; large writes, file contents,
// go straight through. A seek writes out what is gathered first.
type writeBuffer struct {
	out io.WriteSeeker
	buf []byte
}

func newWriteBuffer(out io.WriteSeeker) *writeBuffer {
	return &writeBuffer{out: out, buf: make([]byte, 0, 1<<20)}
}

func (b *writeBuffer) Write(p []byte) (int, error) {
	large := len(p) >= cap(b.buf)/4
	if large || len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flush(); err != nil {
			return 0, err
		}
	}
	if large {
		return b.out.Write(p)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

func (b *writeBuffer) Seek(offset int64, whence int) (int64, error) {
	if err := b.flush(); err != nil {
		return 0, err
	}
	return b.out.Seek(offset, whence)
}

func (b *writeBuffer) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.out.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// ObjectPath is where overlayfs finds an object's bytes, relative to the
// store's objects directory (docs/store.md: objects/<alg>/<xx>/<hex>), as
// trusted.overlay.redirect gives it.
func ObjectPath(object string) (string, error) {
	alg, hexDigest, ok := strings.Cut(object, ":")
	if !ok || alg == "" || len(hexDigest) < 3 || strings.ContainsAny(hexDigest, "/\x00") || strings.Contains(alg, "/") {
		return "", fmt.Errorf("erofs: object name %q is not ALG:HEX", object)
	}
	return "/" + alg + "/" + hexDigest[:2] + "/" + hexDigest, nil
}

// Overlay xattrs BuildMeta writes and escapes (docs/erofs.md).
const (
	overlayPrefix = "trusted.overlay."
	escapedPrefix = "trusted.overlay.overlay."
	metacopyXattr = "trusted.overlay.metacopy"
	redirectXattr = "trusted.overlay.redirect"
)

// uuidFrom derives the image's UUID from seed, which go-erofs leaves zero:
// a name-based (version 5 style) UUID, so equal seeds give equal images.
func uuidFrom(seed string) [16]byte {
	var uuid [16]byte
	if seed != "" {
		sum := sha256.Sum256([]byte("layerfs erofs uuid\x00" + seed))
		copy(uuid[:], sum[:16])
		uuid[6] = uuid[6]&0x0f | 0x50
		uuid[8] = uuid[8]&0x3f | 0x80
	}
	return uuid
}

// finished is the Result of an image of size bytes written to out, its
// digest read back from out when withDigest asks for it.
func finished(out io.ReaderAt, size int64, withDigest bool) (Result, error) {
	res := Result{Size: size}
	if withDigest {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(out, 0, size)); err != nil {
			return Result{}, fmt.Errorf("erofs: read back image for its digest: %w", err)
		}
		res.Digest = "sha256:" + hex.EncodeToString(h.Sum(nil))
	}
	return res, nil
}
