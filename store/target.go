package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/layerfs/layerfs/reference"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// Target is what one or more command-line targets name.
type Target struct {
	// Name is the image name, when the target is a named image.
	Name string
	// Manifest is set when the target is an image.
	Manifest ocispec.Descriptor
	// Layers are the layer descriptors, lowest first.
	Layers []ocispec.Descriptor
	// DiffIDs are the config's, when known, parallel to Layers.
	DiffIDs []digest.Digest
	// Single is set when the target is exactly one layer.
	Single bool
}

// Digests returns the layers' digests, lowest first.
func (t Target) Digests() []digest.Digest {
	out := make([]digest.Digest, len(t.Layers))
	for i, l := range t.Layers {
		out[i] = l.Digest
	}
	return out
}

// String is how messages and the mounts listing name the target: a stack
// of layers as its digests joined by commas, lowest first, the form a
// target is given in, so that it is one field of a table and can be given
// again.
func (t Target) String() string {
	switch {
	case t.Name != "":
		return t.Name
	case t.Manifest.Digest != "":
		return t.Manifest.Digest.String()
	}
	ds := make([]string, len(t.Layers))
	for i, l := range t.Layers {
		ds[i] = l.Digest.String()
	}
	return strings.Join(ds, ",")
}

// Resolve reads targets as ResolvePlatform does, for the host's platform.
func (s *Store) Resolve(targets []string) (Target, error) {
	return s.ResolvePlatform(targets, Platform{})
}

// ResolvePlatform reads targets: one image (a name as listed, a
// docker-style name, a manifest or index digest or a unique prefix of
// one), or one or more layer digests (lowest first), each an element of
// targets. An image index is resolved to its manifest for platform p (the
// host's when zero). An image of one manifest is that manifest whatever
// p is, with a warning logged, as docker run gives one, when its config
// names another platform; ImageOf's Image.Platforms says which platforms
// an image has.
func (s *Store) ResolvePlatform(targets []string, p Platform) (Target, error) {
	if len(targets) == 0 {
		return Target{}, fmt.Errorf("no target given")
	}
	images, err := s.Images()
	if err != nil {
		return Target{}, err
	}
	if len(targets) == 1 {
		img, ok, err := s.imageOf(images, targets[0])
		if err != nil {
			return Target{}, err
		}
		if ok {
			return s.imageTarget(img, p)
		}
	}
	var t Target
	for _, arg := range targets {
		d, kind, err := s.matchDigest(images, arg)
		if errors.Is(err, ErrNotFound) {
			// An image's name gets here only among several targets (a
			// lone one was taken above), which it cannot be one of.
			switch _, named, ferr := findImage(images, arg); {
			case ferr != nil:
				err = ferr
			case named:
				kind, err = "manifest", nil
			}
		}
		if err != nil {
			return Target{}, err
		}
		if kind == "manifest" {
			return Target{}, fmt.Errorf("target %q is an image: several targets must all be layers", arg)
		}
		desc, diffID := s.layerDescriptor(images, d)
		t.Layers = append(t.Layers, desc)
		t.DiffIDs = append(t.DiffIDs, diffID)
	}
	t.Single = len(t.Layers) == 1
	return t, nil
}

// ImageOf finds the image arg names, as a target does: a name as listed,
// a docker-style name, or a manifest or index digest or a unique prefix of
// one.
func (s *Store) ImageOf(arg string) (Image, error) {
	images, err := s.Images()
	if err != nil {
		return Image{}, err
	}
	img, ok, err := s.imageOf(images, arg)
	if err == nil && !ok {
		err = fmt.Errorf("%s is a layer, not an image", arg)
	}
	return img, err
}

// imageOf finds the image arg names; ok is false when arg is a layer's
// digest. A digest the store knows wins over any name, so that no name,
// even one stored before names like digests were refused, can stand in
// for it.
func (s *Store) imageOf(images []Image, arg string) (img Image, ok bool, err error) {
	d, kind, err := s.matchDigest(images, arg)
	switch {
	case errors.Is(err, ErrNotFound):
		if img, ok, ferr := findImage(images, arg); ok || ferr != nil {
			return img, ok, ferr
		}
		return Image{}, false, err
	case err != nil:
		return Image{}, false, err
	}
	if kind != "manifest" {
		return Image{}, false, nil
	}
	return s.imageByDigest(images, d), true, nil
}

