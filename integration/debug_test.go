package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// debugImage is one image imported into a shared store, with its name,
// whether GNU tar can unpack its layers, and its layer digests.
type debugImage struct {
	name          string
	img           layoutImage
	tarCanExtract bool
}

// debugStore imports the sample image, every rule case and, unless
// short, the Debian image into one new store.
func debugStore(t *testing.T, withDebian bool) (string, []debugImage) {
	t.Helper()
	requireRoot(t)
	root := t.TempDir()
	imgs := []debugImage{{name: "sample", img: sampleImage(t), tarCanExtract: true}}
	for _, c := range testimage.RuleCases() {
		imgs = append(imgs, debugImage{name: c.Name, img: ruleImage(t, c), tarCanExtract: !c.TarCannotExtract})
	}
	if withDebian {
		imgs = append(imgs, debugImage{name: "debian", img: debianLayoutImage(t), tarCanExtract: true})
	}
	for _, d := range imgs {
		importInto(t, root, d.img)
	}
	return root, imgs
}

// stack names the lowest n layers of img as one TARGET argument.
func stack(img layoutImage, n int) string {
	var ds []string
	for _, d := range img.layers[:n] {
		ds = append(ds, d.String())
	}
	return strings.Join(ds, ",")
}

// gnuLs is GNU ls -lnRA of dir, run from inside it, with its times in
// the form layerfs ls -l writes and its "total" lines left out.
func gnuLs(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command(testimage.RequireTool(t, "ls"), "-lnRA", "--time-style=+%Y-%m-%d %H:%M", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ls -lnRA %s: %v", dir, err)
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(string(out), "\n") {
		if !strings.HasPrefix(line, "total ") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// firstDifference shows where two listings part.
func firstDifference(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d: want %q, got %q", i+1, wl, gl)
		}
	}
	return "none"
}

// TestLsMatchesGNULs compares layerfs ls -l -R, read from the index,
// with GNU ls of the mounted view.
func TestLsMatchesGNULs(t *testing.T) {
	root, imgs := debugStore(t, !testing.Short())
	for _, d := range imgs {
		t.Run(d.name, func(t *testing.T) {
			want := gnuLs(t, mountDaemon(t, root, d.img.ref))
			got := mustRun(t, root, "ls", "-l", "-R", d.img.ref)
			if got != want {
				t.Errorf("layerfs ls -l -R differs from GNU ls -lnRA of the mount; first difference %s", firstDifference(want, got))
			}
		})
	}
	d := imgs[0]
	mnt := mountDaemon(t, root, d.img.ref)
	// lib is a symlink to usr/lib, usr/bin/ls one to a file: GNU ls
	// follows the first only when asked with a slash or without -l.
	// "." and ".." after a file, and a slash after one, are ENOTDIR;
	// lib/.. is usr, where the link leads, not the root. -d lists each
	// directory itself, following a symlink only before a slash.
	for _, p := range []string{"/", "etc", "/usr/bin/", "usr/bin/passwd", "lib", "lib/", "/lib/", "lib/libc.so.6", "/usr/bin/ls", "usr/bin/sh/",
		"etc/hostname/", "etc/hostname/.", "etc/hostname/..", "lib/..", "/lib/../bin", "usr/bin/ls/", "usr/bin/ls/."} {
		for _, long := range []bool{true, false} {
			for _, dir := range []bool{false, true} {
				args := []string{"ls"}
				gnuArgs := []string{"-A"}
				if long {
					args = append(args, "-l")
					gnuArgs = []string{"-lnA", "--time-style=+%Y-%m-%d %H:%M"}
				}
				if dir {
					args = append(args, "-d")
					gnuArgs = append(gnuArgs, "-d")
				}
				cmd := exec.Command("ls", append(gnuArgs, p)...)
				cmd.Dir = mnt
				if p[0] == '/' {
					cmd.Args[len(cmd.Args)-1] = "." + p
				}
				cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
				out, gnuErr := cmd.Output()
				want := regexp.MustCompile(`(?m)^total .*\n`).ReplaceAllString(string(out), "")
				// GNU ls ran on "./PATH": give each name the "/" it had,
				// leaving "../" within a path as it is.
				want = regexp.MustCompile(`(?m)(^| )\./`).ReplaceAllString(want, "${1}/")
				r := run(t, root, append(args, d.img.ref, p)...)
				switch {
				case gnuErr != nil && r.code == 0:
					t.Errorf("layerfs %s sample %s succeeded, GNU ls failed (%v):\n%s", strings.Join(args, " "), p, gnuErr, r.stdout)
				case gnuErr == nil && (r.code != 0 || r.stdout != want):
					t.Errorf("layerfs %s sample %s: exit %d\n%s%s\nGNU ls:\n%s", strings.Join(args, " "), p, r.code, r.stdout, r.stderr, want)
				}
			}
		}
	}
}

// diffChange is one line of layerfs diff, as --format json prints it.
type diffChange struct {
	Kind    string   `json:"kind"`
	Path    string   `json:"path"`
	Changed []string `json:"changed"`
	Layer   string   `json:"layer"`
}

// mountDiff is the reference for layerfs diff: two mounts compared entry
// by entry, in the attributes layerfs diff compares, sorted by path.
func mountDiff(a, b oracle.Tree) []diffChange {
	var out []diffChange
	for p, ea := range a {
		eb, ok := b[p]
		if !ok {
			out = append(out, diffChange{Kind: "D", Path: p})
			continue
		}
		var changed []string
		for _, f := range []struct {
			name    string
			differs bool
		}{
			{"type", ea.Type != eb.Type},
			{"mode", ea.Mode != eb.Mode},
			{"owner", ea.UID != eb.UID || ea.GID != eb.GID},
			{"size", ea.Size != eb.Size},
			{"mtime", ea.Mtime != eb.Mtime},
			{"content", ea.SHA256 != eb.SHA256},
			{"link", ea.Link != eb.Link},
			{"device", ea.DevMajor != eb.DevMajor || ea.DevMinor != eb.DevMinor},
			{"xattrs", fmt.Sprint(ea.Xattrs) != fmt.Sprint(eb.Xattrs)},
			{"nlink", ea.Nlink != eb.Nlink && ea.Type != oracle.TypeDir && eb.Type != oracle.TypeDir},
		} {
			if f.differs {
				changed = append(changed, f.name)
			}
		}
		if changed != nil {
			out = append(out, diffChange{Kind: "M", Path: p, Changed: changed})
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			out = append(out, diffChange{Kind: "A", Path: p})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// diffText is changes as layerfs diff prints them by default, a path
// Go-quoted as the README has it: when it holds a control character, a
// backslash or bytes that are not UTF-8, or starts with a double quote.
func diffText(changes []diffChange) string {
	var b strings.Builder
	for _, c := range changes {
		p := c.Path
		if !utf8.ValidString(p) || strings.HasPrefix(p, `"`) || strings.ContainsFunc(p, func(r rune) bool { return r == '\\' || !unicode.IsPrint(r) }) {
			p = strconv.Quote(p)
		}
		fmt.Fprintf(&b, "%s %s\n", c.Kind, p)
	}
	return b.String()
}

// TestDiffMatchesMounts compares layerfs diff with two mounts compared
// entry by entry: each image against its lowest layer, against the stack
// without its top layer, and against the next rule case's image.
func TestDiffMatchesMounts(t *testing.T) {
	root, imgs := debugStore(t, !testing.Short())
	trees := map[string]oracle.Tree{}
	tree := func(target string) oracle.Tree {
		if tr, ok := trees[target]; ok {
			return tr
		}
		tr := walkMount(t, root, strings.Split(target, ",")...)
		trees[target] = tr
		return tr
	}
	check := func(a, b string) {
		t.Helper()
		want := mountDiff(tree(a), tree(b))
		if got := mustRun(t, root, "diff", a, b); got != diffText(want) {
			t.Errorf("layerfs diff %s %s:\n%s\nmounts compared:\n%s", a, b, got, diffText(want))
		}
		var got []diffChange
		if err := json.Unmarshal([]byte(mustRun(t, root, "diff", "--format", "json", a, b)), &got); err != nil {
			t.Fatalf("layerfs diff --format json %s %s: %v", a, b, err)
		}
		// The layer each change names holds the path, as its own mount
		// shows it, with the type the view shows.
		for i, c := range got {
			view := b
			if c.Kind == "D" {
				view = a
			}
			if strings.ContainsRune(c.Path, utf8.RuneError) {
				// JSON has no bytes that are not UTF-8 (README).
				got[i].Layer = ""
				continue
			}
			if e, ok := tree(c.Layer)[c.Path]; !ok || e.Type != tree(view)[c.Path].Type {
				t.Errorf("layerfs diff %s %s: %s %s: layer %s has %+v (present: %v), the view shows %+v", a, b, c.Kind, c.Path, c.Layer, e, ok, tree(view)[c.Path])
			}
			got[i].Layer = ""
		}
		for i, c := range want {
			// Each byte that is not UTF-8 becomes U+FFFD, as in JSON.
			want[i].Path = string([]rune(c.Path))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("layerfs diff --format json %s %s:\n%v\nmounts compared:\n%v", a, b, got, want)
		}
	}
	for i, d := range imgs {
		n := len(d.img.layers)
		check(stack(d.img, 1), d.img.ref)
		check(d.img.ref, stack(d.img, 1))
		if n > 2 {
			check(stack(d.img, n-1), d.img.ref)
		}
		if i+1 < len(imgs) {
			check(d.img.ref, imgs[i+1].img.ref)
		}
	}
	if got := mustRun(t, root, "diff", "sample", "sample"); got != "" {
		t.Errorf("an image against itself: %q", got)
	}
	if got := mustRun(t, root, "diff", "--format", "json", "sample", "sample"); got != "[]\n" {
		t.Errorf("an image against itself, as JSON: %q", got)
	}
}

// diffCaseImages are images whose layers GNU tar unpacks, each change
// diff must name once: a from base to b changes one attribute of each
// path, or its type, and b to other shares no layer. Every layer has
// every directory it holds an entry of its own, so each unpacks alone to
// the layer as built.
func diffCaseImages(t *testing.T) (a, b, other layoutImage) {
	t.Helper()
	when := time.Date(2021, time.March, 4, 5, 6, 7, 8, time.UTC)
	base := []testimage.Entry{
		testimage.Dir(".", 0o755), testimage.File("mode", "m\n"), testimage.File("owner", "o\n"), testimage.File("mtime", "t\n"),
		testimage.File("xattr", "x\n"), testimage.File("same-size", "aaaa"),
		testimage.File("file-to-dir", "f\n"), testimage.Dir("dir-to-file", 0o755), testimage.File("dir-to-file/c", "c\n"),
		testimage.Symlink("link", "one"), testimage.File("linked", "l\n"), testimage.Hardlink("unlinked", "linked"),
		testimage.File("lone", "n\n"), testimage.File("joined", "n\n"),
		testimage.Dir("opaque", 0o755), testimage.File("opaque/x", "x\n"), testimage.File("opaque/kept", "k\n"),
		testimage.Dir("gone", 0o755), testimage.Dir("gone/a", 0o755), testimage.File("gone/a/f", "f\n"),
		testimage.File("readded", "r\n"), testimage.CharDev("null", 1, 3), testimage.Fifo("fifo"),
		testimage.Dir("regrown", 0o700), testimage.Dir("regrown/a", 0o700), testimage.File("regrown/a/f", "f\n"),
	}
	changes := []testimage.Entry{
		testimage.Dir(".", 0o755), testimage.File("mode", "m\n").WithMode(0o755), testimage.File("owner", "o\n").WithOwner(1, 2),
		testimage.File("mtime", "t\n").WithModTime(when), testimage.File("xattr", "x\n").WithXattr("user.k", "v"),
		testimage.File("same-size", "bbbb"), testimage.Dir("file-to-dir", 0o755), testimage.File("file-to-dir/n", "n\n"),
		testimage.File("dir-to-file", "now a file\n"), testimage.Symlink("link", "two"),
		// unlinked is linked's name no more, and joined becomes lone's.
		testimage.File("unlinked", "l\n"), testimage.File("lone", "n\n"), testimage.Hardlink("joined", "lone"),
		testimage.Dir("opaque", 0o755), testimage.Opaque("opaque"), testimage.File("opaque/kept", "k\n"), testimage.File("opaque/new", "n\n"),
		testimage.Whiteout("", "gone"), testimage.Whiteout("", "readded"), testimage.Whiteout("", "regrown"),
	}
	// regrown, whited out below, is only implied here: a new directory.
	readd := []testimage.Entry{testimage.Dir(".", 0o755), testimage.File("readded", "r\n"), testimage.File("regrown/a/g", "g\n")}
	layers := func(es ...[]testimage.Entry) []testimage.Layer {
		var ls []testimage.Layer
		for _, e := range es {
			ls = append(ls, testimage.Layer{Entries: e})
		}
		return ls
	}
	return writeImage(t, testimage.Image{Name: "a", Layers: layers(base)}),
		writeImage(t, testimage.Image{Name: "b", Layers: layers(base, changes, readd)}),
		writeImage(t, testimage.Image{Name: "other", Layers: layers([]testimage.Entry{testimage.Dir(".", 0o700), testimage.File("mode", "m\n")})})
}

// TestDiffMatchesKernelOverlayfs compares layerfs diff of images, and of
// single layers as built, with kernel overlayfs over their layers, and
// GNU tar's unpacking of each layer alone, compared entry by entry.
func TestDiffMatchesKernelOverlayfs(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	a, b, other := diffCaseImages(t)
	for _, img := range []layoutImage{a, b, other} {
		importInto(t, root, img)
	}
	trees := map[string]oracle.Tree{
		a.ref: oracleTree(t, a.blobs), b.ref: oracleTree(t, b.blobs), other.ref: oracleTree(t, other.blobs),
	}
	for i, l := range b.layers {
		trees[l.String()] = walk(t, untar(t, b.blobs[i]))
	}
	check := func(x, y string) {
		t.Helper()
		want := mountDiff(trees[x], trees[y])
		if got := mustRun(t, root, "diff", x, y); got != diffText(want) {
			t.Errorf("layerfs diff %s %s:\n%s\nkernel overlayfs compared:\n%s", x, y, got, diffText(want))
		}
		var got []diffChange
		if err := json.Unmarshal([]byte(mustRun(t, root, "diff", "--format", "json", x, y)), &got); err != nil {
			t.Fatalf("layerfs diff --format json %s %s: %v", x, y, err)
		}
		for i := range got {
			got[i].Layer = ""
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("layerfs diff --format json %s %s:\n%v\nkernel overlayfs compared:\n%v", x, y, got, want)
		}
	}
	check(a.ref, b.ref)
	check(b.ref, a.ref)
	check(b.ref, other.ref)
	check(b.layers[0].String(), b.layers[1].String())
	check(b.layers[1].String(), b.layers[2].String())
	if want := "M file-to-dir\nA file-to-dir/n\n"; !strings.Contains(mustRun(t, root, "diff", a.ref, b.ref), want) {
		t.Errorf("layerfs diff a b does not hold %q", want)
	}
	for _, same := range [][2]string{{a.ref, a.ref}, {a.ref, b.layers[0].String()}} {
		if r := run(t, root, "diff", same[0], same[1]); r.code != 0 || r.stdout != "" {
			t.Errorf("layerfs diff %s %s: exit %d, %q; want nothing and exit 0", same[0], same[1], r.code, r.stdout)
		}
	}
}

// removerText is the end of which's stderr before " removed it".
var removerText = regexp.MustCompile(`: (whiteout|opaque directory|\S+) (/\S*) in (sha256:[0-9a-f]{64})$`)

var hiderLine = regexp.MustCompile(`^hides (sha256:[0-9a-f]{64}) (\S+): (whiteout|opaque directory|\S+) (/\S*) in (sha256:[0-9a-f]{64})$`)

// TestWhichMatchesMounts asks layerfs which about every path of every
// layer, and checks each answer against mounts: the merged mount shows
// exactly the paths it says are shown, the provider's own layer mount
// holds what the merged mount shows, and each hider is in its layer's
// mount as it says.
func TestWhichMatchesMounts(t *testing.T) {
	root, imgs := debugStore(t, false)
	for _, d := range imgs {
		t.Run(d.name, func(t *testing.T) {
			merged := walkMount(t, root, d.img.ref)
			layer := map[string]oracle.Tree{}
			paths := map[string]bool{}
			for _, l := range d.img.layers {
				tr := walkMount(t, root, l.String())
				layer[l.String()] = tr
				for p := range tr {
					paths[p] = true
				}
			}
			for p := range paths {
				r := run(t, root, "which", d.img.ref, p)
				lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
				m, shown := merged[p]
				if shown != (r.code == 0) {
					t.Errorf("which %s: exit %d, but the mount shows it: %v\n%s%s", p, r.code, shown, r.stdout, r.stderr)
					continue
				}
				if !shown {
					if r.code != 3 || !strings.HasPrefix(r.stderr, "layerfs: ") || !strings.Contains(r.stderr, "not in the view") {
						t.Errorf("which %s: exit %d, stderr %q; want exit 3", p, r.code, r.stderr)
					}
					if by, ok := strings.CutSuffix(r.stderr, " removed it\n"); ok && !removerText.MatchString(by) {
						t.Errorf("which %s: stderr %q does not name a whiteout, opaque directory or entry that removed it", p, r.stderr)
					}
				} else {
					provider, ok := layer[lines[0]]
					if !ok {
						t.Errorf("which %s: first line %q is not a layer", p, lines[0])
						continue
					}
					e, ok := provider[p]
					if !ok || e.Type != m.Type {
						t.Errorf("which %s: provider %s has %+v, the mount shows %+v", p, lines[0], e, m)
					} else if m.Type != oracle.TypeDir && d.tarCanExtract {
						e.Nlink, e.HardlinkID, m.Nlink, m.HardlinkID = 0, "", 0, ""
						if fmt.Sprint(e) != fmt.Sprint(m) {
							t.Errorf("which %s: provider %s has %+v, the mount shows %+v", p, lines[0], e, m)
						}
					}
					lines = lines[1:]
				}
				for _, line := range lines {
					if merged, ok := strings.CutPrefix(line, "merges "); ok {
						checkMerges(t, p, strings.Fields(merged)[0], d.img.layers, layer)
						continue
					}
					if line != "" {
						checkHider(t, p, line, layer)
					}
				}
			}
		})
	}
}

// TestWhichFollowsSymlinkedDirectories asks layerfs which about a path
// under a symlink of the view (the sample's lib is usr/lib): the mount
// shows the file there, and which names the layer it names for the path
// the symlink leads to.
func TestWhichFollowsSymlinkedDirectories(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := sampleImage(t)
	importInto(t, root, img)
	ref := img.ref
	mnt := mountDaemon(t, root, ref)
	if _, err := os.Stat(filepath.Join(mnt, "lib/libc.so.6")); err != nil {
		t.Fatalf("the mount: %v", err)
	}
	via, direct := run(t, root, "which", ref, "/lib/libc.so.6"), run(t, root, "which", ref, "/usr/lib/libc.so.6")
	if via.code != 0 || direct.code != 0 || via.stdout != direct.stdout {
		t.Errorf("which /lib/libc.so.6: exit %d, %q%s; which /usr/lib/libc.so.6: exit %d, %q", via.code, via.stdout, via.stderr, direct.code, direct.stdout)
	}
}

// oracleType is the oracle's word for each type word of layerfs which; a
// hardlink into a lower layer is a regular file.
var oracleType = map[string]oracle.Type{
	"file": oracle.TypeReg, "hardlink": oracle.TypeReg, "dir": oracle.TypeDir, "symlink": oracle.TypeSymlink,
	"char": oracle.TypeChar, "block": oracle.TypeBlock, "fifo": oracle.TypeFIFO,
}

// TestWhichRefusesWhatTheKernelRefuses asks which about paths that end
// in a slash, "." or "..", or hold "..", which it must answer as shown
// (exit 0) exactly when kernel overlayfs over the sample's layers
// resolves them in its root, and as not shown (exit 3) otherwise:
// "FILE/" is no directory, and ".." climbs from where a symlink leads
// (lib -> usr/lib, so lib/.. is usr). A path it shows is answered as the
// path the kernel resolved it to is.
func TestWhichRefusesWhatTheKernelRefuses(t *testing.T) {
	root, img, mnt := sampleOverKernelOverlayfs(t)
	rootDir, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer rootDir.Close()
	whichAsTheKernelResolves(t, root, img.ref, rootDir, []string{
		"etc/", "/etc/.", "etc/..", "lib/", "usr/bin/", "etc/hostname", "etc/hostname/", "/etc/hostname/.",
		"etc/hostname/..", "usr/bin/ls/", "usr/bin/ls/.", "etc/nothere/",
		"lib/../bin/busybox", "/lib/../../etc/hostname", "lib/../etc/hostname", "lib/..", "etc/../lib", "etc/nothere/../hostname",
	})
}

// TestWhichFollowsASymlinkOverAHiddenPath asks which about d/x where a
// lower layer has d/x and elsewhere/x, and the top layer makes d a
// symlink to elsewhere: the lower d/x is hidden, but the mount shows
// elsewhere/x there, as kernel overlayfs over the layers does.
func TestWhichFollowsASymlinkOverAHiddenPath(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := writeImage(t, testimage.Image{Name: "symlinked", Layers: []testimage.Layer{
		{Entries: []testimage.Entry{
			testimage.Dir("d", 0o755), testimage.File("d/x", "hidden\n"), testimage.File("d/only", "hidden\n"),
			testimage.Dir("elsewhere", 0o755), testimage.File("elsewhere/x", "shown\n"),
		}},
		{Entries: []testimage.Entry{testimage.Symlink("d", "elsewhere")}},
	}})
	importInto(t, root, img)
	rootDir, err := os.Open(overlayMount(t, unpackLayers(t, img.blobs)))
	if err != nil {
		t.Fatal(err)
	}
	defer rootDir.Close()
	whichAsTheKernelResolves(t, root, img.ref, rootDir, []string{"d/x", "/d/x", "d/only", "d/nothing", "d/", "d"})
	if r := run(t, root, "which", img.ref, "d/only"); !strings.Contains(r.stdout, "hides "+img.layers[0].String()+" file: symlink /d in "+img.layers[1].String()) {
		t.Errorf("layerfs which symlinked d/only: %q, want the lower d/only hidden by the symlink d", r.stdout)
	}
}

// whichAsTheKernelResolves asks which about each path of the view of ref,
// which it must answer as shown (exit 0) exactly when the kernel resolves
// it in rootDir, a mount of that view, and as not shown (exit 3)
// otherwise; a path it shows is answered as the path the kernel resolved
// it to is.
func whichAsTheKernelResolves(t *testing.T, root, ref string, rootDir *os.File, paths []string) {
	t.Helper()
	for _, p := range paths {
		how := unix.OpenHow{Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT}
		if strings.HasSuffix(p, "/") {
			how.Flags &^= unix.O_NOFOLLOW
		}
		fd, kernelErr := unix.Openat2(int(rootDir.Fd()), strings.TrimPrefix(p, "/"), &how)
		var resolved string
		if kernelErr == nil {
			target, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			if resolved, err = filepath.Rel(rootDir.Name(), target); err != nil {
				t.Fatal(err)
			}
		}
		r := run(t, root, "which", ref, p)
		switch {
		case kernelErr == nil && r.code != 0, kernelErr != nil && (r.code != 3 || !strings.Contains(r.stderr, "is not in the view")):
			t.Errorf("layerfs which %s %s: exit %d, stderr %q; kernel overlayfs resolves it with error %v", ref, p, r.code, r.stderr, kernelErr)
		case kernelErr == nil:
			if want := mustRun(t, root, "which", ref, "/"+resolved); r.stdout != want {
				t.Errorf("layerfs which %s %s:\n%swhere the kernel resolves it to /%s, which says:\n%s", ref, p, r.stdout, resolved, want)
			}
		}
	}
}

// sampleOverKernelOverlayfs imports the sample image into a new store at
// root and mounts kernel overlayfs over its layers at mnt.
func sampleOverKernelOverlayfs(t *testing.T) (root string, img layoutImage, mnt string) {
	t.Helper()
	requireRoot(t)
	root = t.TempDir()
	img = sampleImage(t)
	importInto(t, root, img)
	return root, img, overlayMount(t, unpackLayers(t, img.blobs))
}

// checkMerges checks that the directory p of layer merged merges into
// the view: no layer above it holds an opaque marker in p. A marker at
// a layer's root hides nothing, as overlayfs has it.
func checkMerges(t *testing.T, p, merged string, layers []digest.Digest, layer map[string]oracle.Tree) {
	t.Helper()
	if p == "." {
		return
	}
	i := slices.Index(layers, digest.Digest(merged))
	if i < 0 {
		t.Errorf("which %s: merges %s, not a layer of the image", p, merged)
		return
	}
	for _, above := range layers[i+1:] {
		if _, ok := layer[above.String()][path.Join(p, ".wh..wh..opq")]; ok {
			t.Errorf("which %s: merges %s, but %s above it makes %s opaque", p, merged, above, p)
		}
	}
}

// checkHider checks one "hides" line of layer which against the mounts
// of single layers.
func checkHider(t *testing.T, p, line string, layer map[string]oracle.Tree) {
	t.Helper()
	if strings.Contains(line, "being a whiteout marker") {
		return
	}
	m := hiderLine.FindStringSubmatch(line)
	if m == nil {
		t.Errorf("which %s: line %q", p, line)
		return
	}
	hidden, kind, at, by := layer[m[1]], m[3], strings.TrimPrefix(m[4], "/"), layer[m[5]]
	if hidden == nil || by == nil {
		t.Errorf("which %s: %q names layers not in the image", p, line)
		return
	}
	if _, ok := hidden[p]; !ok {
		t.Errorf("which %s: %q, but that layer has no %s", p, line, p)
	}
	switch kind {
	case "whiteout":
		if e, ok := by[at]; !ok || e.Type != oracle.TypeReg {
			t.Errorf("which %s: %q, but that layer has %+v there", p, line, e)
		}
	case "opaque directory":
		if _, ok := by[filepath.Join(at, ".wh..wh..opq")]; !ok {
			t.Errorf("which %s: %q, but that directory holds no opaque marker", p, line)
		}
	default:
		if e, ok := by[at]; !ok || e.Type != oracleType[kind] {
			t.Errorf("which %s: %q, but that layer has %+v there", p, line, e)
		}
	}
}

// untar unpacks a tar file with GNU tar into a new directory.
func untar(t *testing.T, file string) string {
	t.Helper()
	dst := t.TempDir()
	testimage.RunTool(t, "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", file, "-C", dst)
	return dst
}

// linkCounted is tree with each file's link count made the number of its
// names in the tree. A tar holds no link counts: unpacked, a file has as
// many links as the view has names for it, where a mount shows the count
// of its layer, which differs when a name is whited out or a hardlink
// reaches into a lower layer.
func linkCounted(tree oracle.Tree) oracle.Tree {
	names := map[string]uint64{}
	for _, e := range tree {
		if e.HardlinkID != "" {
			names[e.HardlinkID]++
		}
	}
	out := make(oracle.Tree, len(tree))
	for p, e := range tree {
		if e.HardlinkID != "" {
			e.Nlink = names[e.HardlinkID]
		}
		out[p] = e
	}
	return out
}

// TestExportUnpacksToTheView unpacks layerfs export with GNU tar and
// compares the tree with the mount and, where GNU tar can unpack the
// layers, with kernel overlayfs over them.
func TestExportUnpacksToTheView(t *testing.T) {
	root, imgs := debugStore(t, !testing.Short())
	for _, d := range imgs {
		t.Run(d.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "view.tar")
			mustRun(t, root, "export", d.img.ref, "-o", file)
			got := walk(t, untar(t, file))
			requireSame(t, "export unpacked vs mount", linkCounted(walkMount(t, root, d.img.ref)), got)
			if d.tarCanExtract {
				requireSame(t, "export unpacked vs overlayfs", oracleTree(t, d.img.blobs), got)
			}
		})
	}
	// One layer digest is exported merged over nothing, as its help
	// says: its whiteout markers, which ls and mount of that layer show
	// as files, are not in the tar, which kernel overlayfs over that
	// layer alone shows.
	t.Run("one layer", func(t *testing.T) {
		img := imgs[0].img
		for i, l := range img.layers {
			file := filepath.Join(t.TempDir(), "layer.tar")
			mustRun(t, root, "export", l.String(), "-o", file)
			requireSame(t, "export of layer "+l.String()+" unpacked vs overlayfs", oracleTree(t, img.blobs[i:i+1]), walk(t, untar(t, file)))
		}
	})
	t.Run("stdout", func(t *testing.T) {
		dst := t.TempDir()
		export := exec.Command(layerfsBin(t), "--root", root, "export", "sample")
		untar := exec.Command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C", dst)
		pipe, err := export.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		untar.Stdin = bufio.NewReader(pipe)
		if err := export.Start(); err != nil {
			t.Fatal(err)
		}
		if out, err := untar.CombinedOutput(); err != nil {
			t.Fatalf("tar: %v\n%s", err, out)
		}
		if err := export.Wait(); err != nil {
			t.Fatal(err)
		}
		requireSame(t, "export | tar vs mount", linkCounted(walkMount(t, root, "sample")), walk(t, dst))
	})
}

// TestCatMatchesKernelOverlayfs reads every non-directory of each view
// with layerfs cat, and checks it against kernel overlayfs over the same
// layers, each path resolved by the kernel as in a chroot to the mount
// (openat2 with RESOLVE_IN_ROOT): a path that opens a regular file there
// must give its bytes, any other must be refused with exit 1. The cases
// whose layers GNU tar cannot unpack on their own have no oracle here.
func TestCatMatchesKernelOverlayfs(t *testing.T) {
	root, imgs := debugStore(t, !testing.Short())
	for _, d := range imgs {
		if !d.tarCanExtract {
			continue
		}
		t.Run(d.name, func(t *testing.T) {
			catMatchesKernelOverlayfs(t, root, d.img, overlayMount(t, unpackLayers(t, d.img.blobs)))
		})
	}
}

// catMatchesKernelOverlayfs reads every non-directory of mnt, kernel
// overlayfs over img's layers, as a process chrooted to it would, and
// checks that layerfs cat of them all writes the same bytes, and refuses
// each one that is no regular file there.
func catMatchesKernelOverlayfs(t *testing.T, root string, img layoutImage, mnt string) {
	t.Helper()
	rootDir, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer rootDir.Close()
	var readable, refused []string
	var starts []int
	var want bytes.Buffer
	err = filepath.WalkDir(mnt, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(mnt, p)
		content, ok := readInRoot(t, rootDir, rel)
		if ok {
			readable = append(readable, "/"+rel)
			starts = append(starts, want.Len())
			want.Write(content)
		} else {
			refused = append(refused, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got := ""
	if len(readable) > 0 {
		got = mustRun(t, root, append([]string{"cat", img.ref}, readable...)...)
	}
	if got != want.String() {
		at := commonPrefix(got, want.String())
		i := sort.SearchInts(starts, at+1) - 1
		t.Errorf("layerfs cat of its %d regular files differs from kernel overlayfs at byte %d, in %s", len(readable), at, readable[max(i, 0)])
	}
	for _, p := range refused {
		if r := run(t, root, "cat", img.ref, p); r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "layerfs: cat: ") {
			t.Errorf("layerfs cat %s, which kernel overlayfs does not read as a regular file: exit %d, stdout %q, stderr %q", p, r.code, r.stdout, r.stderr)
		}
	}
}

// TestLsAndCatOfOddEntriesMatchKernelOverlayfs lists and reads an image
// of names a line-oriented tool trips on (a space, a newline, a byte
// that is no UTF-8, a leading dash), symlinks to a file, a directory,
// nothing, and out of the view (absolute, and by "..", which must lead
// to the view's own files, never the host's), hardlinks, devices and an
// empty file, and compares layerfs ls and cat with GNU ls and reads in
// kernel overlayfs over its layers.
func TestLsAndCatOfOddEntriesMatchKernelOverlayfs(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	img := writeImage(t, testimage.Image{Name: "odd", Layers: []testimage.Layer{
		{Entries: []testimage.Entry{
			testimage.Dir(".", 0o755), testimage.Dir("etc", 0o755), testimage.File("etc/passwd", "the view's own\n"),
			testimage.File("with space", "s\n"), testimage.File("new\nline", "n\n"), testimage.File("bad\xffbyte", "b\n"),
			testimage.File("-dash", "d\n"), testimage.File("empty", ""), testimage.CharDev("null", 1, 3),
			testimage.BlockDev("disk", 8, 0), testimage.Fifo("fifo"),
		}},
		{Entries: []testimage.Entry{
			testimage.Dir(".", 0o755), testimage.Symlink("to-file", "with space"), testimage.Symlink("to-dir", "etc"),
			testimage.Symlink("dangling", "nowhere"), testimage.Symlink("absolute", "/etc/passwd"),
			testimage.Symlink("climbing", "../../../etc/passwd"), testimage.Symlink("out", "/etc/shadow"),
			testimage.File("linked", "l\n"), testimage.Hardlink("link", "linked"),
		}},
	}})
	importInto(t, root, img)
	mnt := overlayMount(t, unpackLayers(t, img.blobs))
	// The mount's directories have the link counts and sizes of the
	// filesystem under it; a view's are 1 and 4096.
	dirFields := regexp.MustCompile(`(?m)^(d\S+) +\d+ (\S+ \S+) +\d+ `)
	want := dirFields.ReplaceAllString(gnuLs(t, mnt), "$1 1 $2 4096 ")
	if got := dirFields.ReplaceAllString(mustRun(t, root, "ls", "-l", "-R", img.ref), "$1 1 $2 4096 "); got != want {
		t.Errorf("layerfs ls -l -R differs from GNU ls -lnRA of kernel overlayfs; first difference %s", firstDifference(want, got))
	}
	catMatchesKernelOverlayfs(t, root, img, mnt)
}

// TestCatResolvesPathsAsTheKernel gives cat paths that a lexical clean
// would read wrongly: "." or ".." after a file, a trailing slash after a
// file, ".." after a symlinked directory (lib -> usr/lib, so lib/.. is
// usr). Kernel overlayfs over the sample's layers, each path resolved
// in its root, says which open a regular file, and with what bytes; the
// others must fail with exit 1, the message naming the path as given.
func TestCatResolvesPathsAsTheKernel(t *testing.T) {
	root, img, mnt := sampleOverKernelOverlayfs(t)
	rootDir, err := os.Open(mnt)
	if err != nil {
		t.Fatal(err)
	}
	defer rootDir.Close()
	for _, p := range []string{
		"etc/hostname", "etc/hostname/", "/etc/hostname/.", "etc/hostname/..", "etc/hostname/../passwd",
		"lib/../bin/busybox", "/lib/../../etc/hostname", "lib/libc.so.6/", "usr/bin/ls/", "usr/bin/ls/.",
		"/etc/./hostname", "etc//hostname", "/../etc/hostname",
	} {
		want, ok := readInRoot(t, rootDir, strings.TrimPrefix(p, "/"))
		r := run(t, root, "cat", img.ref, p)
		switch {
		case ok && (r.code != 0 || r.stdout != string(want)):
			t.Errorf("layerfs cat sample %s: exit %d, stdout %q, stderr %q; kernel overlayfs reads %q", p, r.code, r.stdout, r.stderr, want)
		case !ok && (r.code != 1 || r.stdout != "" || !strings.HasPrefix(r.stderr, "layerfs: cat: /"+strings.TrimPrefix(p, "/")+": ")):
			t.Errorf("layerfs cat sample %s, which kernel overlayfs does not read as a regular file: exit %d, stdout %q, stderr %q", p, r.code, r.stdout, r.stderr)
		}
	}
}

// TestEmptyPathNamesNothing gives ls, cat and which an empty PATH, which
// GNU ls and cat in kernel overlayfs over the sample's layers refuse as
// missing: layerfs must refuse it too, naming it, not answer for the root.
func TestEmptyPathNamesNothing(t *testing.T) {
	root, img, mnt := sampleOverKernelOverlayfs(t)
	for _, tool := range []string{"ls", "cat"} {
		cmd := exec.Command(testimage.RequireTool(t, tool), "")
		cmd.Dir = mnt
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Fatalf("GNU %s '' in the overlay succeeded: %s", tool, out)
		}
		if r := run(t, root, tool, img.ref, ""); r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, `""`) {
			t.Errorf("layerfs %s sample '': exit %d, stdout %q, stderr %q; want exit 1 naming \"\"", tool, r.code, r.stdout, r.stderr)
		}
	}
	if r := run(t, root, "which", img.ref, ""); r.code != 3 || r.stdout != "" || !strings.Contains(r.stderr, `""`) {
		t.Errorf("layerfs which sample '': exit %d, stdout %q, stderr %q; want exit 3 naming \"\"", r.code, r.stdout, r.stderr)
	}
}

// readInRoot reads rel beneath root as a process chrooted to root would,
// or reports that it is not a regular file there.
func readInRoot(t *testing.T, root *os.File, rel string) ([]byte, bool) {
	t.Helper()
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT}
	fd, err := unix.Openat2(int(root.Fd()), rel, &how)
	if err != nil {
		return nil, false
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	unix.Close(fd)
	if err != nil {
		t.Fatalf("fstat %s: %v", rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, false
	}
	how.Flags = unix.O_RDONLY | unix.O_CLOEXEC
	if fd, err = unix.Openat2(int(root.Fd()), rel, &how); err != nil {
		t.Fatalf("open %s in the root of the overlay: %v", rel, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	content, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return content, true
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// TestExportRoundTrip takes layerfs export back in as the one layer of a
// new image, made by umoci (umoci raw add-layer, gzip) and by skopeo (its
// tarball: transport): imported again, each shows the view exported, but
// for link counts, which a tar does not hold; umoci unpack of it too.
func TestExportRoundTrip(t *testing.T) {
	testimage.RequireTool(t, "umoci")
	testimage.RequireTool(t, "skopeo")
	root, imgs := debugStore(t, !testing.Short())
	for _, d := range imgs {
		t.Run(d.name, func(t *testing.T) {
			work := t.TempDir()
			file := filepath.Join(work, "view.tar")
			mustRun(t, root, "export", d.img.ref, "-o", file)
			want := linkCounted(walkMount(t, root, d.img.ref))

			layout := filepath.Join(work, "layout")
			testimage.RunTool(t, "umoci", "init", "--layout", layout)
			testimage.RunTool(t, "umoci", "new", "--image", layout+":empty")
			testimage.RunTool(t, "umoci", "raw", "add-layer", "--image", layout+":empty", "--tag", "umoci", file)
			testimage.RunTool(t, "skopeo", "--insecure-policy", "copy", "--quiet", "tarball:"+file, "oci:"+layout+":skopeo")
			back := t.TempDir()
			for _, ref := range []string{"umoci", "skopeo"} {
				mustRun(t, back, "import", layout+":"+ref)
				requireSame(t, "export taken back in by "+ref, want, linkCounted(walkMount(t, back, ref)))
			}
			// umoci's own unpacking of that layer is the view too, but
			// for the xattrs umoci leaves out: those of an empty value,
			// which Go's archive/tar drops from Header.Xattrs (GNU tar
			// and the import above keep them), and overlayfs's own (an
			// escaped trusted.overlay.overlay.* it keeps).
			bundle := filepath.Join(t.TempDir(), "bundle")
			testimage.RunTool(t, "umoci", "unpack", "--image", layout+":umoci", bundle)
			umociWant := make(oracle.Tree, len(want))
			for p, e := range want {
				xattrs := map[string]string{}
				for k, v := range e.Xattrs {
					overlays := strings.HasPrefix(k, "trusted.overlay.") && !strings.HasPrefix(k, "trusted.overlay.overlay.")
					if v != "" && !overlays {
						xattrs[k] = v
					}
				}
				e.Xattrs = nil
				if len(xattrs) > 0 {
					e.Xattrs = xattrs
				}
				umociWant[p] = e
			}
			requireSame(t, "umoci unpack of the exported layer", umociWant, walk(t, filepath.Join(bundle, "rootfs")))
		})
	}
}
