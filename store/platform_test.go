package store

import (
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestPlatformBest chooses among an index's platforms as skopeo (its
// --override-arch and --override-variant) and containerd do: an arm
// variant takes the nearest variant below it, linux/arm is v7, and a
// platform with no variant takes another variant only when none fits.
func TestPlatformBest(t *testing.T) {
	descs := func(platforms ...string) []ocispec.Descriptor {
		var out []ocispec.Descriptor
		for _, s := range platforms {
			p, err := ParsePlatform(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ocispec.Descriptor{Platform: &ocispec.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}})
		}
		return out
	}
	for _, c := range []struct {
		want  string
		index []string
		best  int
	}{
		{"linux/arm", []string{"linux/arm/v5", "linux/arm/v6", "linux/arm/v7", "linux/arm64"}, 2},
		{"linux/arm", []string{"linux/arm/v5", "linux/arm/v6"}, 1},
		{"linux/arm", []string{"linux/arm/v5", "linux/arm/v7", "linux/arm/v6"}, 1},
		{"linux/arm", []string{"linux/arm/v8"}, 0},
		{"linux/arm/v7", []string{"linux/arm/v6", "linux/amd64"}, 0},
		{"linux/arm/v7", []string{"linux/arm/v8"}, -1},
		{"linux/arm/v8", []string{"linux/arm/v5", "linux/arm/v6"}, 1},
		{"linux/arm/v6", []string{"linux/arm/v5", "linux/arm/v7", "linux/arm/v6"}, 2},
		{"linux/arm/v5", []string{"linux/arm/v6"}, -1},
		{"linux/arm64", []string{"linux/amd64", "linux/arm64/v8"}, 1},
		{"linux/arm64/v8", []string{"linux/arm64"}, 0},
		{"linux/amd64", []string{"linux/amd64/v3", "linux/amd64"}, 1},
		{"linux/amd64", []string{"linux/amd64/v2"}, 0},
		{"linux/amd64/v3", []string{"linux/amd64/v2"}, -1},
		{"linux/amd64", []string{"windows/amd64", "linux/arm64"}, -1},
	} {
		p, err := ParsePlatform(c.want)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.best(descs(c.index...)); got != c.best {
			t.Errorf("%s of %v: entry %d, want %d", c.want, c.index, got, c.best)
		}
	}
}

// TestDescribeArtifactWithoutMediaType names what an index entry lacks,
// where the skipped line read "()".
func TestDescribeArtifactWithoutMediaType(t *testing.T) {
	if got := DescribeArtifact(ocispec.Descriptor{}); got != "no media type in its descriptor" {
		t.Errorf("DescribeArtifact of a descriptor without a media type: %q", got)
	}
}
