// Package pull brings images from OCI registries into the store, through
// mirrors first when there are some: every blob verified and resumable,
// layers fetched in parallel and each extracted as soon as it is in.
package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"

	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/errcode"
)

const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	// maxManifestSize is what distribution itself accepts.
	maxManifestSize = 4 << 20
	// DefaultJobs is how many layers download at once unless told.
	DefaultJobs = 3
)

// Options tune a Puller.
type Options struct {
	Platform store.Platform
	// Insecure allows plain HTTP and unverified TLS for every registry;
	// loopback registries get plain HTTP without it.
	Insecure bool
	// Mirrors are tried, in order, for every registry, before those the
	// Config names for it and before the registry itself.
	Mirrors []string
	Config  Config
	// Jobs is how many layers download at once (DefaultJobs when 0).
	Jobs     int
	Progress Progress
}

// Progress is told what a pull does, layer by layer.
type Progress interface {
	// Layer is called once per layer, before its blob is fetched; have
	// says it is in the store already and nothing will be fetched.
	Layer(ref string, desc ocispec.Descriptor, have bool) LayerProgress
}

// LayerProgress follows one layer.
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
	Add(n int)
}

// Puller pulls images into one store.
type Puller struct {
	store  *store.Store
	opts   Options
	client *client
	// extract bounds extractions, which are CPU-bound, to the cores,
	// whatever the number of downloads.
	extract chan struct{}
}

// New returns a Puller for s.
func New(s *store.Store, opts Options) (*Puller, error) {
	if opts.Jobs <= 0 {
		opts.Jobs = DefaultJobs
	}
	if opts.Platform == (store.Platform{}) {
		opts.Platform = store.HostPlatform()
	}
	c, err := newClient(opts.Insecure, opts.Jobs)
	if err != nil {
		return nil, err
	}
	return &Puller{store: s, opts: opts, client: c, extract: make(chan struct{}, runtime.GOMAXPROCS(0))}, nil
}

// Pull stores the image ref names and lists it under the reference's full
// docker form (debian is docker.io/library/debian:latest), as import does
// with a docker-archive's tags.
func (p *Puller) Pull(ctx context.Context, ref string) (store.Imported, error) {
	r, err := store.ParseReference(ref)
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	name := r.String()
	if err := store.CheckImageName(name); err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	release, err := p.store.Writing()
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer release()
	repo, desc, mdata, err := p.resolve(ctx, r)
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	if err := p.pullManifest(ctx, name, repo, desc, mdata); err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	return store.Imported{Name: name, Manifest: desc.Digest}, nil
}

// resolve finds the manifest of the reference's platform, at the first
// mirror that has it, else at the registry, and returns the repository
// that answered.
func (p *Puller) resolve(ctx context.Context, r store.Reference) (*remote.Repository, ocispec.Descriptor, []byte, error) {
	hosts := append(append([]string{}, p.opts.Mirrors...), p.opts.Config.Mirrors[r.Domain]...)
	for _, mirror := range hosts {
		repo, desc, mdata, err := p.resolveAt(ctx, mirror, r)
		if err == nil {
			logrus.WithFields(logrus.Fields{"mirror": mirror, "image": r}).Info("pulling through mirror")
			return repo, desc, mdata, nil
		}
		if ctx.Err() != nil {
			return nil, desc, nil, ctx.Err()
		}
		logrus.WithFields(logrus.Fields{"mirror": mirror, "error": err}).Warn("mirror failed; trying the next")
	}
	return p.resolveAt(ctx, r.Domain, r)
}

func (p *Puller) resolveAt(ctx context.Context, host string, r store.Reference) (*remote.Repository, ocispec.Descriptor, []byte, error) {
	repo, err := p.client.repository(ctx, host, r.Path)
	if err != nil {
		return nil, ocispec.Descriptor{}, nil, err
	}
	tag := r.Tag
	if r.Digest != "" {
		tag = r.Digest
	}
	desc, data, err := fetchManifest(ctx, repo, tag)
	if err != nil {
		return nil, desc, nil, describe(ctx, repo, host, r, err)
	}
	if r.Digest != "" && desc.Digest.String() != r.Digest {
		return nil, desc, nil, fmt.Errorf("registry %s: %w: manifest digest %s", host, store.ErrMismatch, desc.Digest)
	}
	for depth := 0; isIndex(desc.MediaType); depth++ {
		if depth > 4 {
			return nil, desc, nil, errors.New("image indexes nested too deep")
		}
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return nil, desc, nil, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		next, err := store.PickPlatform(idx, p.opts.Platform)
		if err != nil {
			return nil, desc, nil, fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		if desc, data, err = fetchManifest(ctx, repo, next.Digest.String()); err != nil {
			return nil, desc, nil, fmt.Errorf("manifest %s: %w", next.Digest, describe(ctx, repo, host, r, err))
		}
		if desc.Digest != next.Digest {
			return nil, desc, nil, fmt.Errorf("manifest %s: %w: digest %s", next.Digest, store.ErrMismatch, desc.Digest)
		}
	}
	if desc.MediaType != ocispec.MediaTypeImageManifest && desc.MediaType != mediaTypeDockerManifest {
		return nil, desc, nil, fmt.Errorf("manifest %s: unsupported media type %q", desc.Digest, desc.MediaType)
	}
	return repo, desc, data, nil
}

func isIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == mediaTypeDockerManifestList
}

