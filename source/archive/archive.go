// Package archive imports images from files: OCI image layouts and
// docker-archives (docker save), each a directory or a tar, plain or
// compressed. A source is read as an io/fs.FS, never unpacked to disk;
// its images are chosen (a ref name or tag, "@N", a platform of an image
// index) and each goes into the store through store.StoreManifest, as a
// pulled image does, so an import checks and extracts layers exactly as a
// pull does.
package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/layerfs/layerfs/reference"
	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const annotationContainerdName = "io.containerd.image.name"

// errNoImage is returned by an import that found only non-images.
var errNoImage = errors.New("no image to import")

// Options chooses what an import takes.
type Options struct {
	// Ref, when set, takes only the image it names: an OCI layout's ref
	// name, a docker-archive's tag, or "@N" for the Nth entry of either
	// (of index.json or manifest.json, from 0).
	Ref string
	// Platform is the one taken from image indexes; zero is the host's.
	Platform store.Platform
	// AllPlatforms takes every platform of an image index.
	AllPlatforms bool
}

// Result is what an import stored, and what it skipped.
type Result struct {
	Images  []store.Imported
	Skipped []store.Skipped
}

// fileTransports are the prefixes skopeo and podman put before a layout
// or archive (oci:DIR:REF, docker-archive:FILE:REF); import takes an
// argument written for them as they take it.
var fileTransports = []string{"oci:", "oci-archive:", "docker-archive:"}

// otherTransports are skopeo's transports that import does not read,
// each with what to do instead; ARG is the argument as given, NAME what
// follows the transport.
var otherTransports = []struct{ prefix, instead string }{
	{"dir:", "skopeo copy ARG oci-archive:FILE makes an archive layerfs import reads"},
	{"docker-daemon:", "docker save NAME | layerfs import - reads the daemon's image"},
	{"containers-storage:", "podman save NAME | layerfs import - reads podman's image"},
	{"tarball:", "layerfs import --layer NAME stores a filesystem tar as one layer"},
	{"sif:", "skopeo copy ARG oci-archive:FILE makes an archive layerfs import reads"},
	{"ostree:", "skopeo copy ARG oci-archive:FILE makes an archive layerfs import reads"},
}

// OtherTransport reports an argument written for one of skopeo's
// transports that neither import nor pull reads (dir:, docker-daemon:,
// ...): the transport, and what reads its images instead.
func OtherTransport(arg string) (transport, instead string, ok bool) {
	for _, t := range otherTransports {
		if name, found := strings.CutPrefix(arg, t.prefix); found {
			return t.prefix, strings.NewReplacer("ARG", arg, "NAME", name).Replace(t.instead), true
		}
	}
	return "", "", false
}

// SplitRef splits skopeo's PATH:REF form. An argument that exists as
// a path is that path, whatever colons it holds; otherwise it splits at
// the first colon whose left side exists, so a REF may hold colons
// (host:5000/repo:tag) and so may a PATH. Failing both, a leading
// transport of skopeo's (oci:, oci-archive:, docker-archive:) is dropped
// and the rest split the same way.
func SplitRef(arg string) (src, ref string) {
	if src, ref, ok := splitExisting(arg); ok {
		return src, ref
	}
	for _, t := range fileTransports {
		if rest, ok := strings.CutPrefix(arg, t); ok {
			if src, ref, ok := splitExisting(rest); ok {
				return src, ref
			}
		}
	}
	return arg, ""
}

// WrittenAsFile reports an argument written as a layout or archive, which
// names no registry image: after one of skopeo's layout or archive
// transports, or as a path (/, ./ or ../ before it).
func WrittenAsFile(arg string) bool {
	return slices.ContainsFunc(append([]string{"/", "./", "../"}, fileTransports...), func(p string) bool { return strings.HasPrefix(arg, p) })
}

