package layer

import (
	"archive/tar"
	"strings"
	"testing"
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
