package testimage

import (
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WriteDockerArchive writes img as `docker save` of Docker 25 and later
// does: an OCI layout of uncompressed layers whose index.json names each
// tag, plus the manifest.json and repositories files that older readers
// use. img.Name and the layers' Compression are not used.
func WriteDockerArchive(archive string, tags []string, img Image) error {
	return writeArchive(archive, func(stage, _ string) error {
		if err := initLayout(stage); err != nil {
			return err
		}
		img.Layers = withCompression(None, img.Layers)
		w, err := writeImage(stage, img)
		if err != nil {
			return err
		}
		// Docker lists the manifest once per tag, and once untagged if
		// there is no tag, so a reader finds every name in index.json.
		var descs []ocispec.Descriptor
		for _, t := range tags {
			d := w.desc
			r := parseRepoTag(t)
			d.Annotations = map[string]string{
				"io.containerd.image.name": r.fullName(),
				ocispec.AnnotationRefName:  r.tag,
			}
			descs = append(descs, d)
		}
		if len(descs) == 0 {
			descs = append(descs, w.desc)
		}
		if err := addToIndex(stage, descs); err != nil {
			return err
		}
		blobName := func(d digest.Digest) string {
			return path.Join(ocispec.ImageBlobsDir, d.Algorithm().String(), d.Encoded())
		}
		var layers []string
		var top string
		for _, l := range w.manifest.Layers {
			layers = append(layers, blobName(l.Digest))
			top = l.Digest.Encoded()
		}
		return writeDockerFiles(stage, tags, blobName(w.manifest.Config.Digest), layers, top)
	})
}

// WriteLegacyDockerArchive writes img as `docker save` before Docker 25
// does: one directory per layer holding layer.tar, VERSION and json, the
// config as <hex>.json, manifest.json and repositories.
func WriteLegacyDockerArchive(archive string, tags []string, img Image) error {
	return writeArchive(archive, func(stage, scratch string) error {
		if err := initLayout(scratch); err != nil {
			return err
		}
		img.Layers = withCompression(None, img.Layers)
		w, err := writeImage(scratch, img)
		if err != nil {
			return err
		}
		var layers []string
		var parent string
		for _, l := range w.manifest.Layers {
			// Like Docker's v1 IDs, an ID depends on the layers beneath, so
			// a layer that occurs twice gets two directories.
			id := digest.FromString(parent + " " + l.Digest.String()).Encoded()
			dir := filepath.Join(stage, id)
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			if err := os.Link(BlobPath(scratch, l.Digest), filepath.Join(dir, "layer.tar")); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, "VERSION"), []byte("1.0"), 0o644); err != nil {
				return err
			}
			v1 := struct {
				ID     string `json:"id"`
				Parent string `json:"parent,omitempty"`
			}{id, parent}
			if err := writeJSONFile(filepath.Join(dir, "json"), v1); err != nil {
				return err
			}
			layers = append(layers, id+"/layer.tar")
			parent = id
		}
		config := w.manifest.Config.Digest.Encoded() + ".json"
		if err := os.Link(BlobPath(scratch, w.manifest.Config.Digest), filepath.Join(stage, config)); err != nil {
			return err
		}
		return writeDockerFiles(stage, tags, config, layers, parent)
	})
}

// writeDockerFiles writes manifest.json and, when there are tags,
// repositories, which maps each repository's tags to the top layer's ID.
func writeDockerFiles(stage string, tags []string, config string, layers []string, top string) error {
	manifest := []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}{{config, tags, layers}}
	if err := writeJSONFile(filepath.Join(stage, "manifest.json"), manifest); err != nil {
		return err
	}
	if len(tags) == 0 {
		return nil
	}
	repos := map[string]map[string]string{}
	for _, t := range tags {
		r := parseRepoTag(t)
		if repos[r.repo] == nil {
			repos[r.repo] = map[string]string{}
		}
		repos[r.repo][r.tag] = top
	}
	return writeJSONFile(filepath.Join(stage, "repositories"), repos)
}

type repoTag struct{ repo, tag string }

func parseRepoTag(s string) repoTag {
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		return repoTag{s[:i], s[i+1:]}
	}
	return repoTag{s, "latest"}
}

// fullName is the name containerd records: "busybox" is
// "docker.io/library/busybox", as Docker Hub's short names expand.
func (r repoTag) fullName() string {
	name := r.repo
	domain, _, ok := strings.Cut(name, "/")
	if !ok || !strings.ContainsAny(domain, ".:") && domain != "localhost" {
		if !ok {
			name = "library/" + name
		}
		name = "docker.io/" + name
	}
	return name + ":" + r.tag
}
