package testimage

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// sha256sum digests file with coreutils, not with the hash the code under
// test used.
func sha256sum(t *testing.T, file string) digest.Digest {
	t.Helper()
	return digest.Digest("sha256:" + strings.Fields(string(RunTool(t, "sha256sum", file)))[0])
}

// uncompressedDigest decompresses blob with the gzip or zstd program and
// digests the result with sha256sum.
func uncompressedDigest(t *testing.T, blob, mediaType string) digest.Digest {
	t.Helper()
	var tool string
	switch mediaType {
	case ocispec.MediaTypeImageLayer:
		return sha256sum(t, blob)
	case ocispec.MediaTypeImageLayerGzip:
		tool = "gzip"
	case ocispec.MediaTypeImageLayerZstd:
		tool = "zstd"
	default:
		t.Fatalf("unexpected layer media type %q", mediaType)
	}
	raw := filepath.Join(t.TempDir(), "layer.tar")
	RunTool(t, "sh", "-c", `"$0" -dc <"$1" >"$2"`, RequireTool(t, tool), blob, raw)
	return sha256sum(t, raw)
}

type inspected struct {
	Digest       digest.Digest
	Architecture string
	Os           string
	Layers       []digest.Digest
}

// skopeoInspect runs skopeo inspect on ref; global holds options such as
// --override-arch that skopeo takes before the command.
func skopeoInspect(t *testing.T, ref string, global ...string) inspected {
	t.Helper()
	var got inspected
	out := RunTool(t, "skopeo", append(global, "inspect", ref)...)
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("skopeo inspect %s: %v\n%s", ref, err, out)
	}
	return got
}

// checkImage checks the image of manifest desc with real tools: skopeo,
// whose output is got, saw its layers and platform; each blob has the
// digest and size the manifest says and decompresses to the config's
// diff_id. skopeo does not show variants, so that one is read back.
func checkImage(t *testing.T, dir string, desc ocispec.Descriptor, want Image, got inspected) {
	t.Helper()
	m, c, err := ReadImage(dir, desc)
	if err != nil {
		t.Fatal(err)
	}
	var layers []digest.Digest
	for _, l := range m.Layers {
		layers = append(layers, l.Digest)
	}
	p := want.platform()
	if !slices.Equal(got.Layers, layers) || got.Os != p.OS || got.Architecture != p.Architecture {
		t.Errorf("skopeo inspect = %+v, want layers %v, platform %+v", got, layers, p)
	}
	if c.Variant != p.Variant {
		t.Errorf("config has variant %q, want %q", c.Variant, p.Variant)
	}
	if len(m.Layers) != len(want.Layers) || len(c.RootFS.DiffIDs) != len(want.Layers) {
		t.Fatalf("%s: %d layers and %d diff_ids, want %d", desc.Digest, len(m.Layers), len(c.RootFS.DiffIDs), len(want.Layers))
	}
	for i, l := range m.Layers {
		if mt, _ := want.Layers[i].Compression.mediaType(); l.MediaType != mt {
			t.Errorf("layer %d: media type %s, want %s", i, l.MediaType, mt)
		}
		blob := BlobPath(dir, l.Digest)
		if d := sha256sum(t, blob); d != l.Digest {
			t.Errorf("layer %d: blob digests to %s, manifest says %s", i, d, l.Digest)
		}
		if info, err := os.Stat(blob); err != nil || info.Size() != l.Size {
			t.Errorf("layer %d: stat %v, manifest says size %d", i, err, l.Size)
		}
		if d := uncompressedDigest(t, blob, l.MediaType); d != c.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: uncompressed digest %s, diff_id %s", i, d, c.RootFS.DiffIDs[i])
		}
	}
}
