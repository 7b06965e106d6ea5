package store

import (
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

// maxIndexDepth bounds how deep image indexes may nest; registries and
// builders write one level, rarely two.
const maxIndexDepth = 8

const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaTypeDockerConfig       = "application/vnd.docker.container.image.v1+json"
	// annotationReferenceType marks buildkit's attestation manifests.
	annotationReferenceType   = "vnd.docker.reference.type"
	annotationReferenceDigest = "vnd.docker.reference.digest"
)

// IsIndex reports an image index media type, OCI or docker.
func IsIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == mediaTypeDockerManifestList
}

// IsManifest reports an image manifest media type, OCI or docker.
func IsManifest(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageManifest || mediaType == mediaTypeDockerManifest
}

// isLayerType reports whether a layer media type is a filesystem tar,
// compressed or not, distributable or not (foreign and non-distributable
// layers are tars like any other once their bytes are at hand).
func isLayerType(mediaType string) bool {
	return mediaType == "" ||
		strings.HasPrefix(mediaType, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mediaType, "application/vnd.docker.image.rootfs.")
}

// NotImage says what a manifest is when it is not a container image (an
// artifact, a signature, an SBOM, an attestation), "" when it is one.
func NotImage(m ocispec.Manifest) string {
	what := ""
	switch {
	case m.ArtifactType != "":
		what = m.ArtifactType + " artifact"
	case m.Config.MediaType != ocispec.MediaTypeImageConfig && m.Config.MediaType != mediaTypeDockerConfig:
		what = m.Config.MediaType + " artifact"
	default:
		for _, l := range m.Layers {
			if !isLayerType(l.MediaType) {
				what = l.MediaType + " artifact"
				break
			}
		}
	}
	if what != "" && m.Subject != nil {
		what += ", referrer of " + m.Subject.Digest.String()
	}
	return what
}

// DescribeArtifact says what a descriptor of no image media type is.
func DescribeArtifact(d ocispec.Descriptor) string {
	if d.ArtifactType != "" {
		return d.ArtifactType + " artifact"
	}
	if d.MediaType == "" {
		// The OCI spec requires it; skopeo finds no image there either.
		return "no media type in its descriptor"
	}
	return d.MediaType
}

// IsAttestation reports an index entry that buildkit wrote for the
// provenance or SBOM of a sibling, not an image to run.
func IsAttestation(d ocispec.Descriptor) bool {
	return d.Annotations[annotationReferenceType] == "attestation-manifest" ||
		(d.Platform != nil && d.Platform.OS == "unknown" && d.Platform.Architecture == "unknown")
}

