package oracle

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func sampleTree() Tree {
	return Tree{
		".":   {Type: TypeDir, Mode: 0o755, Mtime: ts(1)},
		"d":   {Type: TypeDir, Mode: 0o750, Mtime: ts(2)},
		"d/f": {Type: TypeReg, Mode: 0o644, Size: 3, Mtime: ts(3), SHA256: sum("abc"), Nlink: 1, HardlinkID: "d/f", Xattrs: map[string]string{"user.a": "1"}},
		"l":   {Type: TypeSymlink, Mode: 0o777, Size: 3, Link: "d/f", Nlink: 1, HardlinkID: "l"},
		"c":   {Type: TypeChar, Mode: 0o600, DevMajor: 1, DevMinor: 3, Nlink: 1, HardlinkID: "c"},
	}
}

func clone(t Tree) Tree {
	out := make(Tree, len(t))
	for k, e := range t {
		if e.Xattrs != nil {
			xs := make(map[string]string)
			for n, v := range e.Xattrs {
				xs[n] = v
			}
			e.Xattrs = xs
		}
		out[k] = e
	}
	return out
}

func TestDiffEachField(t *testing.T) {
	if d := Diff(sampleTree(), sampleTree()); len(d) != 0 {
		t.Fatalf("a tree differs from itself: %q", d)
	}
	cases := []struct {
		name   string
		change func(Tree)
		want   string
	}{
		{"type", func(t Tree) { e := t["c"]; e.Type = TypeBlock; t["c"] = e }, "c: type want char got block"},
		{"mode", func(t Tree) { e := t["d/f"]; e.Mode = 0o4644; t["d/f"] = e }, "d/f: mode want 0644 got 4644"},
		{"uid", func(t Tree) { e := t["d/f"]; e.UID = 5; t["d/f"] = e }, "d/f: uid want 0 got 5"},
		{"gid", func(t Tree) { e := t["d"]; e.GID = 6; t["d"] = e }, "d: gid want 0 got 6"},
		{"size", func(t Tree) { e := t["l"]; e.Size = 4; t["l"] = e }, "l: size want 3 got 4"},
		{"mtime", func(t Tree) { e := t["d/f"]; e.Mtime.Nsec = 7; t["d/f"] = e }, "d/f: mtime want 3.000000000 got 3.000000007"},
		{"sha256", func(t Tree) { e := t["d/f"]; e.SHA256 = sum("abd"); t["d/f"] = e }, "d/f: sha256 want " + sum("abc") + " got " + sum("abd")},
		{"link", func(t Tree) { e := t["l"]; e.Link = "d/g"; t["l"] = e }, `l: link want "d/f" got "d/g"`},
		{"rdev", func(t Tree) { e := t["c"]; e.DevMinor = 5; t["c"] = e }, "c: rdev want 1:3 got 1:5"},
		{"nlink", func(t Tree) { e := t["d/f"]; e.Nlink = 2; t["d/f"] = e }, "d/f: nlink want 1 got 2"},
		{"hardlink", func(t Tree) { e := t["l"]; e.HardlinkID = "c"; t["l"] = e }, "l: hardlink want l got c"},
		{"xattr value", func(t Tree) { t["d/f"].Xattrs["user.a"] = "2" }, `d/f: xattr user.a want "1" got "2"`},
		{"xattr missing", func(t Tree) { delete(t["d/f"].Xattrs, "user.a") }, `d/f: xattr user.a want "1" got none`},
		{"xattr extra", func(t Tree) { t["d/f"].Xattrs["user.b"] = "x" }, `d/f: xattr user.b want none got "x"`},
		{"missing", func(t Tree) { delete(t, "l") }, "l: missing (want symlink)"},
		{"unexpected", func(t Tree) { t["new\nline"] = Entry{Type: TypeFIFO} }, `"new\nline": unexpected (got fifo)`},
	}
	for _, c := range cases {
		got := clone(sampleTree())
		c.change(got)
		d := Diff(sampleTree(), got)
		if len(d) != 1 || d[0] != c.want {
			t.Errorf("%s: diff %q, want [%q]", c.name, d, c.want)
		}
	}
}

