package store

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"runtime"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	annotationContainerdName    = "io.containerd.image.name"
)

// Imported is one image an import stored.
type Imported struct {
	Name     string
	Manifest digest.Digest
}

// Platform selects one manifest of an image index.
type Platform struct {
	OS, Architecture, Variant string
}

// HostPlatform is the platform this binary runs on.
func HostPlatform() Platform {
	p := Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}
	if p.Architecture == "arm" {
		p.Variant = "v7"
	}
	return p
}

// ParsePlatform reads "os/arch[/variant]".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func (p Platform) matches(q *ocispec.Platform) bool {
	if q == nil {
		return false
	}
	return q.OS == p.OS && q.Architecture == p.Architecture && (p.Variant == "" || q.Variant == p.Variant)
}

// Import stores every image of an OCI image layout (a directory or a tar)
// or a docker-archive, under the names it gives them.
func (s *Store) Import(ctx context.Context, src string, platform Platform) ([]Imported, error) {
	release, err := s.Writing()
	if err != nil {
		return nil, err
	}
	defer release()
	fsys, closer, err := openSource(src)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	defer closer.Close()
	var out []Imported
	if _, err := fs.Stat(fsys, "manifest.json"); err == nil {
		out, err = s.importDockerArchive(ctx, fsys)
		if err != nil {
			return nil, fmt.Errorf("import %s: %w", src, err)
		}
		return out, nil
	}
	if _, err := fs.Stat(fsys, "index.json"); err != nil {
		return nil, fmt.Errorf("import %s: %w", src, errNotImage)
	}
	out, err = s.importLayout(ctx, fsys, platform)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", src, err)
	}
	return out, nil
}

// readSmall reads a JSON document of at most maxMetadataSize bytes.
func readSmall(fsys fs.FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := readMetadata(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return data, nil
}

func layoutBlob(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}

// readLayoutBlob reads a small blob of a layout and checks it against desc.
func readLayoutBlob(fsys fs.FS, desc ocispec.Descriptor) ([]byte, error) {
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("descriptor digest %q: %w", desc.Digest, err)
	}
	data, err := readSmall(fsys, layoutBlob(desc.Digest))
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if int64(len(data)) != desc.Size {
		return nil, fmt.Errorf("blob %s: %w: %d bytes, want %d", desc.Digest, ErrMismatch, len(data), desc.Size)
	}
	if got := digest.FromBytes(data); got != desc.Digest {
		return nil, fmt.Errorf("blob %s: %w: digest %s", desc.Digest, ErrMismatch, got)
	}
	return data, nil
}

