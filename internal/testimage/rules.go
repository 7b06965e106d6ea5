package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"
	"time"
)

// RuleCase is a small image built to exercise one rule of docs/semantics.md.
type RuleCase struct {
	Name string
	// Rule is the docs/semantics.md rule exercised: "1" to "10", "attributes",
	// or "refused".
	Rule string
	// Layers are in manifest order, lowest first.
	Layers []Layer
	// TarCannotExtract is set when GNU tar fails to extract some layer of
	// the case on its own into an empty directory, which is how an overlay
	// oracle builds its lower directories. A hardlink whose target comes
	// later in the tar, or lies in a lower layer, does that.
	TarCannotExtract bool
	// BadLayer and BadEntry, set in RefusedCases only, are the index of the
	// layer and the tar name of the entry an import error must name.
	BadLayer int
	BadEntry string
}

func layers(entries ...[]Entry) []Layer {
	ls := make([]Layer, len(entries))
	for i, es := range entries {
		ls[i] = Layer{Entries: es}
	}
	return ls
}

// order returns es as written, or reversed, for rules that must hold
// whatever the order of entries in the tar.
func order(reversed bool, es ...Entry) []Entry {
	if reversed {
		for i, j := 0, len(es)-1; i < j; i, j = i+1, j-1 {
			es[i], es[j] = es[j], es[i]
		}
	}
	return es
}

var orders = []struct {
	name     string
	reversed bool
}{{"before", false}, {"after", true}}

