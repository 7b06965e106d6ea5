package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"

	"github.com/layerfs/layerfs/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// Source is where an image's blobs come from: an OCI image layout, a
// docker-archive, a registry. Every image, imported or pulled, enters the
// store through StoreImage, which asks its source only for what the
// store lacks.
type Source interface {
	// Open opens the source's copy of blob desc: a manifest, index or
	// config, or a layer extracted as it is read.
	Open(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
}

// SourceFunc is a Source made of its Open.
type SourceFunc func(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)

// Open calls f.
func (f SourceFunc) Open(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return f(ctx, desc)
}

// Downloader is a Source whose layer blobs are downloaded into the store
// first, resumably, and extracted from the store's copy while the other
// layers download: a registry.
type Downloader interface {
	Source
	// Layer is told of each layer before anything is done for it; have
	// says the store holds its blob. What it returns follows the layer
	// to its end.
	Layer(desc ocispec.Descriptor, have bool) LayerProgress
	// Download brings blob desc into the store, counting its bytes on m.
	Download(ctx context.Context, desc ocispec.Descriptor, m Meter) error
}

// LayerProgress follows one layer of a Downloader.
type LayerProgress interface {
	Meter
	// Fetched is called when the blob is in the store, verified.
	Fetched()
	// Done is called last, with nil when the layer is extracted.
	Done(err error)
}

// Meter counts a blob's bytes as they arrive.
type Meter interface {
	// Set says how many bytes are there: those a resumed fetch found
	// staged, or 0 when the fetch starts over.
	Set(have int64)
	// Add counts n more bytes arrived.
	Add(n int)
}

// Imported is one image an import stored.
type Imported struct {
	Name     string
	Manifest digest.Digest
}

// Skipped is an entry of a source that an import left out as no image.
type Skipped struct {
	Digest digest.Digest
	What   string
}

// StoreImage stores an image given its manifest bytes: config, every layer
// extracted (in parallel, bounded by the cores), the manifest, and last
// its name. Blobs the store lacks come from src.
func (s *Store) StoreImage(ctx context.Context, name string, desc ocispec.Descriptor, mdata []byte, src Source) error {
	if err := reference.CheckName(name); err != nil {
		return err
	}
	if err := s.StoreManifest(ctx, desc, mdata, src); err != nil {
		return err
	}
	return s.Tag(name, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size})
}

// Blob is a manifest or index with its bytes.
type Blob struct {
	ocispec.Descriptor
	Data []byte
}

// StoreIndex stores the image manifests chosen of index top (each with its
// config and layers), then top and the indexes it nests, and last names
// top: the name refers to the index, and the platforms stored are those
// whose manifests the store holds.
func (s *Store) StoreIndex(ctx context.Context, name string, top Blob, nested, manifests []Blob, src Source) error {
	if err := reference.CheckName(name); err != nil {
		return err
	}
	for _, m := range manifests {
		if err := s.StoreManifest(ctx, m.Descriptor, m.Data, src); err != nil {
			return fmt.Errorf("platform %s: %w", PlatformNames([]ocispec.Descriptor{m.Descriptor}), err)
		}
	}
	for _, b := range append([]Blob{top}, nested...) {
		if err := s.PutBlob(b.Descriptor, bytes.NewReader(b.Data)); err != nil {
			return err
		}
	}
	return s.Tag(name, ocispec.Descriptor{MediaType: top.MediaType, Digest: top.Digest, Size: top.Size})
}

// StoreManifest stores an image's config, layers and manifest, unnamed.
func (s *Store) StoreManifest(ctx context.Context, desc ocispec.Descriptor, mdata []byte, src Source) error {
	m, err := ParseManifest(mdata)
	if err != nil {
		return err
	}
	cdata, err := s.FetchSmall(ctx, m.Config, src)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(cdata, len(m.Layers))
	if err != nil {
		return err
	}
	if err := s.storeLayers(ctx, m.Layers, cfg.RootFS.DiffIDs, src); err != nil {
		return err
	}
	if err := s.PutBlob(m.Config, bytes.NewReader(cdata)); err != nil {
		return err
	}
	if err := s.PutBlob(desc, bytes.NewReader(mdata)); err != nil {
		return err
	}
	return s.checkLowerLinks(m.Layers)
}

