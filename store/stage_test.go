package store

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

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