// OnDisk reports an argument Import reads as a path that exists, alone or
// before :REF, and that could hold images: a file (an archive), or a
// directory with a layout's or a docker-archive's index in it. A plain
// directory of the same name as an image (./debian beside a pull of
// debian) says nothing of what was meant.
func OnDisk(arg string) bool {
	src, _, ok := splitExisting(arg)
	if !ok {
		return false
	}
	st, err := os.Stat(src)
	if err != nil || st.Mode().IsRegular() {
		return err == nil
	}
	return st.IsDir() && slices.ContainsFunc([]string{"index.json", "oci-layout", "manifest.json"}, func(name string) bool {
		_, err := os.Lstat(filepath.Join(src, name))
		return err == nil
	})
}

// splitExisting is SplitRef without transports: ok is false when no
// path it could name exists.
func splitExisting(arg string) (src, ref string, ok bool) {
	if _, err := os.Lstat(arg); err == nil {
		return arg, "", true
	}
	for i := 0; i < len(arg); i++ {
		if arg[i] != ':' {
			continue
		}
		if _, err := os.Lstat(arg[:i]); err == nil {
			return arg[:i], arg[i+1:], true
		}
	}
	return "", "", false
}

// Import stores the images of an OCI image layout (a directory or a tar)
// or a docker-archive, plain or compressed, under the names it gives them.
// Entries that are not images (artifacts, signatures, attestations) are
// skipped and listed; a bad image fails the import.
func Import(ctx context.Context, s *store.Store, src string, opts Options) (Result, error) {
	release, err := s.Writing(ctx)
	if err != nil {
		return Result{}, err
	}
	defer release()
	fsys, closer, err := openSource(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(src, "docker://") {
			return Result{}, fmt.Errorf("import %s: %w: a registry's image is pulled, with layerfs pull", src, err)
		}
		if transport, instead, ok := OtherTransport(src); ok && errors.Is(err, fs.ErrNotExist) {
			return Result{}, fmt.Errorf("import %s: skopeo's %s transport is not one import reads (it reads oci:, oci-archive: and docker-archive:); %s", src, transport, instead)
		}
		return Result{}, fmt.Errorf("import %s: %w", src, err)
	}
	defer closer.Close()
	return importFS(ctx, s, src, fsys, opts)
}

// ImportReader is Import of the archive r gives, plain or compressed, as
// docker save writes one to a pipe; name says what it is in errors. An
// archive is read out of order, so r is first copied whole to scratch,
// a file with no name that goes when the import ends.
func ImportReader(ctx context.Context, s *store.Store, r io.Reader, scratch *os.File, name string, opts Options) (Result, error) {
	defer scratch.Close()
	release, err := s.Writing(ctx)
	if err != nil {
		return Result{}, err
	}
	defer release()
	n, err := io.Copy(scratch, store.ContextReader(ctx, r))
	if err != nil {
		return Result{}, fmt.Errorf("import %s: copy it to %s: %w", name, scratch.Name(), err)
	}
	if n == 0 {
		// What fed the pipe failed, as skopeo copy ... oci-archive:/dev/stdout does.
		return Result{}, fmt.Errorf("import %s: it is empty: no archive came, not a byte", name)
	}
	t, err := indexTar(scratch)
	if err != nil {
		return Result{}, fmt.Errorf("import %s: read archive: %w", name, err)
	}
	defer t.Close()
	return importFS(ctx, s, name, t, opts)
}

// importFS stores the images of fsys, an OCI layout or a docker-archive,
// which src names in errors.
func importFS(ctx context.Context, s *store.Store, src string, fsys fs.FS, opts Options) (Result, error) {
	var res Result
	has := map[string]bool{}
	for _, name := range []string{"manifest.json", "index.json", "repositories"} {
		var err error
		if has[name], err = exists(fsys, name); err != nil {
			// Not there is one thing; not to be read (permissions, no
			// descriptors left) is another, which must not be told as
			// "not an image".
			return res, fmt.Errorf("import %s: %w", src, err)
		}
	}
	var err error
	switch {
	case isSkopeoDir(fsys):
		err = skopeoDirError(src, fsys)
	case has["manifest.json"]:
		// Docker 25 writes index.json too, with "manifests": null when
		// saving by digest, and in 25.0.0 with the layers of its OCI
		// manifest out of order (moby #47150): manifest.json is the
		// document docker load reads, so it is the one read here.
		res.Images, err = importDockerArchive(ctx, s, fsys, opts)
	case has["index.json"]:
		res, err = importLayout(ctx, s, fsys, opts)
	case has["repositories"]:
		err = errLegacyArchive
	default:
		err = errNotImage
	}
	if err != nil {
		return res, fmt.Errorf("import %s: %w", src, err)
	}
	return res, nil
}

