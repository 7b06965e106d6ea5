package store

import (
	"archive/tar"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// An xattr with an empty name cannot be set on any Linux file, and GNU
// tar cannot list one, so it is checked here rather than among the
// refused images.
func TestEmptyXattrNameRefused(t *testing.T) {
	hdr := &tar.Header{Name: "f", Typeflag: tar.TypeReg, PAXRecords: map[string]string{xattrPAX: "v"}}
	if err := checkRepresentable(hdr); err == nil || !strings.Contains(err.Error(), "empty name") {
		t.Errorf("checkRepresentable = %v, want an empty-name refusal", err)
	}
}

func TestCheckDigest(t *testing.T) {
	for d, want := range map[digest.Digest]string{
		digest.Digest("sha512:" + strings.Repeat("ab", 64)): "sha512 digests are not supported",
		digest.Digest("sha256:" + strings.Repeat("ab", 32)): "",
		digest.Digest("sha256:abc"):                         "invalid",
	} {
		err := checkDigest(d)
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("checkDigest(%s) = %v, want %q", d, err, want)
		}
	}
}