// fetchManifest reads a manifest by tag or digest. Its descriptor is made
// from the bytes themselves, not from what the registry says of them.
func fetchManifest(ctx context.Context, repo *remote.Repository, reference string) (ocispec.Descriptor, []byte, error) {
	desc, rc, err := repo.FetchReference(ctx, reference)
	if err != nil {
		return desc, nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return desc, nil, err
	}
	if len(data) > maxManifestSize {
		return desc, nil, fmt.Errorf("manifest larger than %d bytes", maxManifestSize)
	}
	desc.Digest, desc.Size = digest.FromBytes(data), int64(len(data))
	// A manifest's own mediaType is what a registry serving it as plain
	// JSON would lose.
	var head struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(data, &head) == nil && head.MediaType != "" {
		desc.MediaType = head.MediaType
	}
	return desc, data, nil
}

// describe turns what a registry answered into what failed.
func describe(ctx context.Context, repo *remote.Repository, host string, r store.Reference, err error) error {
	var resp *errcode.ErrorResponse
	var op *net.OpError
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		// A missing manifest says nothing of the repository; its tag list does.
		tagsErr := repo.Tags(ctx, "", func([]string) error { return errOneTagPage })
		if errors.As(tagsErr, &resp) && resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("unknown repository %s at %s", r.Path, host)
		}
		if r.Digest != "" {
			return fmt.Errorf("unknown manifest %s in %s at %s", r.Digest, r.Path, host)
		}
		return fmt.Errorf("unknown tag %q in %s at %s", r.Tag, r.Path, host)
	case errors.As(err, &resp) && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden),
		errors.Is(err, auth.ErrBasicCredentialNotFound):
		return fmt.Errorf("unauthorized at %s (check docker's config.json or its credential helper): %w", host, err)
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("registry %s unreachable: %w", host, err)
	}
	return fmt.Errorf("registry %s: %w", host, err)
}

var errOneTagPage = errors.New("one page is enough")

// pullManifest fetches and extracts every layer of the manifest, then
// stores the image under name.
func (p *Puller) pullManifest(ctx context.Context, name string, repo *remote.Repository, desc ocispec.Descriptor, mdata []byte) error {
	m, err := store.ParseManifest(mdata)
	if err != nil {
		return err
	}
	cdata, err := p.fetchSmall(ctx, repo, m.Config)
	if err != nil {
		return fmt.Errorf("config %s: %w", m.Config.Digest, err)
	}
	cfg, err := store.ParseConfig(cdata, len(m.Layers))
	if err != nil {
		return err
	}
	downloads := make(chan struct{}, p.opts.Jobs)
	errs := make([]error, len(m.Layers))
	var wg sync.WaitGroup
	for i, l := range m.Layers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.pullLayer(ctx, name, repo, l, cfg.RootFS.DiffIDs[i], downloads); err != nil {
				errs[i] = fmt.Errorf("layer %s: %w", l.Digest, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Every layer is extracted now: StoreImage only has to write the
	// config and manifest and name the image.
	return p.store.StoreImage(ctx, name, desc, mdata, func(d ocispec.Descriptor) (io.ReadCloser, error) {
		if d.Digest == m.Config.Digest {
			return io.NopCloser(bytes.NewReader(cdata)), nil
		}
		return nil, fmt.Errorf("blob %s was not fetched", d.Digest)
	})
}

// pullLayer fetches one layer's blob while holding a download slot, then
// extracts it from the store's copy while the other layers download.
func (p *Puller) pullLayer(ctx context.Context, name string, repo *remote.Repository, l ocispec.Descriptor, diffID digest.Digest, downloads chan struct{}) error {
	have := p.store.HasBlob(l.Digest)
	if have && p.store.Extracted(l.Digest) {
		logrus.WithField("layer", l.Digest).Debug("layer already in the store")
		if p.opts.Progress != nil {
			p.opts.Progress.Layer(name, l, true).Done(nil)
		}
		return nil
	}
	prog := LayerProgress(silent{})
	if p.opts.Progress != nil {
		prog = p.opts.Progress.Layer(name, l, have)
	}
	err := p.fetchAndExtract(ctx, repo, l, diffID, downloads, prog, have)
	prog.Done(err)
	return err
}

func (p *Puller) fetchAndExtract(ctx context.Context, repo *remote.Repository, l ocispec.Descriptor, diffID digest.Digest, downloads chan struct{}, prog LayerProgress, have bool) error {
	if !have {
		select {
		case downloads <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := fetchBlob(ctx, p.store, repo, l, prog)
		<-downloads
		if err != nil {
			return err
		}
	}
	prog.Fetched()
	select {
	case p.extract <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.extract }()
	return p.store.ExtractLayer(ctx, l, diffID, func() (io.ReadCloser, error) {
		return nil, fmt.Errorf("blob %s left the store", l.Digest)
	})
}

// fetchSmall reads a config from the store, or from the registry, checked.
func (p *Puller) fetchSmall(ctx context.Context, repo *remote.Repository, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxManifestSize {
		return nil, fmt.Errorf("larger than %d bytes", maxManifestSize)
	}
	if p.store.HasBlob(desc.Digest) {
		return p.store.ReadBlob(desc.Digest)
	}
	var data []byte
	var err error
	for stalls := 0; stalls < maxStalls; stalls++ {
		data, err = content.FetchAll(ctx, repo, desc)
		if err == nil || ctx.Err() != nil || !transient(err) {
			break
		}
	}
	if errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, content.ErrTrailingData) {
		err = fmt.Errorf("%w: %v", store.ErrMismatch, err)
	}
	return data, err
}

type silent struct{}

func (silent) Set(int64)  {}
func (silent) Add(int)    {}
func (silent) Fetched()   {}
func (silent) Done(error) {}
