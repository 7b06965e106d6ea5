package layer

import (
	"strings"
	"testing"
)

// The seed corpora under testdata/fuzz are generated, and checked, by
// store's TestFuzzSeedsAreCurrent.

// FuzzCleanPath checks that a cleaned tar name never leaves the layer.
func FuzzCleanPath(f *testing.F) {
	f.Fuzz(func(t *testing.T, name string) {
		p, err := CleanPath(name)
		if err != nil {
			return
		}
		if p == ".." || strings.HasPrefix(p, "../") || strings.HasPrefix(p, "/") || strings.Contains(p, "//") ||
			strings.HasSuffix(p, "/") || p == "." || strings.Contains(p, "\x00") || len(p) > maxPathLen {
			t.Fatalf("CleanPath(%q) = %q", name, p)
		}
		for _, c := range strings.Split(p, "/") {
			if c == "." || c == ".." || len(c) > maxNameLen || (p != "" && c == "") {
				t.Fatalf("CleanPath(%q) = %q holds component %q", name, p, c)
			}
		}
	})
}