// ImageNamed finds the image called name (as listed, or docker-style),
// whatever platforms it has.
func (s *Store) ImageNamed(name string) (Image, error) {
	images, err := s.Images()
	if err != nil {
		return Image{}, err
	}
	if img, ok, err := findImage(images, name); ok || err != nil {
		return img, err
	}
	return Image{}, fmt.Errorf("%q is not an image name: %w", name, ErrNotFound)
}

// findImage finds the image called name: as listed, else in docker's
// full form (x finds a stored docker.io/library/x:latest), else by the
// full form of the names listed (docker.io/library/x finds a stored x),
// since docker takes all of them for one name. Should the last find
// several images, name is ambiguous, and an error says which.
func findImage(images []Image, name string) (Image, bool, error) {
	for _, img := range images {
		if img.Name != "" && img.Name == name {
			return img, true, nil
		}
	}
	full := reference.Normalize(name)
	for _, img := range images {
		if img.Name != "" && img.Name == full {
			return img, true, nil
		}
	}
	var found []Image
	for _, img := range images {
		if img.Name != "" && reference.SameName(img.Name, name) {
			found = append(found, img)
		}
	}
	if len(found) == 0 {
		return Image{}, false, nil
	}
	var names []string
	ambiguous := false
	for _, img := range found {
		names = append(names, img.Name)
		ambiguous = ambiguous || img.Manifest.Digest != found[0].Manifest.Digest
	}
	if ambiguous {
		return Image{}, false, fmt.Errorf("%q stands for several images, as docker reads names: %s; give one as listed", name, strings.Join(names, ", "))
	}
	return found[0], true, nil
}

// ImageLayers reads an image's manifest and config.
func (s *Store) ImageLayers(manifest digest.Digest) (ocispec.Manifest, ocispec.Image, error) {
	mdata, err := s.ReadBlob(manifest)
	if err != nil {
		return ocispec.Manifest{}, ocispec.Image{}, err
	}
	m, err := ParseManifest(mdata)
	if err != nil {
		return m, ocispec.Image{}, fmt.Errorf("blob %s: %w", manifest, err)
	}
	cdata, err := s.ReadBlob(m.Config.Digest)
	if err != nil {
		return m, ocispec.Image{}, err
	}
	c, err := ParseConfig(cdata, len(m.Layers))
	if err != nil {
		return m, c, fmt.Errorf("blob %s: %w", m.Config.Digest, err)
	}
	return m, c, nil
}

// imageTarget is the view of img on platform p.
func (s *Store) imageTarget(img Image, p Platform) (Target, error) {
	desc, err := s.choosePlatform(img, p)
	if err != nil {
		return Target{}, err
	}
	m, c, err := s.ImageLayers(desc.Digest)
	if err != nil {
		return Target{}, fmt.Errorf("image %s: %w", imageLabel(img), err)
	}
	return Target{Name: img.Name, Manifest: desc, Layers: m.Layers, DiffIDs: c.RootFS.DiffIDs}, nil
}

// imageByDigest is the unnamed image whose index or manifest is d: an
// image of the store, or one platform's manifest of an image index.
func (s *Store) imageByDigest(images []Image, d digest.Digest) Image {
	for _, img := range images {
		if img.Manifest.Digest == d {
			return Image{Manifest: img.Manifest}
		}
	}
	for _, img := range images {
		manifests, _, _ := s.imageParts(img)
		for _, m := range manifests {
			if m.Digest == d {
				return Image{Manifest: m}
			}
		}
	}
	return Image{Manifest: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d}}
}

func imageLabel(img Image) string {
	if img.Name != "" {
		return img.Name
	}
	return img.Manifest.Digest.String()
}