// RuleCases returns one case per rule of docs/semantics.md's merged view and per
// attribute a view must show. Every call builds fresh values.
func RuleCases() []RuleCase {
	t1 := time.Date(2020, time.May, 6, 7, 8, 9, 0, time.UTC)
	t2 := time.Date(2022, time.October, 11, 12, 13, 14, 0, time.UTC)
	cases := []RuleCase{
		{Name: "override-file", Rule: "1", Layers: layers(
			[]Entry{File("a", "lower\n"), File("keep", "kept\n")},
			[]Entry{File("a", "upper\n").WithMode(0o600)},
		)},
		{Name: "whiteout-file", Rule: "2", Layers: layers(
			[]Entry{Dir("etc", 0o755), File("etc/a", "a\n"), File("etc/b", "b\n")},
			[]Entry{Whiteout("etc", "a")},
		)},
		{Name: "whiteout-dir", Rule: "2", Layers: layers(
			[]Entry{Dir("d", 0o755), File("d/x", "x\n"), Dir("d/sub", 0o700), File("d/sub/y", "y\n"), File("other", "o\n")},
			[]Entry{Whiteout("", "d")},
		)},
		{Name: "whiteout-skips-a-layer", Rule: "1", Layers: layers(
			[]Entry{File("a", "bottom\n"), File("b", "b\n")},
			[]Entry{File("c", "c\n")},
			[]Entry{Whiteout("", "a")},
		)},
		{Name: "whiteout-then-readd", Rule: "1", Layers: layers(
			[]Entry{File("a", "first\n")},
			[]Entry{Whiteout("", "a")},
			[]Entry{File("a", "third\n")},
		)},
		{Name: "whiteout-of-nothing", Rule: "2", Layers: layers(
			[]Entry{File("a", "a\n")},
			[]Entry{Whiteout("", "missing"), Whiteout("nodir", "missing")},
		)},
	}
	for _, o := range orders {
		cases = append(cases,
			RuleCase{Name: "whiteout-own-layer-" + o.name, Rule: "2", Layers: layers(
				[]Entry{File("a", "lower\n")},
				order(o.reversed, Whiteout("", "a"), File("a", "same layer\n")),
			)},
			RuleCase{Name: "opaque-" + o.name, Rule: "3", Layers: layers(
				[]Entry{Dir("d", 0o755), File("d/x", "x\n"), Dir("d/sub", 0o755), File("d/sub/y", "y\n")},
				append([]Entry{Dir("d", 0o750)}, order(o.reversed, Opaque("d"), File("d/z", "z\n"), Dir("d/sub", 0o711), File("d/sub/w", "w\n"))...),
			)},
			RuleCase{Name: "whiteout-dir-with-entries-" + o.name, Rule: "4", Layers: layers(
				[]Entry{Dir("d", 0o755), File("d/x", "x\n"), Dir("d/sub", 0o755), File("d/sub/y", "y\n")},
				order(o.reversed, Whiteout("", "d"), Dir("d", 0o700), File("d/new", "new\n"), Dir("d/sub", 0o711), File("d/sub/z", "z\n")),
			)},
		)
	}
	cases = append(cases,
		RuleCase{Name: "dir-over-dir", Rule: "5", Layers: layers(
			[]Entry{Dir("d", 0o755).WithModTime(t1).WithXattr("user.lower", "1").WithXattr("user.both", "lower"), File("d/x", "x\n")},
			[]Entry{Dir("d", 0o750).WithOwner(1000, 1001).WithModTime(t2).WithXattr("user.upper", "2").WithXattr("user.both", "upper"), File("d/y", "y\n")},
		)},
		RuleCase{Name: "implied-over-dir", Rule: "6", Layers: layers(
			[]Entry{Dir("usr", 0o750).WithOwner(5, 6).WithModTime(t1).WithXattr("user.from", "lower"), File("usr/old", "old\n")},
			[]Entry{File("usr/bin/tool", "tool\n")},
		)},
		RuleCase{Name: "implied-nearest-lower-dir", Rule: "6", Layers: layers(
			[]Entry{Dir("usr", 0o711).WithModTime(t1)},
			[]Entry{Dir("usr", 0o750).WithOwner(7, 8).WithModTime(t2)},
			[]Entry{File("usr/x", "x\n")},
		)},
		RuleCase{Name: "implied-over-file", Rule: "6", Layers: layers(
			[]Entry{File("usr", "a file\n").WithMode(0o600).WithOwner(3, 4)},
			[]Entry{File("usr/bin/tool", "tool\n")},
		)},
		RuleCase{Name: "implied-over-file-over-dir", Rule: "6", Layers: layers(
			[]Entry{Dir("usr", 0o711).WithModTime(t1)},
			[]Entry{File("usr", "a file\n")},
			[]Entry{File("usr/x", "x\n")},
		)},
		RuleCase{Name: "implied-nothing-below", Rule: "6", Layers: layers(
			[]Entry{File("a/b/c/file", "deep\n")},
		)},
		RuleCase{Name: "file-over-dir", Rule: "7", Layers: layers(
			[]Entry{Dir("d", 0o755), File("d/x", "x\n"), Dir("d/sub", 0o755), File("d/sub/y", "y\n")},
			[]Entry{File("d", "now a file\n")},
		)},
		RuleCase{Name: "symlink-over-dir", Rule: "7", Layers: layers(
			[]Entry{Dir("d", 0o755), File("d/x", "x\n"), Dir("elsewhere", 0o755), File("elsewhere/e", "e\n")},
			[]Entry{Symlink("d", "elsewhere")},
		)},
		RuleCase{Name: "dir-over-file", Rule: "7", Layers: layers(
			[]Entry{File("d", "a file\n")},
			[]Entry{Dir("d", 0o700), File("d/z", "z\n")},
		)},
		RuleCase{Name: "dir-over-symlink", Rule: "7", Layers: layers(
			[]Entry{Dir("usr", 0o755), Dir("usr/lib", 0o755), File("usr/lib/libc.so", "libc\n"), Symlink("lib", "usr/lib")},
			[]Entry{Dir("lib", 0o755), File("lib/x", "x\n")},
		)},
		RuleCase{Name: "implied-dir-over-symlink", Rule: "7", Layers: layers(
			[]Entry{Dir("usr", 0o755), Dir("usr/lib", 0o755), File("usr/lib/libc.so", "libc\n"), Symlink("lib", "usr/lib")},
			[]Entry{File("lib/x", "x\n")},
		)},
		RuleCase{Name: "same-path-twice", Rule: "8", Layers: layers(
			[]Entry{
				File("a", "first\n"), File("a", "second\n").WithMode(0o600),
				Dir("d", 0o700), Dir("d", 0o755).WithOwner(9, 9),
				File("l", "file\n"), Symlink("l", "a"),
			},
		)},
		RuleCase{Name: "same-path-twice-over-lower", Rule: "8", Layers: layers(
			[]Entry{File("a", "lower\n")},
			[]Entry{File("a", "first\n"), File("a", "second\n")},
		)},
		RuleCase{Name: "leading-slash-and-dot", Rule: "9", Layers: layers(
			[]Entry{Dir("/abs", 0o755), File("/abs/file", "abs\n"), Dir("./dot", 0o755), File("./dot/file", "dot\n")},
			[]Entry{File("abs/file", "plain over slash\n"), File("/dot/file", "slash over dot\n")},
		)},
		RuleCase{Name: "root-dot-slash", Rule: "9", Layers: layers(
			[]Entry{Dir("./", 0o750).WithOwner(1, 2).WithModTime(t1).WithXattr("user.root", "yes"), File("f", "f\n")},
		)},
		RuleCase{Name: "root-dot", Rule: "9", Layers: layers(
			[]Entry{File("f", "f\n")},
			[]Entry{{Name: ".", Type: tar.TypeDir, Mode: 0o700, UID: 3, GID: 4, ModTime: t2}},
		)},
		RuleCase{Name: "hardlink-target-first", Rule: "10", Layers: layers(
			[]Entry{
				File("a", "shared bytes\n").WithMode(0o640).WithOwner(10, 20),
				Hardlink("b", "a"), Dir("sub", 0o755), Hardlink("sub/c", "a"), Hardlink("d", "b"),
			},
		)},
		RuleCase{Name: "hardlink-target-later", Rule: "10", TarCannotExtract: true, Layers: layers(
			[]Entry{Hardlink("b", "a"), File("a", "shared bytes\n").WithMode(0o640)},
		)},
		RuleCase{Name: "hardlink-dot-slash", Rule: "10", Layers: layers(
			[]Entry{File("./a", "shared bytes\n"), Hardlink("./b", "./a"), Hardlink("c", "/a")},
		)},
		RuleCase{Name: "hardlink-to-lower", Rule: "10", TarCannotExtract: true, Layers: layers(
			[]Entry{File("a", "lower bytes\n").WithMode(0o4750).WithOwner(11, 12).WithXattr("user.k", "v")},
			[]Entry{Hardlink("b", "a")},
		)},
		RuleCase{Name: "special-mode-bits", Rule: "attributes", Layers: layers(
			[]Entry{
				File("setuid", "#!/bin/sh\n").WithMode(0o4755),
				File("setgid", "#!/bin/sh\n").WithMode(0o2755),
				File("both", "#!/bin/sh\n").WithMode(0o6711),
				Dir("tmp", 0o1777),
				Dir("shared", 0o2775).WithOwner(0, 50),
				File("none", "").WithMode(0),
			},
		)},
		RuleCase{Name: "owners", Rule: "attributes", Layers: layers(
			[]Entry{
				File("user", "u\n").WithOwner(1000, 1000),
				File("split", "s\n").WithOwner(1, 65534),
				File("big-ids", "b\n").WithOwner(1<<20+1, 1<<21+3),
				// A view shows numeric ids; names must not be looked up.
				{Name: "named", Type: tar.TypeReg, Mode: 0o644, UID: 4321, GID: 8765, Uname: "root", Gname: "root", Body: []byte("n\n")},
				Dir("home", 0o755), Dir("home/user", 0o700).WithOwner(1000, 1000),
				Symlink("home/user/link", "../user").WithOwner(1000, 1000),
			},
		)},
		RuleCase{Name: "symlink-modes", Rule: "attributes", Layers: layers(
			[]Entry{
				File("t", "t\n"),
				Symlink("none", "t").WithMode(0),
				Symlink("private", "t").WithMode(0o700),
				Symlink("setuid", "t").WithMode(0o4755),
			},
		)},
		RuleCase{Name: "mtime-nanoseconds", Rule: "attributes", Layers: layers(
			[]Entry{
				Dir("d", 0o755).WithModTime(time.Date(2021, time.March, 4, 5, 6, 7, 123456789, time.UTC)),
				File("d/f", "f\n").WithModTime(time.Date(2019, time.December, 31, 23, 59, 59, 999999999, time.UTC)),
				File("d/one", "1\n").WithModTime(time.Date(2023, time.July, 1, 0, 0, 0, 1, time.UTC)),
				Symlink("d/l", "f").WithModTime(time.Date(2018, time.February, 3, 4, 5, 6, 500000000, time.UTC)),
				File("epoch", "e\n").WithModTime(time.Unix(0, 0)),
				// Times a signed 32-bit field cannot hold. Before
				// 1970 in whole seconds: GNU tar 1.34 lists a negative
				// time with nanoseconds wrong (it extracts it right).
				File("before-epoch", "b\n").WithModTime(time.Unix(-1, 0)),
				File("before-1970", "o\n").WithModTime(time.Date(1960, time.January, 1, 0, 0, 0, 0, time.UTC)),
				File("after-2038", "a\n").WithModTime(time.Date(2100, time.June, 1, 12, 0, 0, 500000000, time.UTC)),
			},
		)},
		RuleCase{Name: "special-files", Rule: "attributes", Layers: layers(
			[]Entry{
				Dir("dev", 0o755),
				Fifo("dev/fifo").WithMode(0o600),
				CharDev("dev/null", 1, 3),
				CharDev("dev/tty-big", 136, 300),
				BlockDev("dev/sda", 8, 0),
				BlockDev("dev/loop", 7, 1<<12+5),
				// The largest numbers Linux's dev_t holds, 12 and 20 bits.
				CharDev("dev/max", 1<<12-1, 1<<20-1),
			},
		)},
		RuleCase{Name: "xattrs", Rule: "attributes", Layers: layers(
			[]Entry{
				File("plain", "p\n").WithXattr("user.comment", "a comment").WithXattr("user.empty", ""),
				File("binary", "b\n").WithXattr("user.bytes", "\x00\x01\xfe\xff"),
				File("ping", "ping\n").WithMode(0o755).WithXattr("security.capability", FileCapability(13, 10)),
				Dir("dir", 0o755).WithXattr("user.dir", "on a directory"),
			},
		)},
		// Overlayfs's own xattrs, as an image may carry them: every view
		// shows them as the image has them and none of them acts. Beneath
		// each one lies what overlayfs would hide or redirect to if it
		// obeyed it.
		RuleCase{Name: "overlay-private-xattrs", Rule: "attributes", Layers: layers(
			[]Entry{
				Dir("a", 0o755), File("a/secret", "lower a/secret\n"),
				Dir("d", 0o755), File("d/old", "old\n"),
				Dir("w", 0o755), File("w/y", "lower y\n"),
				Dir("u", 0o755), File("u/old", "old\n"),
				File("m", "lower m\n"),
			},
			[]Entry{
				Dir("r", 0o755).WithXattr("trusted.overlay.redirect", "/a"),
				Dir("d", 0o755).WithXattr("trusted.overlay.opaque", "y"), File("d/new", "new\n"),
				Dir("w", 0o755).WithXattr("trusted.overlay.opaque", "x"), File("w/y", "").WithXattr("trusted.overlay.whiteout", ""),
				File("m", "upper m\n").WithXattr("trusted.overlay.metacopy", ""),
				Dir("u", 0o755).WithXattr("user.overlay.opaque", "y"), File("u/new", "new\n"),
				File("escaped", "e\n").WithXattr("trusted.overlay.overlay.opaque", "y").WithXattr("user.overlay.redirect", "/a"),
			},
		)},
		// overlayfs never reads a layer root's opaque mark.
		RuleCase{Name: "opaque-at-layer-root", Rule: "3", Layers: layers(
			[]Entry{File("a", "a\n"), Dir("d", 0o755), File("d/x", "x\n")},
			[]Entry{Opaque(""), File("b", "b\n")},
		)},
		RuleCase{Name: "long-names", Rule: "attributes", Layers: layers(
			[]Entry{
				Symlink("long-link", strings.Repeat("long-target-component/", 60)+"end"),
				File(strings.Repeat("n", 255), "name of 255 bytes\n"),
				File(strings.Repeat("deep/", 40)+"file", "path over 100 bytes\n"),
			},
		)},
		RuleCase{Name: "sizes", Rule: "attributes", Layers: layers(
			[]Entry{
				File("empty", ""),
				{Name: "large", Type: tar.TypeReg, Mode: 0o644, Body: pattern(1<<20 + 4097)},
			},
		)},
		// A link holds the inode its target had when the link was
		// written: a later entry of the same name is a new file, as
		// GNU tar and the runtimes' appliers, extracting in order, make it.
		RuleCase{Name: "hardlink-then-target-rewritten", Rule: "10", Layers: layers(
			[]Entry{
				File("a", "first bytes\n").WithMode(0o640).WithOwner(10, 20),
				Hardlink("b", "a"),
				File("a", "second, longer bytes\n").WithMode(0o600),
				Hardlink("c", "a"),
			},
		)},
		// A hardlink names the tar member whatever its type: GNU tar and
		// ln link a symlink itself, a device or a FIFO.
		RuleCase{Name: "hardlink-to-special-files", Rule: "10", Layers: layers(
			[]Entry{
				File("f", "f\n"),
				Symlink("s", "f").WithOwner(5, 6), Hardlink("hs", "s"),
				CharDev("c", 1, 3), Hardlink("hc", "c"),
				BlockDev("b", 8, 1), Hardlink("hb", "b"),
				Fifo("p").WithMode(0o600), Hardlink("hp", "p"),
			},
		)},
		// Linux names are bytes: layers made on a system of another
		// locale hold names, link targets and xattr values that are
		// not UTF-8.
		RuleCase{Name: "names-not-utf8", Rule: "attributes", Layers: layers(
			[]Entry{
				Dir("caf\xe9", 0o755),
				File("caf\xe9/\xff\xfe", "latin-1 and no encoding\n").WithXattr("user.v", "\xff\xfe\xe9"),
				Hardlink("caf\xe9/h\xe9", "caf\xe9/\xff\xfe"),
				Symlink("to-\xe9", "caf\xe9/\xff\xfe"),
			},
		)},
	)
	return cases
}