func TestDiffOptions(t *testing.T) {
	got := clone(sampleTree())
	root := got["."]
	root.Mode, root.UID = 0o700, 1000
	got["."] = root
	d := got["d"]
	d.Mtime = ts(99)
	got["d"] = d
	f := got["d/f"]
	f.Mtime = ts(99)
	got["d/f"] = f

	if n := len(Diff(sampleTree(), got)); n != 4 {
		t.Errorf("default: %d lines, want 4", n)
	}
	want := []string{"d/f: mtime want 3.000000000 got 99.000000000"}
	if d := Diff(sampleTree(), got, IgnoreRootAttrs(), IgnoreDirMtimes()); strings.Join(d, "\n") != strings.Join(want, "\n") {
		t.Errorf("relaxed: %q, want %q (a file's mtime still counts)", d, want)
	}
	delete(got, ".")
	if d := Diff(sampleTree(), got, IgnoreRootAttrs()); len(d) == 0 || !strings.Contains(d[0], ".: missing") {
		t.Errorf("a missing root must still show: %q", d)
	}
}

// TestDiffRealChanges walks an unpacked layer and a copy of it, changes the
// copy with ordinary tools, and expects each change to be reported.
func TestDiffRealChanges(t *testing.T) {
	requireIntegration(t)
	dirs := unpackAll(t, threeLayers(t)[:1])
	orig := dirs[0]
	cp := filepath.Join(t.TempDir(), "copy")
	if b, err := exec.Command("cp", "-a", orig, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, b)
	}
	want, err := Walk(orig)
	if err != nil {
		t.Fatal(err)
	}
	same, err := Walk(cp)
	if err != nil {
		t.Fatal(err)
	}
	if d := Diff(want, same); len(d) != 0 {
		t.Fatalf("cp -a copy differs:\n%s", strings.Join(d, "\n"))
	}
	if d := Diff(want, want); len(d) != 0 {
		t.Fatalf("a tree differs from itself: %q", d)
	}

	at := func(p string) string { return filepath.Join(cp, p) }
	run := func(name string, args ...string) {
		t.Helper()
		if b, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, b)
		}
	}
	run("chmod", "0755", at("bin/su"))
	run("chown", "1:2", at("etc/passwd"))
	run("touch", "-h", "-d", "@12345", at("sym"))
	run("setfattr", "-n", "user.x", "-v", "2", at("cap"))
	run("setfattr", "-n", "user.extra", "-v", "e", at("tmp"))
	run("ln", "-sfn", "elsewhere", at("sym2"))
	run("rm", at("keep/x"))
	run("cp", at("hl/b"), at("hl/b.tmp"))
	run("mv", at("hl/b.tmp"), at("hl/b"))
	run("rm", at("dev/null"))
	run("mknod", "-m", "0666", at("dev/null"), "c", "1", "5")
	run("rm", at("fifo1"))
	run("touch", at("fifo1"))
	if err := os.WriteFile(at("opq/a"), []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("x", at("opq/d/new")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Chmod(cp, 0o700); err != nil {
		t.Fatal(err)
	}

	got, err := Walk(cp)
	if err != nil {
		t.Fatal(err)
	}
	d := Diff(want, got)
	report := strings.Join(d, "\n")
	for _, w := range []string{
		"bin/su: mode want 4755 got 0755",
		"etc/passwd: uid want 0 got 1",
		"etc/passwd: gid want 0 got 2",
		"sym: mtime want 4000.000000000 got 12345.000000000",
		`cap: xattr user.x want "1" got "2"`,
		`tmp: xattr user.extra want none got "e"`,
		"sym2: unexpected (got symlink)",
		"opq/d/new: unexpected (got symlink)",
		"keep/x: missing (want reg)",
		"hl/a: nlink want 2 got 1",
		"hl/b: hardlink want hl/a got hl/b",
		"dev/null: rdev want 1:3 got 1:5",
		"fifo1: type want fifo got reg",
		"opq/a: sha256 want " + sum("a") + " got " + sum("b"),
		".: mode want 0755 got 0700",
	} {
		if !strings.Contains(report, w) {
			t.Errorf("diff lacks %q", w)
		}
	}
	if t.Failed() {
		t.Logf("diff:\n%s", report)
	}
	for _, line := range Diff(want, got, IgnoreRootAttrs(), IgnoreDirMtimes()) {
		if strings.HasPrefix(line, ".: ") || strings.Contains(line, ": mtime") && want[strings.SplitN(line, ":", 2)[0]].Type == TypeDir {
			t.Errorf("relaxed diff still has %q", line)
		}
	}
}
