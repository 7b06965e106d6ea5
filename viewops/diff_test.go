package viewops

import (
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
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
// images that share nothing, so nothing is skipped as shared, and checks
// what each modified path says changed.
func TestDiffEveryAttribute(t *testing.T) {
	when := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	file := func(name, body string) testimage.Entry { return testimage.File(name, body).WithModTime(when) }
	tests := []struct {
		before, after testimage.Entry
		changed       string
	}{
		{file("body", "b\n"), file("body", "c\n"), "content"},
		{file("longer", "b\n"), file("longer", "bb\n"), "size content"},
		{file("mode", "m\n"), file("mode", "m\n").WithMode(0o4755), "mode"},
		{file("gid", "g\n"), file("gid", "g\n").WithOwner(0, 1), "owner"},
		{file("ns", "n\n"), file("ns", "n\n").WithModTime(when.Add(1)), "mtime"},
		{file("xattr", "x\n").WithXattr("user.a", "1"), file("xattr", "x\n").WithXattr("user.a", "2"), "xattrs"},
		{testimage.Symlink("link", "abc").WithModTime(when), testimage.Symlink("link", "abd").WithModTime(when), "link"},
		{testimage.CharDev("dev", 1, 3).WithModTime(when), testimage.CharDev("dev", 1, 5).WithModTime(when), "device"},
		{testimage.Fifo("type").WithModTime(when), testimage.CharDev("type", 0, 1).WithModTime(when).WithMode(0o644), "type device"},
		{file("same", "s\n"), file("same", "s\n"), ""},
	}
	var before, after []testimage.Entry
	for _, tt := range tests {
		before, after = append(before, tt.before), append(after, tt.after)
	}
	_, a := teststore.OpenImage(t, []testimage.Layer{{Entries: before}})
	_, b := teststore.OpenImage(t, []testimage.Layer{{Entries: after}})
	changes, err := Diff(a, b)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range changes {
		if c.Kind != Modified {
			t.Errorf("%s: %c, want M", c.Path, c.Kind)
		}
		got[c.Path] = strings.Join(c.Changed, " ")
	}
	for _, tt := range tests {
		if got[tt.before.Name] != tt.changed {
			t.Errorf("%s: changed %q, want %q", tt.before.Name, got[tt.before.Name], tt.changed)
		}
	}
}