// exists tells whether fsys holds name, and why that cannot be told.
func exists(fsys fs.FS, name string) (bool, error) {
	_, err := fs.Stat(fsys, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return false, nil
	}
	return false, err
}

// readSmall reads a JSON document of at most store.MaxMetadataSize bytes.
func readSmall(fsys fs.FS, name string) ([]byte, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := store.ReadMetadata(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return data, nil
}

func layoutBlob(d digest.Digest) string {
	return path.Join("blobs", d.Algorithm().String(), d.Encoded())
}

// layoutImport is the import of one OCI image layout.
type layoutImport struct {
	ctx  context.Context
	s    *store.Store
	fsys fs.FS
	opts Options
	res  Result
}

func importLayout(ctx context.Context, s *store.Store, fsys fs.FS, opts Options) (Result, error) {
	data, err := readSmall(fsys, "index.json")
	if err != nil {
		return Result{}, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(data, &idx); err != nil {
		return Result{}, fmt.Errorf("index.json: %w", err)
	}
	entries, err := selectRef(idx.Manifests, opts.Ref)
	if err != nil {
		return Result{}, err
	}
	li := &layoutImport{ctx: ctx, s: s, fsys: fsys, opts: opts}
	for _, desc := range entries {
		name := refName(desc)
		if err := li.entry(name, desc); err != nil {
			return li.res, imageError(name, desc.Digest, err)
		}
	}
	if len(li.res.Images) == 0 {
		if len(li.res.Skipped) > 0 {
			return li.res, fmt.Errorf("%w: index.json lists %d entries, none an image", errNoImage, len(li.res.Skipped))
		}
		return li.res, errors.New("index.json lists no image")
	}
	return li.res, nil
}

func refName(desc ocispec.Descriptor) string {
	if name := desc.Annotations[annotationContainerdName]; name != "" {
		return name
	}
	return desc.Annotations[store.AnnotationRefName]
}

// selectRef picks the entry of index.json that ref names, as skopeo's
// oci:DIR:REF does: by its ref name annotation (or containerd's name), or
// @N for the Nth entry (from 0), which an entry without a name needs.
func selectRef(entries []ocispec.Descriptor, ref string) ([]ocispec.Descriptor, error) {
	if ref == "" {
		return entries, nil
	}
	if n, ok := strings.CutPrefix(ref, "@"); ok {
		i, err := strconv.Atoi(n)
		if err != nil || i < 0 || i >= len(entries) {
			return nil, fmt.Errorf("%w: no entry %s in index.json (it lists %d, from @0)", store.ErrNotFound, ref, len(entries))
		}
		return entries[i : i+1], nil
	}
	var names []string
	for _, d := range entries {
		short, full := d.Annotations[store.AnnotationRefName], d.Annotations[annotationContainerdName]
		if short == ref || (full != "" && (full == ref || full == reference.Normalize(ref))) {
			return []ocispec.Descriptor{d}, nil
		}
		if name := refName(d); name != "" {
			names = append(names, name)
		}
	}
	return nil, fmt.Errorf("%w: no image %q in index.json (has %s)", store.ErrNotFound, ref, strings.Join(names, ", "))
}

func imageError(name string, d digest.Digest, err error) error {
	if name == "" {
		name = d.String()
	}
	return fmt.Errorf("image %s: %w", name, err)
}

func (li *layoutImport) skip(d digest.Digest, what string) {
	li.res.Skipped = append(li.res.Skipped, store.Skipped{Digest: d, What: what})
}

func (li *layoutImport) Open(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	return store.OpenLimited(li.fsys, layoutBlob(d.Digest), d.Size)
}

// entry imports one entry of index.json, or skips it.
func (li *layoutImport) entry(name string, desc ocispec.Descriptor) error {
	switch {
	case store.IsIndex(desc.MediaType):
		return li.index(name, desc)
	case store.IsAttestation(desc):
		li.skip(desc.Digest, "attestation manifest")
		return nil
	case !store.IsManifest(desc.MediaType):
		li.skip(desc.Digest, store.DescribeArtifact(desc))
		return nil
	}
	stored, err := li.manifest(desc)
	if err != nil || !stored {
		return err
	}
	if li.opts.Platform != (store.Platform{}) {
		li.s.WarnOtherPlatform(name, desc, li.opts.Platform)
	}
	return li.tag(name, desc)
}

func (li *layoutImport) tag(name string, desc ocispec.Descriptor) error {
	if err := li.s.Tag(name, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}); err != nil {
		return err
	}
	li.res.Images = append(li.res.Images, store.Imported{Name: name, Manifest: desc.Digest})
	return nil
}

// manifest stores an image manifest with its config and layers, or skips
// it when it is no image.
func (li *layoutImport) manifest(desc ocispec.Descriptor) (stored bool, err error) {
	mdata, err := li.s.FetchSmall(li.ctx, desc, li)
	if err != nil {
		return false, err
	}
	m, err := store.ParseManifest(mdata)
	if err != nil {
		return false, err
	}
	if what := store.NotImage(m); what != "" {
		li.skip(desc.Digest, what)
		return false, nil
	}
	if err := li.checkLayerOrder(desc, m); err != nil {
		return false, err
	}
	return true, li.s.StoreManifest(li.ctx, desc, mdata, li)
}

// checkLayerOrder names the docker 25.0.0 bug (moby #47150) plainly: an
// OCI manifest whose uncompressed layers are the config's diff_ids in
// another order.
func (li *layoutImport) checkLayerOrder(desc ocispec.Descriptor, m ocispec.Manifest) error {
	cdata, err := li.s.FetchSmall(li.ctx, m.Config, li)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cfg, err := store.ParseConfig(cdata, len(m.Layers))
	if err != nil {
		return err
	}
	layers := make([]digest.Digest, len(m.Layers))
	for i, l := range m.Layers {
		layers[i] = l.Digest
	}
	if slices.Equal(layers, cfg.RootFS.DiffIDs) {
		return nil
	}
	sorted, want := slices.Clone(layers), slices.Clone(cfg.RootFS.DiffIDs)
	slices.Sort(sorted)
	slices.Sort(want)
	if slices.Equal(sorted, want) {
		return fmt.Errorf("manifest %s lists its layers in another order than its config's diff_ids (as docker 25.0.0 wrote them, moby #47150): import the archive's manifest.json instead", desc.Digest)
	}
	return nil
}

// index imports the platform asked for (or every one) of an image index,
// skipping the entries that are not images, and names the index.
func (li *layoutImport) index(name string, top ocispec.Descriptor) error {
	indexes := map[digest.Digest][]byte{}
	read := func(d ocispec.Descriptor) ([]byte, error) {
		if err := d.Digest.Validate(); err != nil {
			return nil, err
		}
		r, err := li.Open(li.ctx, d)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		data, err := store.ReadMetadata(r)
		indexes[d.Digest] = data
		return data, err
	}
	blob := func(d ocispec.Descriptor) ([]byte, error) {
		if err := d.Digest.Validate(); err != nil {
			return nil, err
		}
		r, err := li.Open(li.ctx, d)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return store.ReadMetadata(r)
	}
	chosen, skipped, err := store.SelectManifests(top, read, blob, li.opts.Platform, li.opts.AllPlatforms)
	li.res.Skipped = append(li.res.Skipped, skipped...)
	if err != nil {
		return err
	}
	stored := false
	for _, d := range chosen {
		ok, err := li.manifest(d)
		if err != nil {
			return fmt.Errorf("platform %s: %w", store.PlatformNames([]ocispec.Descriptor{d}), err)
		}
		stored = stored || ok
	}
	if !stored {
		return nil
	}
	for d, data := range indexes {
		if err := li.s.PutBlob(ocispec.Descriptor{Digest: d, Size: int64(len(data))}, bytes.NewReader(data)); err != nil {
			return err
		}
	}
	return li.tag(name, top)
}

// dockerManifest is one image of a docker-archive's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func importDockerArchive(ctx context.Context, s *store.Store, fsys fs.FS, opts Options) ([]store.Imported, error) {
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
	if opts.Ref != "" {
		img, err := selectTag(images, opts.Ref)
		if err != nil {
			return nil, err
		}
		images = []dockerManifest{img}
	}
	var out []store.Imported
	for i, img := range images {
		label := fmt.Sprintf("image %d of manifest.json", i+1)
		if len(img.RepoTags) > 0 {
			label = "image " + img.RepoTags[0]
		}
		imported, err := importDockerImage(ctx, s, fsys, img)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", label, err)
		}
		out = append(out, imported...)
	}
	return out, nil
}

