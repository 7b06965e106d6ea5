package layer

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"

	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
)

// indexOf extracts one layer blob, with no content known beforehand, and
// returns its index bytes.
func indexOf(t *testing.T, layer []byte) ([]byte, error) {
	t.Helper()
	objects := t.TempDir()
	x, err := New(t.TempDir(), 0, func(d digest.Digest) string { return filepath.Join(objects, d.Encoded()) }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Abort()
	if _, err := x.Read(bytes.NewReader(layer)); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := x.WriteIndex(&buf, index.Info{DiffID: digest.FromBytes(layer)}); err != nil {
		t.Fatalf("accepted layer gives no index: %v", err)
	}
	return buf.Bytes(), nil
}

// TestSpilledIndexIsTheSame builds every rule case's index twice: in
// memory, and with runs of a few records spilled to disk and merged. Both
// must give the same bytes, and the same refusals.
func TestSpilledIndexIsTheSame(t *testing.T) {
	layers := testimage.SeedLayers(t)
	type outcome struct {
		index []byte
		err   error
	}
	var inMemory []outcome
	for _, l := range layers {
		b, err := indexOf(t, l)
		inMemory = append(inMemory, outcome{b, err})
	}
	saved := runBytes
	runBytes = 200
	defer func() { runBytes = saved }()
	for i, l := range layers {
		b, err := indexOf(t, l)
		want := inMemory[i]
		if (err == nil) != (want.err == nil) || (err != nil && err.Error() != want.err.Error()) {
			t.Errorf("layer %d: spilled error %v, in memory %v", i, err, want.err)
		}
		if !bytes.Equal(b, want.index) {
			t.Errorf("layer %d: spilled index differs from the one built in memory", i)
		}
	}
}

// TestTarOrderRules checks the rules between entries that depend on their
// order in the tar, each against what extracting in order gives.
func TestTarOrderRules(t *testing.T) {
	bodies := map[digest.Digest]string{}
	file := func(name, body string) testimage.Entry {
		bodies[digest.FromString(body)] = body
		return testimage.File(name, body)
	}
	dir := func(name string) testimage.Entry { return testimage.Dir(name, 0o755) }
	for _, c := range []struct {
		name    string
		entries []testimage.Entry
		// want maps each path of the index to its type and, for files,
		// content; bad names the refused entry instead.
		want map[string]string
		bad  string
	}{
		{"dir-over-file-keeps-nothing", []testimage.Entry{file("d", "f"), dir("d"), file("d/x", "x")},
			map[string]string{"d": "dir", "d/x": "x"}, ""},
		{"file-over-dir-with-entries", []testimage.Entry{dir("d"), file("d/x", "x"), file("d", "f")}, nil, "d"},
		{"file-over-dir-with-markers", []testimage.Entry{dir("d"), testimage.Whiteout("d", "x"), file("d", "f")},
			map[string]string{"d": "f"}, ""},
		{"file-over-implied-dir-of-markers", []testimage.Entry{testimage.Whiteout("d/e", "x"), file("d", "f")},
			map[string]string{"d": "f"}, ""},
		{"file-over-dir-with-marker-named-dir", []testimage.Entry{dir("d"), dir("d/.wh.e"), file("d/.wh.e/y", "y"), file("d", "f")},
			map[string]string{"d": "f"}, ""},
		{"entry-beneath-file", []testimage.Entry{file("d", "f"), file("d/x", "x")}, nil, "d/x"},
		{"marker-beneath-file", []testimage.Entry{file("d", "f"), testimage.Whiteout("d", "x")},
			map[string]string{"d": "f"}, ""},
		{"entry-beneath-symlink", []testimage.Entry{testimage.Symlink("d", "e"), file("d/x", "x")}, nil, "d/x"},
		{"deep-entry-then-ancestor-file", []testimage.Entry{file("a/b/c", "c"), file("a", "f")}, nil, "a"},
		{"dir-again-keeps-children", []testimage.Entry{dir("d"), file("d/x", "x"), dir("d")},
			map[string]string{"d": "dir", "d/x": "x"}, ""},
		{"opaque-dropped-with-its-dir", []testimage.Entry{dir("d"), testimage.Opaque("d"), file("d", "f"), dir("d")},
			map[string]string{"d": "dir"}, ""},
		{"opaque-kept-over-dir-again", []testimage.Entry{dir("d"), testimage.Opaque("d"), dir("d")},
			map[string]string{"d": "dir opaque", "d/.wh..wh..opq": ""}, ""},
		{"last-entry-wins", []testimage.Entry{file("a", "1"), file("a", "2"), file("a", "3")},
			map[string]string{"a": "3"}, ""},
		{"link-keeps-the-old-file", []testimage.Entry{file("a", "old"), testimage.Hardlink("b", "a"), file("a", "new"), testimage.Hardlink("c", "a")},
			map[string]string{"a": "new 2 a", "b": "old", "c": "new 2 a"}, ""},
		{"link-to-rewritten-link", []testimage.Entry{file("a", "old"), testimage.Hardlink("b", "a"), testimage.Hardlink("c", "b"), file("b", "new")},
			map[string]string{"a": "old 2 a", "b": "new", "c": "old 2 a"}, ""},
		{"link-before-target", []testimage.Entry{testimage.Hardlink("b", "a"), file("a", "1"), file("a", "2")},
			map[string]string{"a": "2 2 a", "b": "2 2 a"}, ""},
		{"link-to-dir-in-tar-order", []testimage.Entry{dir("d"), testimage.Hardlink("h", "d"), file("d", "f")}, nil, "h"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := indexOf(t, testimage.Tar(t, c.entries...))
			if c.bad != "" {
				var ee *EntryError
				if !errors.As(err, &ee) || ee.Entry != c.bad {
					t.Fatalf("error %v, want one naming entry %q", err, c.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := index.Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for i := uint32(1); i < uint32(r.Len()); i++ {
				e, _ := r.Entry(i)
				p, _ := r.Path(i)
				switch {
				case e.Type == index.TypeDir && e.Flags&index.FlagOpaque != 0:
					got[p] = "dir opaque"
				case e.Type == index.TypeDir:
					got[p] = "dir"
				case e.Type != index.TypeReg:
					got[p] = e.Type.String()
				default:
					got[p] = bodies[e.Object]
					if e.Nlink > 1 {
						inode, _ := r.Path(e.Inode)
						got[p] += fmt.Sprintf(" %d %s", e.Nlink, inode)
					}
				}
			}
			if !maps.Equal(got, c.want) {
				t.Errorf("index holds %v, want %v", got, c.want)
			}
		})
	}
}