// matchDigest finds the one manifest or layer a digest or digest prefix
// names.
func (s *Store) matchDigest(images []Image, arg string) (digest.Digest, string, error) {
	hex := strings.TrimPrefix(arg, "sha256:")
	if !reference.IsDigestPrefix(hex) {
		return "", "", fmt.Errorf("target %q: %w: %s", arg, ErrNotFound, notDigest(arg, hex))
	}
	found := map[digest.Digest]string{}
	for _, img := range images {
		if strings.HasPrefix(img.Manifest.Digest.Encoded(), hex) {
			found[img.Manifest.Digest] = "manifest"
		}
		manifests, _, _ := s.imageParts(img)
		for _, m := range manifests {
			if strings.HasPrefix(m.Digest.Encoded(), hex) {
				found[m.Digest] = "manifest"
			}
		}
	}
	for _, d := range s.knownLayers() {
		if strings.HasPrefix(d.Encoded(), hex) {
			found[d] = "layer"
		}
	}
	if len(found) == 0 {
		if len(hex) == 64 {
			return "", "", fmt.Errorf("target %q: %w: no image or layer has that digest", arg, ErrNotFound)
		}
		return "", "", fmt.Errorf("target %q: %w: no image's or layer's digest starts with it", arg, ErrNotFound)
	}
	if len(found) > 1 {
		var names []string
		for d := range found {
			names = append(names, d.String())
		}
		sort.Strings(names)
		return "", "", fmt.Errorf("target %q is ambiguous: %s", arg, strings.Join(names, ", "))
	}
	for d, kind := range found {
		return d, kind, nil
	}
	panic("unreachable")
}

// otherDigests are the algorithms of digests other tools print, which
// the store, keeping sha256 alone, cannot have.
var otherDigests = map[string]bool{"md5": true, "sha1": true, "sha224": true, "sha384": true, "sha512": true, "blake3": true}

// notDigest says why arg, whose hex digits are hex, is neither an image's
// name nor a digest the store could have.
func notDigest(arg, hex string) string {
	alg, digits, hasAlg := strings.Cut(arg, ":")
	switch {
	case reference.IsDigestPrefix(strings.ToLower(hex)):
		return "not an image name, and the hex digits of a digest must be lowercase"
	case hasAlg && alg != "sha256" && strings.EqualFold(alg, "sha256") && reference.IsDigestPrefix(strings.ToLower(digits)):
		return "not an image name, and a digest's algorithm must be lowercase (sha256:)"
	case hasAlg && otherDigests[alg] && digits != "" && strings.Trim(strings.ToLower(digits), "0123456789abcdef") == "":
		return fmt.Sprintf("not an image name, and only sha256 digests are stored, not %s", alg)
	}
	return fmt.Sprintf("not an image name, nor a digest of at least %d hex digits", reference.MinDigestPrefix)
}

// knownLayers lists the layers with a directory under layers/.
func (s *Store) knownLayers() []digest.Digest {
	entries, _ := os.ReadDir(filepath.Join(s.root, layersDir))
	var out []digest.Digest
	for _, e := range entries {
		if e.IsDir() {
			if d := digest.NewDigestFromEncoded(digest.SHA256, e.Name()); d.Validate() == nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// layerDescriptor finds a layer's descriptor and diff_id in any image
// that uses it; a layer no image uses is described from its blob.
func (s *Store) layerDescriptor(images []Image, d digest.Digest) (ocispec.Descriptor, digest.Digest) {
	for _, img := range images {
		var found ocispec.Descriptor
		var diffID digest.Digest
		err := s.eachImageLayer(img, func(l ocispec.Descriptor, id digest.Digest) {
			if l.Digest == d {
				found, diffID = l, id
			}
		})
		if err != nil {
			// One damaged image must not stop a layer of the others from
			// opening; verify names it too.
			logrus.Warnf("image %s: %v", imageLabel(img), err)
		}
		if found.Digest != "" {
			return found, diffID
		}
	}
	desc := ocispec.Descriptor{Digest: d, Size: -1}
	if st, err := os.Stat(s.BlobPath(d)); err == nil {
		desc.Size = st.Size()
	}
	return desc, ""
}

// Prepare makes sure every layer of t is extracted, extracting from the
// store's blobs those that are not.
func (s *Store) Prepare(ctx context.Context, t Target) error {
	var missing []ocispec.Descriptor
	var diffIDs []digest.Digest
	for i, l := range t.Layers {
		if !s.Extracted(l.Digest) {
			if !s.HasBlob(l.Digest) {
				return fmt.Errorf("layer %s: %w: no blob", l.Digest, ErrNotFound)
			}
			missing = append(missing, l)
			diffIDs = append(diffIDs, t.DiffIDs[i])
		}
	}
	if len(missing) == 0 {
		return nil
	}
	release, err := s.Writing(ctx)
	if err != nil {
		return err
	}
	defer release()
	return s.storeLayers(ctx, missing, diffIDs, SourceFunc(func(context.Context, ocispec.Descriptor) (io.ReadCloser, error) {
		return nil, ErrNotFound
	}))
}