// storeLayers brings every layer into the store, extracted, each once:
// at most one extraction per core, as extraction is CPU-bound, however
// many downloads run.
func (s *Store) storeLayers(ctx context.Context, layers []ocispec.Descriptor, diffIDs []digest.Digest, src Source) error {
	extractions := make(chan struct{}, runtime.GOMAXPROCS(0))
	errs := make([]error, len(layers))
	var wg sync.WaitGroup
	seen := map[digest.Digest]bool{}
	for i, l := range layers {
		// A layer an image lists twice is stored once, and a bad one is
		// reported once.
		if seen[l.Digest] {
			continue
		}
		seen[l.Digest] = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.storeLayer(ctx, l, diffIDs[i], src, extractions)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *Store) storeLayer(ctx context.Context, l ocispec.Descriptor, diffID digest.Digest, src Source, extractions chan struct{}) error {
	extract := func() error {
		select {
		case extractions <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-extractions }()
		return s.ExtractLayer(ctx, l, diffID, func() (io.ReadCloser, error) { return src.Open(ctx, l) })
	}
	dl, ok := src.(Downloader)
	if !ok {
		return extract()
	}
	have := s.HasBlob(l.Digest)
	if have && s.Extracted(l.Digest) {
		logrus.WithField("layer", l.Digest).Debug("layer already in the store")
		dl.Layer(l, true).Done(nil)
		return nil
	}
	prog := dl.Layer(l, have)
	err := func() error {
		if !have {
			if err := dl.Download(ctx, l, prog); err != nil {
				return fmt.Errorf("layer %s: %w", l.Digest, err)
			}
		}
		prog.Fetched()
		return extract()
	}()
	if err != nil && ctx.Err() != nil && s.HasBlob(l.Digest) {
		// Interrupted after the download: the blob is whole, and a
		// directory of its own, left empty, has layers list it as not
		// extracted yet, for the next pull to extract and gc to free.
		// An extraction that failed otherwise left none.
		_ = os.MkdirAll(s.layerDir(l.Digest), dirMode)
	}
	prog.Done(err)
	return err
}

// FetchSmall reads a manifest, index or config from the store, or from
// src, checked.
func (s *Store) FetchSmall(ctx context.Context, desc ocispec.Descriptor, src Source) ([]byte, error) {
	// An index.json may name a manifest by no digest at all; the store's
	// paths are made from digests, so it is refused before any is.
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("descriptor digest %q: %w", desc.Digest, err)
	}
	if desc.Size > MaxMetadataSize {
		return nil, fmt.Errorf("blob %s: larger than %d bytes", desc.Digest, MaxMetadataSize)
	}
	if s.HasBlob(desc.Digest) {
		return s.ReadBlob(desc.Digest)
	}
	r, err := src.Open(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	defer r.Close()
	data, err := ReadMetadata(r)
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

// SelectManifests walks image index top and the indexes it nests (read
// gives each one's bytes) and returns its image manifests for platform p
// (the host's when zero), or for every platform when all is set, with
// the entries that are no image, skipped. An entry whose descriptor names
// no platform is for the platform its config names, as containerd reads
// it: blob, when not nil, gives a manifest's and a config's bytes.
func SelectManifests(top ocispec.Descriptor, read, blob func(ocispec.Descriptor) ([]byte, error), p Platform, all bool) (chosen []ocispec.Descriptor, skipped []Skipped, err error) {
	var images []ocispec.Descriptor
	err = walkIndex(read, top, func(d ocispec.Descriptor) error {
		switch {
		case IsAttestation(d):
			what := "attestation manifest"
			if of := d.Annotations[annotationReferenceDigest]; of != "" {
				what += " for " + of
			}
			skipped = append(skipped, Skipped{Digest: d.Digest, What: what})
		case !IsManifest(d.MediaType):
			skipped = append(skipped, Skipped{Digest: d.Digest, What: DescribeArtifact(d)})
		default:
			images = append(images, d)
		}
		return nil
	})
	if err != nil || all {
		return images, skipped, err
	}
	if p == (Platform{}) {
		p = HostPlatform()
	}
	for i, d := range images {
		if d.Platform == nil && blob != nil {
			// One that cannot be read is left unknown: a sparse index
			// lists platforms whose manifests were never copied.
			images[i].Platform, _ = ManifestPlatform(d, blob)
		}
	}
	i := p.best(images)
	if i < 0 {
		return nil, skipped, fmt.Errorf("index %s: no manifest for platform %s (has %s)", top.Digest, p, PlatformNames(images))
	}
	return images[i : i+1], skipped, nil
}

// ManifestPlatform is the platform the config of manifest d names, nil
// when it names none; blob gives the manifest's and the config's bytes,
// each checked against its digest.
func ManifestPlatform(d ocispec.Descriptor, blob func(ocispec.Descriptor) ([]byte, error)) (*ocispec.Platform, error) {
	read := func(d ocispec.Descriptor) ([]byte, error) {
		data, err := blob(d)
		if err != nil {
			return nil, err
		}
		if digest.FromBytes(data) != d.Digest {
			return nil, fmt.Errorf("blob %s: %w", d.Digest, ErrMismatch)
		}
		return data, nil
	}
	data, err := read(d)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(data)
	if err != nil {
		return nil, err
	}
	cdata, err := read(m.Config)
	if err != nil {
		return nil, err
	}
	var c ocispec.Image
	if err := json.Unmarshal(cdata, &c); err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	return configPlatform(c), nil
}
