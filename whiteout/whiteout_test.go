package whiteout

import (
	"reflect"
	"strings"
	"testing"
)

func TestHiddenAndValidate(t *testing.T) {
	cases := []struct {
		marker string
		hidden string
		hides  bool
		bad    string
	}{
		{".wh.a", "a", true, ""},
		{".wh..a", ".a", true, ""},
		{Opaque, "", false, ""},
		{".wh..wh.plnk", "", false, ""},
		{"a", "", false, ""},
		{".wh.", "", true, "empty"},
		{".wh..", ".", true, `hides "."`},
		{".wh...", "..", true, `hides ".."`},
		{".wh.a/b", "a/b", true, "leaves its directory"},
	}
	for _, c := range cases {
		h, ok := Hidden(c.marker)
		if ok != c.hides || h != c.hidden {
			t.Errorf("Hidden(%q) = %q, %v; want %q, %v", c.marker, h, ok, c.hidden, c.hides)
		}
		err := Validate(c.marker)
		if (err != nil) != (c.bad != "") || (err != nil && !strings.Contains(err.Error(), c.bad)) {
			t.Errorf("Validate(%q) = %v, want an error saying %q", c.marker, err, c.bad)
		}
	}
}

// dir is one layer's directory for the tests: names ending in "/" are
// directories.
type dir struct {
	names  []string
	opaque bool
}

func (d dir) find(name string) int {
	for i, n := range d.names {
		if strings.TrimSuffix(n, "/") == name {
			return i
		}
	}
	return -1
}

func (d dir) Lookup(name string) (int, bool) { i := d.find(name); return i, i >= 0 }
func (d dir) IsDir(i int) bool               { return strings.HasSuffix(d.names[i], "/") }
func (d dir) Opaque() bool                   { return d.opaque }
func (d dir) Each(fn func(string, int)) {
	for i, n := range d.names {
		fn(strings.TrimSuffix(n, "/"), i)
	}
}

// listing names each merged child by name@layer, layer counted from the
// top of the stack.
func listing(stack []Dir) []string {
	var out []string
	for _, e := range List(stack) {
		out = append(out, e.Name+"@"+string(rune('0'+e.Top.Layer)))
	}
	return out
}

func TestMerge(t *testing.T) {
	cases := []struct {
		name  string
		stack []Dir // highest first
		want  []string
	}{
		{"highest wins", []Dir{dir{names: []string{"a"}}, dir{names: []string{"a", "b"}}}, []string{"a@0", "b@1"}},
		{"whiteout hides lower", []Dir{dir{names: []string{".wh.a"}}, dir{names: []string{"a", "b"}}}, []string{"b@1"}},
		{"whiteout spares its own layer", []Dir{dir{names: []string{"a", ".wh.a"}}, dir{names: []string{"a"}}}, []string{"a@0"}},
		{"whiteout reaches every lower layer", []Dir{dir{names: []string{".wh.a"}}, dir{names: []string{"c"}}, dir{names: []string{"a"}}}, []string{"c@1"}},
		{"opaque hides lower children, keeps its own", []Dir{dir{names: []string{Opaque, "x"}, opaque: true}, dir{names: []string{"y", "x"}}}, []string{"x@0"}},
		{"markers never shown", []Dir{dir{names: []string{".wh..wh.plnk", ".wh.zz"}}}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := listing(c.stack); !reflect.DeepEqual(got, c.want) {
				t.Errorf("List = %v, want %v", got, c.want)
			}
			for _, e := range List(c.stack) {
				if src := Lookup(c.stack, e.Name); len(src) == 0 || src[0] != e.Top {
					t.Errorf("Lookup(%q) = %v, List says %v", e.Name, src, e.Top)
				}
			}
		})
	}
}

func TestLookupStacks(t *testing.T) {
	cases := []struct {
		name  string
		stack []Dir
		want  []Source
	}{
		{"dir over dir merges", []Dir{dir{names: []string{"d/"}}, dir{names: []string{"d/"}}}, []Source{{0, 0}, {1, 0}}},
		{"dir over file merges with nothing", []Dir{dir{names: []string{"d/"}}, dir{names: []string{"d"}}, dir{names: []string{"d/"}}}, []Source{{0, 0}}},
		{"file over dir", []Dir{dir{names: []string{"d"}}, dir{names: []string{"d/"}}}, []Source{{0, 0}}},
		{"whiteout then new dir", []Dir{dir{names: []string{"d/", ".wh.d"}}, dir{names: []string{"d/"}}}, []Source{{0, 0}}},
		{"stops at an opaque parent", []Dir{dir{names: []string{"d/"}, opaque: true}, dir{names: []string{"d/"}}}, []Source{{0, 0}}},
		{"marker names are not looked up", []Dir{dir{names: []string{".wh.d"}}}, nil},
	}
	for _, c := range cases {
		name := "d"
		if c.want == nil {
			name = ".wh.d"
		}
		if got := Lookup(c.stack, name); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: Lookup = %v, want %v", c.name, got, c.want)
		}
	}
}

// TestCovers checks the order of the hiding rules (docs/semantics.md):
// an opaque directory, then a replacing entry, then a whiteout marker.
func TestCovers(t *testing.T) {
	cases := []struct {
		layer      dir
		lowerIsDir bool
		want       Cover
	}{
		{dir{names: []string{"a", ".wh.a"}, opaque: true}, false, CoveredByOpaque},
		{dir{names: []string{"a", ".wh.a"}}, true, CoveredByReplace},
		{dir{names: []string{"a/"}}, false, CoveredByReplace},
		{dir{names: []string{"a/", ".wh.a"}}, true, CoveredByWhiteout},
		{dir{names: []string{"a/"}}, true, Uncovered},
		{dir{names: []string{"b", ".wh.b"}}, false, Uncovered},
	}
	for _, c := range cases {
		if got := At(c.layer, "a").Covers(c.lowerIsDir); got != c.want {
			t.Errorf("%+v over a lower entry (directory: %v): %v, want %v", c.layer, c.lowerIsDir, got, c.want)
		}
	}
}
