package testimage

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestDockerArchives(t *testing.T) {
	img := Sample()
	// A layer that occurs twice must still give a loadable archive.
	img.Layers = append(img.Layers, img.Layers[0])
	dir := t.TempDir()
	descs, err := WriteLayout(dir, img)
	if err != nil {
		t.Fatal(err)
	}
	_, config, err := ReadImage(dir, descs[0])
	if err != nil {
		t.Fatal(err)
	}
	tags := []string{"example.com/layerfs/sample:v1", "sample:latest"}
	for _, form := range []struct {
		name  string
		write func(string, []string, Image) error
		// files are paths the archive must hold, beyond the layers.
		files []string
	}{
		{"docker25", WriteDockerArchive, []string{"blobs/sha256/", "index.json", "manifest.json", "oci-layout", "repositories"}},
		{"legacy", WriteLegacyDockerArchive, []string{"manifest.json", "repositories"}},
	} {
		t.Run(form.name, func(t *testing.T) {
			for _, tags := range [][]string{tags, nil} {
				archive := filepath.Join(t.TempDir(), "image.tar")
				if err := form.write(archive, tags, img); err != nil {
					t.Fatal(err)
				}
				checkLayers := func(ref string) {
					t.Helper()
					got := skopeoInspect(t, ref)
					if !slices.Equal(got.Layers, config.RootFS.DiffIDs) {
						t.Errorf("skopeo inspect %s: layers %v, want the diff_ids %v", ref, got.Layers, config.RootFS.DiffIDs)
					}
				}
				checkLayers("docker-archive:" + archive)
				for _, tag := range tags {
					checkLayers("docker-archive:" + archive + ":" + tag)
				}
				if form.name == "docker25" && tags != nil {
					// Docker 25's archive is also an OCI archive, named by tag.
					checkLayers("oci-archive:" + archive + ":v1")
				}
				names := strings.Fields(string(RunTool(t, "tar", "-tf", archive)))
				for _, f := range form.files {
					if f == "repositories" && tags == nil {
						continue
					}
					if !slices.Contains(names, f) {
						t.Errorf("archive with tags %q lacks %s; it holds %q", tags, f, names)
					}
				}
				if form.name == "legacy" {
					checkLegacyLayers(t, names, config.RootFS.DiffIDs)
				}
			}
		})
	}
}

// checkLegacyLayers checks the legacy archive has one <id>/layer.tar per
// layer, a repeated layer included, next to <id>/VERSION and <id>/json.
func checkLegacyLayers(t *testing.T, names []string, diffIDs []digest.Digest) {
	t.Helper()
	var ids []string
	for _, n := range names {
		if id, ok := strings.CutSuffix(n, "/layer.tar"); ok {
			ids = append(ids, id)
			for _, f := range []string{"/VERSION", "/json"} {
				if !slices.Contains(names, id+f) {
					t.Errorf("legacy archive has %s but no %s", n, id+f)
				}
			}
		}
	}
	if len(ids) != len(diffIDs) {
		t.Errorf("legacy archive has %d layer.tar files, want %d", len(ids), len(diffIDs))
	}
}

func TestParseRepoTag(t *testing.T) {
	for _, c := range []struct{ in, repo, tag, full string }{
		{"busybox", "busybox", "latest", "docker.io/library/busybox:latest"},
		{"busybox:1.36", "busybox", "1.36", "docker.io/library/busybox:1.36"},
		{"user/app:v2", "user/app", "v2", "docker.io/user/app:v2"},
		{"localhost:5000/app", "localhost:5000/app", "latest", "localhost:5000/app:latest"},
		{"localhost/app:x", "localhost/app", "x", "localhost/app:x"},
		{"quay.io/org/app:1", "quay.io/org/app", "1", "quay.io/org/app:1"},
	} {
		r := parseRepoTag(c.in)
		if r.repo != c.repo || r.tag != c.tag || r.fullName() != c.full {
			t.Errorf("parseRepoTag(%q) = %+v with full name %q, want %s %s %s", c.in, r, r.fullName(), c.repo, c.tag, c.full)
		}
	}
}
