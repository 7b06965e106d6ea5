package testimage

import (
	"archive/tar"
	"bufio"
	// go-digest hashes through crypto.SHA256, which only a linked sha256 provides.
	_ "crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Compression is how a layer blob is compressed.
type Compression int

// Gzip is the zero value because it is what registries mostly serve.
const (
	Gzip Compression = iota
	Zstd
	None
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	case None:
		return "none"
	}
	return fmt.Sprintf("Compression(%d)", int(c))
}

func (c Compression) mediaType() (string, error) {
	switch c {
	case Gzip:
		return ocispec.MediaTypeImageLayerGzip, nil
	case Zstd:
		return ocispec.MediaTypeImageLayerZstd, nil
	case None:
		return ocispec.MediaTypeImageLayer, nil
	}
	return "", fmt.Errorf("unknown compression %v", c)
}

func (c Compression) compressor(w io.Writer) (io.WriteCloser, error) {
	switch c {
	case Gzip:
		return gzip.NewWriter(w), nil
	case Zstd:
		// One encoder goroutine keeps memory small; the output is the same.
		return zstd.NewWriter(w, zstd.WithEncoderConcurrency(1))
	case None:
		return nopCloser{w}, nil
	}
	return nil, fmt.Errorf("unknown compression %v", c)
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// Layer is one layer's tar stream.
type Layer struct {
	// Entries are written in order.
	Entries     []Entry
	Compression Compression
	// Stream, when set, is called after Entries are written and adds
	// members of its own, so a layer of a million entries is generated
	// while it is written instead of sitting in memory.
	Stream func(tw *tar.Writer) error
	// WrongDiffID makes the config list a diff_id that is not this layer's,
	// for tests of importers that must refuse such an image.
	WrongDiffID bool
}

// Image is one single-platform image.
type Image struct {
	// Name is the org.opencontainers.image.ref.name of the image in index.json.
	Name   string
	Layers []Layer
	// OS, Arch and Variant default to linux/amd64 with no variant.
	OS, Arch, Variant string
}

func (img Image) platform() ocispec.Platform {
	p := ocispec.Platform{OS: img.OS, Architecture: img.Arch, Variant: img.Variant}
	if p.OS == "" {
		p.OS = "linux"
	}
	if p.Architecture == "" {
		p.Architecture = "amd64"
	}
	return p
}

// withCompression returns copies of ls compressed with c, leaving the
// caller's layers as they were.
func withCompression(c Compression, ls []Layer) []Layer {
	ls = slices.Clone(ls)
	for i := range ls {
		ls[i].Compression = c
	}
	return ls
}

// WriteLayout writes images into the OCI image layout dir, creating it if
// needed. An existing layout is added to: an image whose Name is already in
// index.json replaces that entry, as retagging does. It returns one manifest
// descriptor per image, as listed in index.json.
func WriteLayout(dir string, images ...Image) ([]ocispec.Descriptor, error) {
	if err := initLayout(dir); err != nil {
		return nil, err
	}
	descs := make([]ocispec.Descriptor, 0, len(images))
	for _, img := range images {
		w, err := writeImage(dir, img)
		if err != nil {
			return nil, err
		}
		descs = append(descs, withRefName(w.desc, img.Name))
	}
	if err := addToIndex(dir, descs); err != nil {
		return nil, fmt.Errorf("update index of %s: %w", dir, err)
	}
	return descs, nil
}

// WriteIndexImage writes images as the platforms of one image index named
// name, the shape of a multi-platform image in a registry. The images' own
// Names are not used. It returns the index's descriptor.
func WriteIndexImage(dir, name string, images ...Image) (ocispec.Descriptor, error) {
	if err := initLayout(dir); err != nil {
		return ocispec.Descriptor{}, err
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	for i, img := range images {
		w, err := writeImage(dir, img)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("platform %d of index %s: %w", i, name, err)
		}
		index.Manifests = append(index.Manifests, w.desc)
	}
	desc, err := writeJSONBlob(dir, ocispec.MediaTypeImageIndex, index)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("write index %s: %w", name, err)
	}
	desc = withRefName(desc, name)
	if err := addToIndex(dir, []ocispec.Descriptor{desc}); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("update index of %s: %w", dir, err)
	}
	return desc, nil
}

