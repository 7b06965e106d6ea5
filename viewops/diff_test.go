package viewops

import (
	"strings"
	"testing"

	"github.com/layerfs/layerfs/internal/teststore"
	"github.com/layerfs/layerfs/view/stack"
)

func diffLines(t *testing.T, a, b *stack.View) string {
	t.Helper()
	changes, err := Diff(a, b)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range changes {
		lines = append(lines, c.String())
	}
	return strings.Join(lines, "\n")
}

func TestDiffSample(t *testing.T) {
	v := sampleView(t)
	want := `M etc/hostname
D etc/motd
A etc/os-release
A home/user/notes.txt
A usr/bin/passwd
A usr/bin/ping
D usr/share/doc
D usr/share/doc/base
D usr/share/doc/base/README
A var/log/app.log
D var/log/old.log`
	if got := diffLines(t, v.Merged(1), v); got != want {
		t.Errorf("base layer to image:\n%s\nwant:\n%s", got, want)
	}
	reversed := strings.NewReplacer("A ", "D ", "D ", "A ").Replace(want)
	if got := diffLines(t, v, v.Merged(1)); got != reversed {
		t.Errorf("image to base layer:\n%s\nwant:\n%s", got, reversed)
	}
	if got := diffLines(t, v, v); got != "" {
		t.Errorf("image to itself:\n%s", got)
	}
}

func TestDiffRules(t *testing.T) {
	tests := []struct{ rule, want string }{
		// A type change takes the directory's children with it.
		{"file-over-dir", "M d\nD d/sub\nD d/sub/y\nD d/x"},
		{"dir-over-file", "M d\nA d/z"},
		{"dir-over-dir", "M d\nA d/y"},
		{"implied-over-dir", "A usr/bin\nA usr/bin/tool"},
		{"root-dot", "M ."},
		{"whiteout-own-layer-before", "M a"},
		{"mtime-nanoseconds", ""},
	}
	for _, tt := range tests {
		t.Run(tt.rule, func(t *testing.T) {
			_, v := teststore.OpenImage(t, teststore.RuleCase(t, tt.rule).Layers)
			if got := diffLines(t, v.Merged(1), v); got != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// TestDiffEveryAttribute changes one attribute at a time between two
// images that share nothing, so nothing is skipped as shared.
func TestDiffEveryAttribute(t *testing.T) {
	c := teststore.RuleCase(t, "xattrs")
	_, a := teststore.OpenImage(t, c.Layers)
	changed := teststore.RuleCase(t, "xattrs")
	e := changed.Layers[0].Entries
	e[0] = e[0].WithXattr("user.comment", "another")
	e[1].Body = []byte("B\n")
	e[2] = e[2].WithMode(0o750)
	e[3] = e[3].WithOwner(1, 1)
	_, b := teststore.OpenImage(t, changed.Layers)
	if got, want := diffLines(t, a, b), "M binary\nM dir\nM ping\nM plain"; got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}
