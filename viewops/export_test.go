package viewops

import (
	"archive/tar"
	"bytes"
	"io"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/whiteout"
)

func exportHeaders(t *testing.T, layers []testimage.Layer) []*tar.Header {
	t.Helper()
	s, v := teststore.OpenImage(t, layers)
	var buf bytes.Buffer
	if err := Export(&buf, v, s.OpenObject); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&buf)
	var hs []*tar.Header
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return hs
		}
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
}

// TestExportShape checks the stream's form for every rule case: the root
// first, each directory's subtree right after it, and no whiteout marker.
func TestExportShape(t *testing.T) {
	for _, c := range testimage.RuleCases() {
		t.Run(c.Name, func(t *testing.T) {
			hs := exportHeaders(t, c.Layers)
			if len(hs) == 0 {
				t.Fatal("the export is empty, want the root ./ first")
			}
			if hs[0].Name != "./" || hs[0].Typeflag != tar.TypeDir {
				t.Fatalf("first entry %+v, want the root ./", hs[0])
			}
			// open is the directory being written into, and its parents.
			open := []string{""}
			prev, prevParent := "", ""
			for _, h := range hs[1:] {
				p := strings.TrimSuffix(h.Name, "/")
				parent := ""
				if i := strings.LastIndexByte(p, '/'); i >= 0 {
					parent = p[:i]
				}
				for len(open) > 0 && open[len(open)-1] != parent {
					open = open[:len(open)-1]
				}
				if len(open) == 0 {
					t.Fatalf("%q after %q: not in a directory being written", p, prev)
				}
				if prev != "" && prevParent == parent && path.Base(prev) >= path.Base(p) {
					t.Errorf("%q after %q: not sorted", p, prev)
				}
				prev, prevParent = p, parent
				if h.Typeflag == tar.TypeDir {
					open = append(open, p)
				}
				for _, c := range strings.Split(p, "/") {
					if whiteout.IsMarker(c) {
						t.Errorf("marker %q exported", p)
					}
				}
			}
		})
	}
}

func TestExportHardlinks(t *testing.T) {
	for rule, want := range map[string]map[string]string{
		"hardlink-target-first": {"b": "a", "d": "a", "sub/c": "a"},
		"hardlink-target-later": {"b": "a"},
		// A link to a lower layer's file is a file of its own (see
		// stack.View.entry): exported with the target's bytes, not linked.
		"hardlink-to-lower": {},
	} {
		t.Run(rule, func(t *testing.T) {
			got := map[string]string{}
			for _, h := range exportHeaders(t, teststore.RuleCase(t, rule).Layers) {
				if h.Typeflag == tar.TypeLink {
					got[h.Name] = h.Linkname
				}
			}
			if len(got) != len(want) {
				t.Fatalf("links %v, want %v", got, want)
			}
			for k, v := range want {
				if got[k] != v {
					t.Errorf("links %v, want %v", got, want)
				}
			}
		})
	}
}

func TestExportAttributes(t *testing.T) {
	byName := map[string]*tar.Header{}
	for _, h := range exportHeaders(t, teststore.RuleCase(t, "mtime-nanoseconds").Layers) {
		byName[h.Name] = h
	}
	if h := byName["d/"]; h == nil || !h.ModTime.Equal(time.Date(2021, time.March, 4, 5, 6, 7, 123456789, time.UTC)) {
		t.Errorf("directory d: %+v", h)
	}
	if h := byName["d/one"]; h == nil || h.ModTime.Nanosecond() != 1 {
		t.Errorf("d/one: %+v", h)
	}
	byName = map[string]*tar.Header{}
	for _, h := range exportHeaders(t, teststore.RuleCase(t, "xattrs").Layers) {
		byName[h.Name] = h
	}
	if h := byName["binary"]; h == nil || h.PAXRecords["SCHILY.xattr.user.bytes"] != "\x00\x01\xfe\xff" {
		t.Errorf("binary: %+v", h)
	}
	if h := byName["ping"]; h == nil || h.PAXRecords["SCHILY.xattr.security.capability"] != testimage.FileCapability(13, 10) {
		t.Errorf("ping: %+v", h)
	}
}