// WriteLayoutTar writes the layout WriteLayout would write as a tar file at
// path, the form skopeo calls oci-archive.
func WriteLayoutTar(path string, images ...Image) error {
	return writeArchive(path, func(stage, _ string) error {
		_, err := WriteLayout(stage, images...)
		return err
	})
}

// BlobPath is where a layout keeps the blob d, for tests that read or
// damage it.
func BlobPath(dir string, d digest.Digest) string {
	return filepath.Join(dir, ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
}

// ReadImage reads back the manifest and config of a manifest descriptor
// ReadIndex reads an OCI layout's index.json.
func ReadIndex(dir string) (ocispec.Index, error) {
	var idx ocispec.Index
	err := readJSON(filepath.Join(dir, ocispec.ImageIndexFile), &idx)
	return idx, err
}

// returned by WriteLayout.
func ReadImage(dir string, manifest ocispec.Descriptor) (ocispec.Manifest, ocispec.Image, error) {
	var m ocispec.Manifest
	var c ocispec.Image
	if err := readJSON(BlobPath(dir, manifest.Digest), &m); err != nil {
		return m, c, fmt.Errorf("read manifest: %w", err)
	}
	if err := readJSON(BlobPath(dir, m.Config.Digest), &c); err != nil {
		return m, c, fmt.Errorf("read config of %s: %w", manifest.Digest, err)
	}
	return m, c, nil
}

func withRefName(d ocispec.Descriptor, name string) ocispec.Descriptor {
	if name != "" {
		d.Annotations = map[string]string{ocispec.AnnotationRefName: name}
	}
	return d
}

func initLayout(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, ocispec.ImageBlobsDir, digest.SHA256.String()), 0o755); err != nil {
		return fmt.Errorf("create layout %s: %w", dir, err)
	}
	return writeJSONFile(filepath.Join(dir, ocispec.ImageLayoutFile), ocispec.ImageLayout{Version: ocispec.ImageLayoutVersion})
}

// addToIndex adds descs to dir's index.json, dropping older entries that
// carry a ref name one of descs carries.
func addToIndex(dir string, descs []ocispec.Descriptor) error {
	path := filepath.Join(dir, ocispec.ImageIndexFile)
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
	}
	if err := readJSON(path, &index); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	index.Manifests = slices.DeleteFunc(index.Manifests, func(old ocispec.Descriptor) bool {
		name, ok := old.Annotations[ocispec.AnnotationRefName]
		return ok && slices.ContainsFunc(descs, func(d ocispec.Descriptor) bool {
			return d.Annotations[ocispec.AnnotationRefName] == name
		})
	})
	index.Manifests = append(index.Manifests, descs...)
	return writeJSONFile(path, index)
}

type writtenImage struct {
	desc     ocispec.Descriptor
	manifest ocispec.Manifest
}

func writeImage(dir string, img Image) (writtenImage, error) {
	created := DefaultModTime
	config := ocispec.Image{
		Created:  &created,
		Platform: img.platform(),
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{}},
	}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Layers:    []ocispec.Descriptor{},
	}
	for i, l := range img.Layers {
		desc, diffID, err := writeLayer(dir, l)
		if err != nil {
			return writtenImage{}, fmt.Errorf("write layer %d of %s: %w", i, img.Name, err)
		}
		if l.WrongDiffID {
			diffID = digest.FromString("not the diff_id of " + diffID.String())
		}
		m.Layers = append(m.Layers, desc)
		config.RootFS.DiffIDs = append(config.RootFS.DiffIDs, diffID)
	}
	var err error
	if m.Config, err = writeJSONBlob(dir, ocispec.MediaTypeImageConfig, config); err != nil {
		return writtenImage{}, fmt.Errorf("write config of %s: %w", img.Name, err)
	}
	desc, err := writeJSONBlob(dir, ocispec.MediaTypeImageManifest, m)
	if err != nil {
		return writtenImage{}, fmt.Errorf("write manifest of %s: %w", img.Name, err)
	}
	p := config.Platform
	desc.Platform = &p
	return writtenImage{desc: desc, manifest: m}, nil
}