// manyXattrs gives e n xattrs of 250-byte names: their list is more than
// the 64 KiB listxattr can return.
func manyXattrs(e Entry, n int) Entry {
	for i := range n {
		e = e.WithXattr(fmt.Sprintf("user.%03d%s", i, strings.Repeat("x", 242)), "")
	}
	return e
}

// pattern returns n bytes that do not repeat with a short period, so a view
// that serves bytes from the wrong offset is caught.
func pattern(n int) []byte {
	var b bytes.Buffer
	b.Grow(n)
	for i := 0; b.Len() < n; i++ {
		b.WriteString(strings.Repeat(string(rune('a'+i%26)), i%7+1))
		b.WriteByte(byte(i))
	}
	return b.Bytes()[:n]
}

// RefusedCases returns images that docs/semantics.md says an import must refuse
// with an error naming BadLayer and BadEntry.
func RefusedCases() []RuleCase {
	long := strings.Repeat("c", 200) + "/"
	refused := func(name string, bad int, entry string, ls ...[]Entry) RuleCase {
		return RuleCase{Name: name, Rule: "refused", Layers: layers(ls...), BadLayer: bad, BadEntry: entry}
	}
	return []RuleCase{
		refused("dotdot-at-start", 0, "../escape", []Entry{File("ok", "ok\n"), File("../escape", "out\n")}),
		refused("dotdot-inside", 1, "a/../../escape",
			[]Entry{File("ok", "ok\n")},
			[]Entry{Dir("a", 0o755), File("a/../../escape", "out\n")}),
		refused("dotdot-hardlink-target", 0, "h", []Entry{File("ok", "ok\n"), Hardlink("h", "../outside")}),
		refused("component-too-long", 0, "d/"+strings.Repeat("x", 256), []Entry{Dir("d", 0o755), File("d/"+strings.Repeat("x", 256), "long\n")}),
		refused("path-too-long", 0, strings.Repeat(long, 21)+"f", []Entry{File(strings.Repeat(long, 21)+"f", "deep\n")}),
		refused("whiteout-empty-name", 1, "d/.wh.",
			[]Entry{Dir("d", 0o755), File("d/x", "x\n")},
			[]Entry{File("d/.wh.", "")}),
		refused("whiteout-dot", 1, "d/.wh..",
			[]Entry{Dir("d", 0o755), File("d/x", "x\n")},
			[]Entry{File("d/.wh..", "")}),
		refused("whiteout-dotdot", 1, "d/.wh...",
			[]Entry{Dir("d", 0o755), File("d/x", "x\n")},
			[]Entry{File("d/.wh...", "")}),
		refused("root-is-file", 0, ".", []Entry{File(".", "not a directory\n")}),
		refused("root-is-symlink", 1, "./",
			[]Entry{File("f", "f\n")},
			[]Entry{Symlink("./", "/tmp")}),
		refused("hardlink-to-nothing", 1, "b",
			[]Entry{File("a", "a\n")},
			[]Entry{Hardlink("b", "missing")}),
		// What overlayfs would take for its own whiteout, and what Linux
		// cannot hold.
		refused("overlay-whiteout-device", 0, "w", []Entry{File("ok", "ok\n"), CharDev("w", 0, 0)}),
		refused("symlink-target-too-long", 0, "l", []Entry{Symlink("l", strings.Repeat("t/", 2048))}),
		refused("xattr-name-too-long", 0, "f", []Entry{File("f", "f\n").WithXattr("user."+strings.Repeat("n", 251), "v")}),
		refused("xattr-value-too-large", 0, "f", []Entry{File("f", "f\n").WithXattr("user.big", strings.Repeat("v", 64<<10+1))}),
		refused("xattr-list-too-large", 0, "f", []Entry{manyXattrs(File("f", "f\n"), 300)}),
	}
}
