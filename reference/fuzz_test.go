package reference

import (
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	hex := strings.Repeat("0123456789ab", 2)
	for name, refused := range map[string]bool{
		"sha256:" + hex: true,
		"sha512:" + hex: true,
		hex[:12]:        true,
		hex:             true,
		"docker.io/library/" + hex[:12] + ":latest": true,
		"sample":                          false,
		"debian:12":                       false,
		"docker.io/library/debian:latest": false,
		"host:5000/" + hex + ":v1":        false,
		hex[:11]:                          false,
		"app:" + hex:                      false,
	} {
		if err := CheckName(name); (err != nil) != refused {
			t.Errorf("CheckName(%q) = %v, want refused %v", name, err, refused)
		}
	}
}

// FuzzParseReference checks that a reference that parses prints as one
// that parses back to itself.
func FuzzParseReference(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(r.String())
		if err != nil || again != r {
			t.Fatalf("Parse(%q) = %+v, printed %q, parsed back as %+v, %v", s, r, r.String(), again, err)
		}
	})
}