func (s *Store) importLayout(ctx context.Context, fsys fs.FS, platform Platform) ([]Imported, error) {
	data, err := readSmall(fsys, "index.json")
	if err != nil {
		return nil, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	var out []Imported
	for _, desc := range idx.Manifests {
		name := desc.Annotations[annotationContainerdName]
		if name == "" {
			name = desc.Annotations[AnnotationRefName]
		}
		m, err := s.resolvePlatform(fsys, desc, platform)
		if err != nil {
			return nil, imageError(name, desc.Digest, err)
		}
		if err := s.importManifest(ctx, name, m, func(d ocispec.Descriptor) (io.ReadCloser, error) {
			return fsys.Open(layoutBlob(d.Digest))
		}); err != nil {
			return nil, imageError(name, desc.Digest, err)
		}
		out = append(out, Imported{Name: name, Manifest: m.Digest})
	}
	if len(out) == 0 {
		return nil, errors.New("index.json lists no image")
	}
	return out, nil
}

func imageError(name string, d digest.Digest, err error) error {
	if name == "" {
		name = d.String()
	}
	return fmt.Errorf("image %s: %w", name, err)
}

// resolvePlatform follows image indexes down to the manifest of platform.
func (s *Store) resolvePlatform(fsys fs.FS, desc ocispec.Descriptor, platform Platform) (ocispec.Descriptor, error) {
	for depth := 0; ; depth++ {
		if desc.MediaType != ocispec.MediaTypeImageIndex && desc.MediaType != mediaTypeDockerManifestList {
			return desc, nil
		}
		if depth > 4 {
			return desc, errors.New("image indexes nested too deep")
		}
		data, err := readLayoutBlob(fsys, desc)
		if err != nil {
			return desc, err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return desc, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		next, err := PickPlatform(idx, platform)
		if err != nil {
			return desc, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		desc = next
	}
}

// PickPlatform chooses the manifest of platform from an image index.
func PickPlatform(idx ocispec.Index, platform Platform) (ocispec.Descriptor, error) {
	var seen []string
	for _, m := range idx.Manifests {
		if platform.matches(m.Platform) {
			return m, nil
		}
		if m.Platform != nil {
			seen = append(seen, Platform{m.Platform.OS, m.Platform.Architecture, m.Platform.Variant}.String())
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no manifest for platform %s (has %s)", platform, strings.Join(seen, ", "))
}

// BlobOpener opens the source's copy of a blob.
type BlobOpener func(ocispec.Descriptor) (io.ReadCloser, error)

// ImportManifest stores the image whose manifest descriptor is desc,
// reading blobs the store lacks with open, and names it.
func (s *Store) importManifest(ctx context.Context, name string, desc ocispec.Descriptor, open BlobOpener) error {
	if desc.MediaType != ocispec.MediaTypeImageManifest && desc.MediaType != mediaTypeDockerManifest {
		return fmt.Errorf("manifest %s: unsupported media type %q", desc.Digest, desc.MediaType)
	}
	mdata, err := s.fetchSmall(desc, open)
	if err != nil {
		return err
	}
	return s.StoreImage(ctx, name, desc, mdata, open)
}

// fetchSmall reads a small blob from the store, or from open and checks it.
func (s *Store) fetchSmall(desc ocispec.Descriptor, open BlobOpener) ([]byte, error) {
	// An index.json may name a manifest by no digest at all; the store's
	// paths are made from digests, so it is refused before any is.
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("descriptor digest %q: %w", desc.Digest, err)
	}
	if s.HasBlob(desc.Digest) {
		return s.ReadBlob(desc.Digest)
	}
	r, err := open(desc)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer r.Close()
	data, err := readMetadata(r)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, ErrMismatch)
	}
	return data, nil
}

// ParseManifest reads an image manifest and checks what layerfs relies on.
func ParseManifest(data []byte) (ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("manifest: %w", err)
	}
	if m.SchemaVersion != 2 {
		return m, fmt.Errorf("manifest: schema version %d, want 2", m.SchemaVersion)
	}
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		if err := d.Digest.Validate(); err != nil {
			return m, fmt.Errorf("manifest: descriptor %q: %w", d.Digest, err)
		}
		if d.Size < 0 {
			return m, fmt.Errorf("manifest: descriptor %s: negative size", d.Digest)
		}
	}
	return m, nil
}

// ParseConfig reads an image config's layer digests.
func ParseConfig(data []byte, layers int) (ocispec.Image, error) {
	var c ocispec.Image
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if len(c.RootFS.DiffIDs) != layers {
		return c, fmt.Errorf("config: %d diff_ids for %d layers", len(c.RootFS.DiffIDs), layers)
	}
	for _, d := range c.RootFS.DiffIDs {
		if err := d.Validate(); err != nil {
			return c, fmt.Errorf("config: diff_id %q: %w", d, err)
		}
	}
	return c, nil
}