// writeLayer writes l's blob and returns its descriptor and diff_id.
func writeLayer(dir string, l Layer) (ocispec.Descriptor, digest.Digest, error) {
	mediaType, err := l.Compression.mediaType()
	if err != nil {
		return ocispec.Descriptor{}, "", err
	}
	diffID := digest.SHA256.Digester()
	desc, err := writeBlob(dir, mediaType, func(w io.Writer) error {
		cw, err := l.Compression.compressor(w)
		if err != nil {
			return err
		}
		tw := tar.NewWriter(io.MultiWriter(cw, diffID.Hash()))
		for _, e := range l.Entries {
			if err := e.AddTo(tw); err != nil {
				return err
			}
		}
		if l.Stream != nil {
			if err := l.Stream(tw); err != nil {
				return fmt.Errorf("stream entries: %w", err)
			}
		}
		if err := tw.Close(); err != nil {
			return fmt.Errorf("finish tar: %w", err)
		}
		if err := cw.Close(); err != nil {
			return fmt.Errorf("finish %v stream: %w", l.Compression, err)
		}
		return nil
	})
	return desc, diffID.Digest(), err
}

func writeJSONBlob(dir, mediaType string, v any) (ocispec.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	return writeBlob(dir, mediaType, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// writeBlob stores what write writes as a blob of dir. The bytes are hashed
// on their way to a temporary file that is renamed to its digest once
// complete, so no blob is held in memory and no partial blob has a
// digest's name.
func writeBlob(dir, mediaType string, write func(io.Writer) error) (ocispec.Descriptor, error) {
	f, err := os.CreateTemp(filepath.Join(dir, ocispec.ImageBlobsDir, digest.SHA256.String()), ".partial-")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	d := digest.SHA256.Digester()
	cw := &countingWriter{w: io.MultiWriter(f, d.Hash())}
	bw := bufio.NewWriterSize(cw, 1<<16)
	if err := write(bw); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := bw.Flush(); err != nil {
		return ocispec.Descriptor{}, err
	}
	// Blobs are readable by all so tests running without root can open them.
	if err := f.Chmod(0o644); err != nil {
		return ocispec.Descriptor{}, err
	}
	if err := f.Close(); err != nil {
		return ocispec.Descriptor{}, err
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: d.Digest(), Size: cw.n}
	if err := os.Rename(f.Name(), BlobPath(dir, desc.Digest)); err != nil {
		return ocispec.Descriptor{}, err
	}
	return desc, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", filepath.Base(path), err)
	}
	return os.WriteFile(path, b, 0o644)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// writeArchive calls fill with two empty directories and writes the first,
// stage, as a tar at path; scratch is for files the archive does not keep.
// Both sit beside path so large layers are linked or renamed, not copied
// across file systems.
func writeArchive(path string, fill func(stage, scratch string) error) error {
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".testimage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	stage, scratch := filepath.Join(tmp, "stage"), filepath.Join(tmp, "scratch")
	for _, d := range []string{stage, scratch} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := fill(stage, scratch); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tarDir(path, stage); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// tarDir writes root's tree as a tar at path, in lexical order with fixed
// owners, modes and mtimes so the same tree gives the same bytes.
func tarDir(path, root string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<16)
	tw := tar.NewWriter(bw)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: DefaultModTime, Typeflag: tar.TypeReg}
		if d.IsDir() {
			h.Name += "/"
			h.Mode = 0o755
			h.Typeflag = tar.TypeDir
			return tw.WriteHeader(h)
		}
		return copyInto(tw, h, p)
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return f.Close()
}

func copyInto(tw *tar.Writer, h *tar.Header, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	h.Size = info.Size()
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("add %s: %w", h.Name, err)
	}
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("add %s: %w", h.Name, err)
	}
	return nil
}