// selectTag picks the image of a docker-archive that ref names, as
// skopeo's docker-archive:FILE:REF does: a tag, or @N for the Nth image
// (from 0). The image is then named by ref alone.
func selectTag(images []dockerManifest, ref string) (dockerManifest, error) {
	if n, ok := strings.CutPrefix(ref, "@"); ok {
		i, err := strconv.Atoi(n)
		if err != nil || i < 0 || i >= len(images) {
			return dockerManifest{}, fmt.Errorf("%w: no image %s in manifest.json (it lists %d, from @0)", store.ErrNotFound, ref, len(images))
		}
		return images[i], nil
	}
	var tags []string
	for _, img := range images {
		for _, tag := range img.RepoTags {
			if reference.Normalize(tag) == reference.Normalize(ref) {
				img.RepoTags = []string{tag}
				return img, nil
			}
			tags = append(tags, tag)
		}
	}
	return dockerManifest{}, fmt.Errorf("%w: no image %q in manifest.json (has %s)", store.ErrNotFound, ref, strings.Join(tags, ", "))
}

// importDockerImage turns one docker-archive image into an OCI manifest
// over the same config and the archive's layer tars.
func importDockerImage(ctx context.Context, s *store.Store, fsys fs.FS, img dockerManifest) ([]store.Imported, error) {
	cdata, err := readSmall(fsys, path.Clean(img.Config))
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := store.ParseConfig(cdata, len(img.Layers))
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
		desc, err := store.DescribeLayerFile(fsys, path.Clean(l), cfg.RootFS.DiffIDs[i])
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", l, err)
		}
		files[desc.Digest] = path.Clean(l)
		m.Layers = append(m.Layers, desc)
	}
	open := store.SourceFunc(func(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
		if d.Digest == m.Config.Digest {
			return io.NopCloser(bytes.NewReader(cdata)), nil
		}
		return store.OpenLimited(fsys, files[d.Digest], d.Size)
	})
	mdata, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	desc := ocispec.Descriptor{MediaType: m.MediaType, Digest: digest.FromBytes(mdata), Size: int64(len(mdata))}
	tags := img.RepoTags
	if len(tags) == 0 {
		tags = []string{""}
	}
	var out []store.Imported
	for _, tag := range tags {
		name := tag
		if tag != "" {
			name = reference.Normalize(tag)
		}
		if err := s.StoreImage(ctx, name, desc, mdata, open); err != nil {
			return nil, err
		}
		out = append(out, store.Imported{Name: name, Manifest: desc.Digest})
	}
	return out, nil
}