// StoreImage stores an image given its manifest bytes: config, every layer
// extracted (in parallel, bounded by the cores), the manifest, and last
// its name. Blobs the store lacks come from open.
func (s *Store) StoreImage(ctx context.Context, name string, desc ocispec.Descriptor, mdata []byte, open BlobOpener) error {
	m, err := ParseManifest(mdata)
	if err != nil {
		return err
	}
	cdata, err := s.fetchSmall(m.Config, open)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(cdata, len(m.Layers))
	if err != nil {
		return err
	}
	if err := s.ExtractLayers(ctx, m.Layers, cfg.RootFS.DiffIDs, open); err != nil {
		return err
	}
	if err := s.PutBlob(m.Config, bytes.NewReader(cdata)); err != nil {
		return err
	}
	if err := s.PutBlob(desc, bytes.NewReader(mdata)); err != nil {
		return err
	}
	if err := s.checkLowerLinks(m.Layers); err != nil {
		return err
	}
	return s.Tag(name, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
}

// ExtractLayers extracts layers in parallel, at most one per core.
func (s *Store) ExtractLayers(ctx context.Context, layers []ocispec.Descriptor, diffIDs []digest.Digest, open BlobOpener) error {
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	errs := make([]error, len(layers))
	var wg sync.WaitGroup
	for i, l := range layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = s.ExtractLayer(ctx, l, diffIDs[i], func() (io.ReadCloser, error) { return open(l) })
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// dockerManifest is one image of a docker-archive's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func (s *Store) importDockerArchive(ctx context.Context, fsys fs.FS) ([]Imported, error) {
	data, err := readSmall(fsys, "manifest.json")
	if err != nil {
		return nil, err
	}
	var images []dockerManifest
	if err := json.Unmarshal(data, &images); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	if len(images) == 0 {
		return nil, errors.New("manifest.json lists no image")
	}
	var out []Imported
	for i, img := range images {
		label := fmt.Sprintf("image %d of manifest.json", i+1)
		if len(img.RepoTags) > 0 {
			label = "image " + img.RepoTags[0]
		}
		imported, err := s.importDockerImage(ctx, fsys, img)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		out = append(out, imported...)
	}
	return out, nil
}

// importDockerImage turns one docker-archive image into an OCI manifest
// over the same config and the archive's layer tars.
func (s *Store) importDockerImage(ctx context.Context, fsys fs.FS, img dockerManifest) ([]Imported, error) {
	cdata, err := readSmall(fsys, path.Clean(img.Config))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(cdata, len(img.Layers))
	if err != nil {
		return nil, err
	}
	m := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cdata), Size: int64(len(cdata))},
	}
	files := map[digest.Digest]string{}
	for i, l := range img.Layers {
		desc, err := dockerLayer(fsys, path.Clean(l), cfg.RootFS.DiffIDs[i])
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l, err)
		}
		files[desc.Digest] = path.Clean(l)
		m.Layers = append(m.Layers, desc)
	}
	open := func(d ocispec.Descriptor) (io.ReadCloser, error) {
		if d.Digest == m.Config.Digest {
			return io.NopCloser(bytes.NewReader(cdata)), nil
		}
		return fsys.Open(files[d.Digest])
	}
	mdata, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	desc := ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(mdata), Size: int64(len(mdata))}
	tags := img.RepoTags
	if len(tags) == 0 {
		tags = []string{""}
	}
	var out []Imported
	for _, tag := range tags {
		name := tag
		if tag != "" {
			name = NormalizeName(tag)
		}
		if err := s.StoreImage(ctx, name, desc, mdata, open); err != nil {
			return nil, err
		}
		out = append(out, Imported{Name: name, Manifest: desc.Digest})
	}
	return out, nil
}

// dockerLayer describes a docker-archive layer file. An uncompressed
// layer's digest is its diff_id, so only a compressed one is hashed first.
func dockerLayer(fsys fs.FS, name string, diffID digest.Digest) (ocispec.Descriptor, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	br := bufio.NewReader(f)
	magic, _ := br.Peek(4)
	compressed := bytes.HasPrefix(magic, []byte{0x1f, 0x8b}) || bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd})
	desc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: diffID, Size: st.Size()}
	if compressed {
		d, err := digest.FromReader(br)
		if err != nil {
			return desc, err
		}
		desc.Digest = d
		desc.MediaType = ocispec.MediaTypeImageLayerGzip
		if magic[0] == 0x28 {
			desc.MediaType = ocispec.MediaTypeImageLayerZstd
		}
	}
	return desc, nil
}
