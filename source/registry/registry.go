// Package registry brings images from OCI registries into the store, through
// mirrors first when there are some: every blob verified and resumable,
// layers fetched in parallel and each extracted as soon as it is in.
package registry

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/layerfs/layerfs/reference"
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

// DefaultJobs is how many layers download at once unless told.
const DefaultJobs = 3

// Options tune a Puller.
type Options struct {
	Platform store.Platform
	// AllPlatforms takes every platform of an image index.
	AllPlatforms bool
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
type LayerProgress = store.LayerProgress

// Meter counts a blob's bytes as they arrive.
type Meter = store.Meter

// Puller pulls images into one store.
type Puller struct {
	store  *store.Store
	opts   Options
	client *client
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
	return &Puller{store: s, opts: opts, client: c}, nil
}

// Pull stores the image ref names and lists it under the reference's full
// docker form (debian is docker.io/library/debian:latest), as import does
// with a docker-archive's tags; skopeo's docker:// before it is dropped.
// Of an image index, the platform asked for (or every one) is stored and
// the name refers to the index, as import names an index: the digest is
// the one the registry has under the tag, and pulling another platform
// later adds it under the same name.
func (p *Puller) Pull(ctx context.Context, ref string) (store.Imported, error) {
	r, err := reference.Parse(strings.TrimPrefix(ref, "docker://"))
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	name := r.String()
	if err := reference.CheckName(name); err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	release, err := p.store.Writing(ctx)
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	defer release()
	res, err := p.resolve(ctx, r)
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	src := &registrySource{p: p, name: name, repo: res.repo, downloads: make(chan struct{}, p.opts.Jobs)}
	if res.manifests == nil {
		err = p.store.StoreImage(ctx, name, res.top.Descriptor, res.top.Data, src)
		if err == nil {
			// A lone manifest has no platform to choose; as import and
			// podman do, it is pulled, with a warning when it is for
			// another one than asked.
			p.store.WarnOtherPlatform(name, res.top.Descriptor, p.opts.Platform)
		}
	} else {
		err = p.store.StoreIndex(ctx, name, res.top, res.indexes, res.manifests, src)
	}
	if err != nil {
		return store.Imported{}, fmt.Errorf("pull %s: %w", ref, err)
	}
	return store.Imported{Name: name, Manifest: res.top.Digest}, nil
}

// resolved is what a reference names at a registry: a manifest, or an
// index with the manifests chosen of it.
type resolved struct {
	repo *remote.Repository
	top  store.Blob
	// indexes are those top nests, and manifests the image manifests
	// chosen of it, when top is an index.
	indexes, manifests []store.Blob
}

// resolve finds what the reference names, at the first mirror that has
// it, else at the registry, and returns the repository that answered.
func (p *Puller) resolve(ctx context.Context, r reference.Reference) (resolved, error) {
	hosts := append(append([]string{}, p.opts.Mirrors...), p.opts.Config.Mirrors[r.Domain]...)
	for _, mirror := range hosts {
		res, err := p.resolveAt(ctx, mirror, r)
		if err == nil {
			logrus.WithFields(logrus.Fields{"mirror": mirror, "image": r}).Info("pulling through mirror")
			return res, nil
		}
		if ctx.Err() != nil {
			return resolved{}, ctx.Err()
		}
		logrus.WithFields(logrus.Fields{"mirror": mirror, "error": err}).Warn("mirror failed; trying the next")
	}
	return p.resolveAt(ctx, r.Domain, r)
}

func (p *Puller) resolveAt(ctx context.Context, host string, r reference.Reference) (resolved, error) {
	repo, err := p.client.repository(ctx, host, r.Path)
	if err != nil {
		return resolved{}, err
	}
	tag := r.Tag
	if r.Digest != "" {
		tag = r.Digest
	}
	desc, data, err := fetchManifest(ctx, repo, tag)
	if err != nil {
		return resolved{}, p.client.describe(ctx, repo, host, r, err)
	}
	if r.Digest != "" && desc.Digest.String() != r.Digest {
		return resolved{}, fmt.Errorf("registry %s: %w: manifest digest %s", host, store.ErrMismatch, desc.Digest)
	}
	res := resolved{repo: repo, top: store.Blob{Descriptor: desc, Data: data}}
	if store.IsManifest(desc.MediaType) {
		return res, nil
	}
	if !store.IsIndex(desc.MediaType) {
		return resolved{}, fmt.Errorf("manifest %s: unsupported media type %q", desc.Digest, desc.MediaType)
	}
	read := func(d ocispec.Descriptor) ([]byte, error) {
		if d.Digest == desc.Digest {
			return data, nil
		}
		_, data, err := fetchManifest(ctx, repo, d.Digest.String())
		if err == nil {
			res.indexes = append(res.indexes, store.Blob{Descriptor: d, Data: data})
		}
		return data, err
	}
	blob := func(d ocispec.Descriptor) ([]byte, error) {
		if store.IsManifest(d.MediaType) {
			_, data, err := fetchManifest(ctx, repo, d.Digest.String())
			return data, err
		}
		rc, err := repo.Blobs().Fetch(ctx, d)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		return store.ReadMetadata(rc)
	}
	chosen, _, err := store.SelectManifests(desc, read, blob, p.opts.Platform, p.opts.AllPlatforms)
	if err != nil {
		return resolved{}, err
	}
	if len(chosen) == 0 {
		return resolved{}, fmt.Errorf("index %s lists no image", desc.Digest)
	}
	for _, next := range chosen {
		mdesc, mdata, err := fetchManifest(ctx, repo, next.Digest.String())
		if err != nil {
			return resolved{}, fmt.Errorf("manifest %s: %w", next.Digest, p.client.describe(ctx, repo, host, r, err))
		}
		if mdesc.Digest != next.Digest {
			return resolved{}, fmt.Errorf("manifest %s: %w: digest %s", next.Digest, store.ErrMismatch, mdesc.Digest)
		}
		if !store.IsManifest(mdesc.MediaType) {
			return resolved{}, fmt.Errorf("manifest %s: unsupported media type %q", mdesc.Digest, mdesc.MediaType)
		}
		res.manifests = append(res.manifests, store.Blob{Descriptor: next, Data: mdata})
	}
	return res, nil
}

// fetchManifest reads a manifest by tag or digest. Its descriptor is made
// from the bytes themselves, not from what the registry says of them.
func fetchManifest(ctx context.Context, repo *remote.Repository, reference string) (ocispec.Descriptor, []byte, error) {
	desc, rc, err := repo.FetchReference(ctx, reference)
	if err != nil {
		return desc, nil, err
	}
	defer rc.Close()
	data, err := store.ReadMetadata(rc)
	if err != nil {
		return desc, nil, fmt.Errorf("manifest: %w", err)
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
func (c *client) describe(ctx context.Context, repo *remote.Repository, host string, r reference.Reference, err error) error {
	var resp *errcode.ErrorResponse
	var op *net.OpError
	var untrusted *tls.CertificateVerificationError
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
		return c.unauthorized(ctx, repo.Reference.Registry, host, err)
	case errors.As(err, &untrusted):
		server := serverOf(err, host)
		if errors.As(untrusted.Err, new(x509.UnknownAuthorityError)) {
			return fmt.Errorf("registry %s: the TLS certificate of %s is not trusted (%v): put the CA that signed it in the system's trust store or in %s/%s/ca.crt, or pull with --insecure", host, server, untrusted.Err, certDirs[0], server)
		}
		return fmt.Errorf("registry %s: the TLS certificate of %s is not valid (%v): pull with --insecure to skip verifying it", host, server, untrusted.Err)
	case errors.Is(err, http.ErrSchemeMismatch):
		return fmt.Errorf("registry %s answers plain HTTP, not HTTPS: pull with --insecure to allow it: %w", serverOf(err, host), err)
	case errors.As(err, &op) && op.Op == "dial":
		return fmt.Errorf("registry %s unreachable: %w", host, err)
	}
	return fmt.Errorf("registry %s: %w", host, err)
}

// serverOf is the host the request that failed with err went to (a token
// server's, say), or host when err names none.
func serverOf(err error, host string) string {
	var u *url.Error
	if errors.As(err, &u) {
		if parsed, perr := url.Parse(u.URL); perr == nil {
			return parsed.Host
		}
	}
	return host
}

// unauthorized says that a registry refused the credentials stored for
// it, naming the file they came from, or that none are stored, naming
// where they were looked for.
func (c *client) unauthorized(ctx context.Context, endpoint, host string, err error) error {
	_, from, credErr := c.credential(ctx, endpoint)
	if credErr != nil {
		return fmt.Errorf("registry %s: %w", host, credErr)
	}
	if from != "" {
		return fmt.Errorf("registry %s refused the credentials for it in %s: %w", host, from, err)
	}
	var looked []string
	for _, f := range c.credentialFiles {
		looked = append(looked, f.path)
	}
	return fmt.Errorf("registry %s asks for credentials and none are stored for it in %s, nor in a credential helper they name: %w", host, strings.Join(looked, ", "), err)
}

var errOneTagPage = errors.New("one page is enough")

// registrySource is one repository of a registry, as the store's source
// of one image: its layers are downloaded, at most Jobs at once, into the
// store's partial files and extracted from there.
type registrySource struct {
	p         *Puller
	name      string
	repo      *remote.Repository
	downloads chan struct{}
}

// Open reads a manifest, index or config whole, retrying what may pass.
func (r *registrySource) Open(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	var data []byte
	var err error
	for stalls := 0; stalls < maxStalls; stalls++ {
		data, err = content.FetchAll(ctx, r.repo, desc)
		if err == nil || ctx.Err() != nil || !transient(err) {
			break
		}
	}
	if errors.Is(err, content.ErrMismatchedDigest) || errors.Is(err, content.ErrTrailingData) {
		err = fmt.Errorf("%w: %v", store.ErrMismatch, err)
	}
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

func (r *registrySource) Layer(desc ocispec.Descriptor, have bool) store.LayerProgress {
	if r.p.opts.Progress == nil {
		return silent{}
	}
	return r.p.opts.Progress.Layer(r.name, desc, have)
}

// Download fetches a layer's blob while holding a download slot.
func (r *registrySource) Download(ctx context.Context, desc ocispec.Descriptor, m store.Meter) error {
	select {
	case r.downloads <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.downloads }()
	return fetchBlob(ctx, r.p.store, r.repo, desc, m)
}

type silent struct{}

func (silent) Set(int64)  {}
func (silent) Add(int)    {}
func (silent) Fetched()   {}
func (silent) Done(error) {}