// walkIndex reads index top and the indexes it nests, depth first, and
// calls leaf for every entry that is not an index. read returns a blob's
// bytes unverified: an index that lists itself or an ancestor is named as
// such before its digest is checked, so the message says what is wrong.
func walkIndex(read func(ocispec.Descriptor) ([]byte, error), top ocispec.Descriptor, leaf func(ocispec.Descriptor) error) error {
	var walk func(desc ocispec.Descriptor, chain []digest.Digest) error
	walk = func(desc ocispec.Descriptor, chain []digest.Digest) error {
		if len(chain) >= maxIndexDepth {
			return fmt.Errorf("index %s: image indexes nested more than %d deep", top.Digest, maxIndexDepth)
		}
		data, err := read(desc)
		if err != nil {
			return fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		var idx ocispec.Index
		if err := json.Unmarshal(data, &idx); err != nil {
			return fmt.Errorf("index %s: %w", desc.Digest, err)
		}
		chain = append(chain, desc.Digest)
		for _, child := range idx.Manifests {
			if slices.Contains(chain, child.Digest) {
				if child.Digest == desc.Digest {
					return fmt.Errorf("index %s refers to itself", desc.Digest)
				}
				return fmt.Errorf("index %s refers to %s, an index that contains it", desc.Digest, child.Digest)
			}
		}
		if int64(len(data)) != desc.Size || digest.FromBytes(data) != desc.Digest {
			return fmt.Errorf("index %s: %w", desc.Digest, ErrMismatch)
		}
		for _, child := range idx.Manifests {
			if IsIndex(child.MediaType) {
				err = walk(child, chain)
			} else {
				err = leaf(child)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	return walk(top, nil)
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

// normalized is p with the variants that name the same thing made equal,
// as containerd's platform matcher does (arm64 is v8; amd64 is v1; arm,
// as a platform asked for or an image's, is v7).
func (p Platform) normalized() Platform {
	switch {
	case (p.Architecture == "arm64" && p.Variant == "v8") || (p.Architecture == "amd64" && p.Variant == "v1"):
		p.Variant = ""
	case p.Architecture == "arm" && p.Variant == "":
		p.Variant = "v7"
	}
	return p
}

func platformOf(q *ocispec.Platform) Platform {
	if q == nil {
		return Platform{}
	}
	return Platform{OS: q.OS, Architecture: q.Architecture, Variant: q.Variant}
}

// anyVariant ranks, below every compatible variant, an image of another
// variant taken for a platform asked for without one.
const anyVariant = 100

// rank says how well an image for platform q suits platform p: 0 for the
// same platform, more for one p runs less well, -1 for one it does not
// run. As containerd and skopeo choose, an arm CPU runs the arm variants
// below its own, the nearest best (linux/arm/v7 takes v7, else v6, else
// v5; linux/arm is v7). Of a platform asked for with no variant (as the
// host's is), an image of any variant is taken when none fits better.
func (p Platform) rank(q *ocispec.Platform) int {
	if q == nil {
		return -1
	}
	a, b := p.normalized(), platformOf(q).normalized()
	switch {
	case a.OS != b.OS || a.Architecture != b.Architecture:
		return -1
	case a.Variant == b.Variant:
		return 0
	case a.Architecture == "arm":
		want, okA := armVersion(a.Variant)
		have, okB := armVersion(b.Variant)
		if okA && okB && have >= 5 && have < want {
			return want - have
		}
	}
	if p.Variant == "" {
		return anyVariant
	}
	return -1
}

// armVersion reads an arm variant, "v5" to "v8".
func armVersion(v string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
	return n, err == nil && strings.HasPrefix(v, "v")
}

func (p Platform) matches(q *ocispec.Platform) bool {
	return p.rank(q) >= 0
}

// best is the index, in ms, of the manifest whose platform suits p best,
// the first of those that suit it equally; -1 when none does.
func (p Platform) best(ms []ocispec.Descriptor) int {
	best, bestRank := -1, -1
	for i, m := range ms {
		if r := p.rank(m.Platform); r >= 0 && (best < 0 || r < bestRank) {
			best, bestRank = i, r
		}
	}
	return best
}

// warnOtherPlatform warns, as docker run does, when image img is for
// platform q, not p.
func warnOtherPlatform(img Image, q *ocispec.Platform, p Platform) {
	if q != nil && !p.matches(q) {
		logrus.Warnf("image %s is for %s, not %s", imageLabel(img), platformOf(q), p)
	}
}

// WarnOtherPlatform warns when the config of manifest desc, stored as
// image name, says the image is for another platform than p.
func (s *Store) WarnOtherPlatform(name string, desc ocispec.Descriptor, p Platform) {
	if _, c, err := s.ImageLayers(desc.Digest); err == nil {
		warnOtherPlatform(Image{Name: name, Manifest: desc}, configPlatform(c), p)
	}
}

// configPlatform is the platform an image config says it is for.
func configPlatform(c ocispec.Image) *ocispec.Platform {
	if c.OS == "" && c.Architecture == "" {
		return nil
	}
	return &ocispec.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant}
}

// imageParts lists the image manifests of img the store holds, each with
// its platform (from its index entry, or its config), and the indexes
// on the way to them.
func (s *Store) imageParts(img Image) (manifests []ocispec.Descriptor, indexes []digest.Digest, err error) {
	if !IsIndex(img.Manifest.MediaType) {
		desc := img.Manifest
		if desc.Platform == nil {
			_, c, err := s.ImageLayers(desc.Digest)
			if err != nil {
				return nil, nil, err
			}
			desc.Platform = configPlatform(c)
		}
		return []ocispec.Descriptor{desc}, nil, nil
	}
	read := func(d ocispec.Descriptor) ([]byte, error) {
		indexes = append(indexes, d.Digest)
		return s.ReadBlob(d.Digest)
	}
	err = walkIndex(read, img.Manifest, func(d ocispec.Descriptor) error {
		// An index names every platform it was built for; the store
		// holds those that were imported.
		if IsManifest(d.MediaType) && !IsAttestation(d) && s.HasBlob(d.Digest) {
			if d.Platform == nil {
				// An entry naming no platform is for its config's.
				if _, c, err := s.ImageLayers(d.Digest); err == nil {
					d.Platform = configPlatform(c)
				}
			}
			manifests = append(manifests, d)
		}
		return nil
	})
	return manifests, indexes, err
}

// NamesOf lists, sorted, the names of the images that are manifest d
// or an index that holds it, as docker inspect lists an image's tags.
func (s *Store) NamesOf(d digest.Digest) ([]string, error) {
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, img := range images {
		if img.Name == "" {
			continue
		}
		if img.Manifest.Digest == d {
			names = append(names, img.Name)
			continue
		}
		if !IsIndex(img.Manifest.MediaType) {
			continue
		}
		manifests, _, err := s.imageParts(img)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", img.Name, err)
		}
		if slices.ContainsFunc(manifests, func(m ocispec.Descriptor) bool { return m.Digest == d }) {
			names = append(names, img.Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// PlatformNames lists the platforms of manifests, for messages.
func PlatformNames(manifests []ocispec.Descriptor) string {
	var names []string
	for _, m := range manifests {
		if m.Platform == nil {
			names = append(names, "unknown platform")
			continue
		}
		names = append(names, platformOf(m.Platform).String())
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// choosePlatform picks the manifest of img to show on platform p (the
// host's when p is zero). An index lacking p is an error naming the
// platforms it has; a lone manifest for another platform is shown with a
// warning, as docker run does.
func (s *Store) choosePlatform(img Image, p Platform) (ocispec.Descriptor, error) {
	if p == (Platform{}) {
		p = HostPlatform()
	}
	manifests, _, err := s.imageParts(img)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if !IsIndex(img.Manifest.MediaType) {
		m := manifests[0]
		warnOtherPlatform(img, m.Platform, p)
		m.Platform = nil
		return m, nil
	}
	if i := p.best(manifests); i >= 0 {
		return manifests[i], nil
	}
	return ocispec.Descriptor{}, fmt.Errorf("image %s: %w: no platform %s (has %s)", imageLabel(img), ErrNotFound, p, PlatformNames(manifests))
}

// eachImageLayer calls fn for every layer of every manifest of img the
// store holds, with its diff_id.
func (s *Store) eachImageLayer(img Image, fn func(layer ocispec.Descriptor, diffID digest.Digest)) error {
	manifests, _, err := s.imageParts(img)
	if err != nil {
		return err
	}
	for _, desc := range manifests {
		m, c, err := s.ImageLayers(desc.Digest)
		if err != nil {
			return err
		}
		for i, l := range m.Layers {
			fn(l, c.RootFS.DiffIDs[i])
		}
	}
	return nil
}

// ImageSize counts the distinct layers of img's manifests in the store
// and their bytes, with the configs'.
func (s *Store) ImageSize(img Image) (layers int, size int64, err error) {
	manifests, _, err := s.imageParts(img)
	if err != nil {
		return 0, 0, err
	}
	seen := map[digest.Digest]bool{}
	for _, desc := range manifests {
		m, _, err := s.ImageLayers(desc.Digest)
		if err != nil {
			return 0, 0, err
		}
		size += m.Config.Size
		for _, l := range m.Layers {
			if !seen[l.Digest] {
				seen[l.Digest] = true
				layers++
				size += l.Size
			}
		}
	}
	return layers, size, nil
}

// Created is the newest creation time the configs of img's manifests give,
// or nil when none gives one.
func (s *Store) Created(img Image) *time.Time {
	manifests, _, err := s.imageParts(img)
	if err != nil {
		return nil
	}
	var newest *time.Time
	for _, desc := range manifests {
		if _, c, err := s.ImageLayers(desc.Digest); err == nil && c.Created != nil && (newest == nil || c.Created.After(*newest)) {
			newest = c.Created
		}
	}
	return newest
}
