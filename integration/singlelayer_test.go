package integration

import (
	"bytes"
	"fmt"
	"os/exec"
	"path"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
)

// member is one path of a layer as GNU tar lists it: the last entry for
// the path, or a parent no entry names (implied).
type member struct {
	// kind is the first letter of tar's mode column: - d l h c b p.
	kind         byte
	mode         uint32
	uid, gid     uint32
	size         int64
	major, minor uint32
	mtime        oracle.Timespec
	// link is a symlink's target, or a hardlink's target as a path.
	link    string
	implied bool
	// line is the entry's place in the listing; was, for a hardlink, the
	// member its target was when the link came: the file the link holds.
	line int
	was  *member
}

// tarListing lists a layer blob with GNU tar, which shares no code with
// the store's extractor: every path, its parents included, by path.
func tarListing(t testing.TB, blob string) map[string]member {
	t.Helper()
	tarTool := testimage.RequireTool(t, "tar")
	list := func(args ...string) []string {
		// Literal quoting: no name in the test images holds a newline.
		cmd := exec.Command(tarTool, append([]string{"--quoting-style=literal"}, args...)...)
		cmd.Env = append(cmd.Environ(), "LC_ALL=C", "TZ=UTC")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("tar %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
		}
		return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	}
	// --full-time makes a listing verbose, so names come from a plain one.
	names := list("-tf", blob)
	lines := list("--numeric-owner", "--full-time", "--utc", "-tvf", blob)
	if len(names) != len(lines) {
		t.Fatalf("tar lists %d names but %d verbose lines for %s", len(names), len(lines), blob)
	}
	ms := map[string]member{".": {kind: 'd', mode: 0o755, implied: true}}
	for i, line := range lines {
		p, m, err := parseListing(line, names[i])
		if err != nil {
			t.Fatalf("%s: %v", blob, err)
		}
		m.line = i + 1
		if cur, ok := ms[m.link]; ok && m.kind == 'h' {
			m.was = &cur
		}
		ms[p] = m
	}
	for p := range ms {
		for d := path.Dir(p); p != "." && d != "."; d = path.Dir(d) {
			if m, ok := ms[d]; ok && m.kind != 'd' {
				// umoci writes, for a directory that became a file,
				// markers for the old children beneath the file. No tree
				// can hold them, and they hide nothing the file does not.
				delete(ms, p)
				break
			}
		}
	}
	for p := range ms {
		for d := path.Dir(p); p != "." && d != "."; d = path.Dir(d) {
			if _, ok := ms[d]; !ok {
				ms[d] = member{kind: 'd', mode: 0o755, implied: true}
			}
		}
	}
	return ms
}

// parseListing reads one line of tar -tvf, such as
// "-rwsr-x--- 11/12  12 2024-01-02 03:04:05.5 usr/bin/x", for the member
// named name.
func parseListing(line, name string) (string, member, error) {
	f := strings.Fields(line)
	if len(f) < 6 || len(f[0]) != 10 {
		return "", member{}, fmt.Errorf("tar listing line %q: too few fields", line)
	}
	m := member{kind: f[0][0], mode: parseModeString(f[0])}
	if _, err := fmt.Sscanf(f[1], "%d/%d", &m.uid, &m.gid); err != nil {
		return "", m, fmt.Errorf("tar listing line %q: owner: %v", line, err)
	}
	if m.kind == 'c' || m.kind == 'b' {
		if _, err := fmt.Sscanf(f[2], "%d,%d", &m.major, &m.minor); err != nil {
			return "", m, fmt.Errorf("tar listing line %q: device: %v", line, err)
		}
	} else if n, err := strconv.ParseInt(f[2], 10, 64); err == nil {
		m.size = n
	} else {
		return "", m, fmt.Errorf("tar listing line %q: size: %v", line, err)
	}
	when, err := time.Parse("2006-01-02 15:04:05.999999999", f[3]+" "+f[4])
	if err != nil {
		return "", m, fmt.Errorf("tar listing line %q: %v", line, err)
	}
	m.mtime = oracle.Timespec{Sec: when.Unix(), Nsec: int64(when.Nanosecond())}
	// The name follows the time stamp, padded; then a link's target.
	stamp := strings.Index(line, f[3]+" "+f[4]) + len(f[3]) + 1 + len(f[4])
	rest := strings.TrimLeft(line[stamp:], " ")
	shown := strings.TrimSuffix(name, "/")
	tail, ok := strings.CutPrefix(strings.TrimPrefix(rest, "/"), strings.TrimPrefix(shown, "/"))
	if !ok {
		return "", m, fmt.Errorf("tar listing line %q does not show the name %q", line, name)
	}
	tail = strings.TrimPrefix(tail, "/")
	switch {
	case m.kind == 'l':
		m.link, ok = strings.CutPrefix(tail, " -> ")
	case m.kind == 'h':
		m.link, ok = strings.CutPrefix(tail, " link to ")
		m.link = tarPath(m.link)
	default:
		ok = tail == ""
	}
	if !ok {
		return "", m, fmt.Errorf("tar listing line %q: unexpected %q after the name", line, tail)
	}
	return tarPath(name), m, nil
}

// parseModeString reads tar's "-rwsr-xr-T" into permission and special bits.
func parseModeString(s string) uint32 {
	var mode uint32
	for i, c := range s[1:] {
		bit := uint32(1) << (8 - i)
		switch c {
		case 'r', 'w', 'x':
			mode |= bit
		case 's', 't':
			mode |= bit | special(i)
		case 'S', 'T':
			mode |= special(i)
		}
	}
	return mode
}

// special is the setuid, setgid or sticky bit shown in column i of the
// permissions.
func special(i int) uint32 {
	return map[int]uint32{2: 0o4000, 5: 0o2000, 8: 0o1000}[i]
}

// tarPath is where a tar name lands: no leading "/" or "./", "." the root.
func tarPath(name string) string {
	if p := strings.TrimPrefix(path.Clean("/"+name), "/"); p != "" {
		return p
	}
	return "."
}

// singleLayerWant is what the single-layer view of a layer must show, by
// its tar listing. Content hashes and xattrs are not in a listing and are
// copied from got; hardlink identity and link counts are worked out from
// the listing's hardlinks.
func singleLayerWant(ms map[string]member, got oracle.Tree) oracle.Tree {
	want := make(oracle.Tree, len(ms))
	groups := map[string][]string{}
	for p, m := range ms {
		// A hardlink holds the file its target was when the link came, or
		// the target's last entry when it came later; a hardlink to a
		// hardlink is one more name of that file.
		src := m
		for src.kind == 'h' {
			if src.was != nil {
				src = *src.was
			} else if t, ok := ms[src.link]; ok && t.line != src.line {
				src = t
			} else {
				break
			}
		}
		// The names of one member, whatever its type, are one file.
		key := fmt.Sprint(src.line)
		if src.kind == 'h' {
			// A hardlink to a lower layer's file: an empty file, since
			// nothing lies beneath a single layer to resolve it in.
			src = m
			src.kind, src.size, key = '-', 0, p
		}
		e := oracle.Entry{Mode: src.mode, UID: src.uid, GID: src.gid, Mtime: src.mtime}
		switch src.kind {
		case 'd':
			e.Type = oracle.TypeDir
		case '-':
			e.Type, e.Size = oracle.TypeReg, src.size
		case 'l':
			// A symlink's mode is 0777 on Linux, whatever tar lists.
			e.Type, e.Size, e.Link, e.Mode = oracle.TypeSymlink, int64(len(src.link)), src.link, 0o777
		case 'c', 'b':
			e.Type, e.DevMajor, e.DevMinor = oracle.TypeChar, src.major, src.minor
			if src.kind == 'b' {
				e.Type = oracle.TypeBlock
			}
		case 'p':
			e.Type = oracle.TypeFIFO
		}
		if src.kind != 'd' {
			groups[key] = append(groups[key], p)
		}
		if g, ok := got[p]; ok {
			e.SHA256, e.Xattrs = g.SHA256, g.Xattrs
		}
		want[p] = e
	}
	for _, ps := range groups {
		sort.Strings(ps)
		for _, p := range ps {
			e := want[p]
			e.Nlink, e.HardlinkID = uint64(len(ps)), ps[0]
			want[p] = e
		}
	}
	return want
}

// imageCases runs fn over the rule cases, the sample and Debian.
func imageCases(t *testing.T, cases []testimage.RuleCase, fn func(t *testing.T, img layoutImage)) {
	t.Run("rules", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.Name, func(t *testing.T) {
				t.Parallel()
				fn(t, ruleImage(t, c))
			})
		}
	})
	t.Run("sample", func(t *testing.T) { fn(t, sampleImage(t)) })
	t.Run("debian", func(t *testing.T) { fn(t, debianLayoutImage(t)) })
}

// TestSingleLayerViewMatchesTarListing mounts every layer of each image on
// its own and compares it with GNU tar's listing of the layer: the names,
// whiteout markers included, types, modes, owners, sizes, mtimes, link
// targets and device numbers, hardlinks as one file.
func TestSingleLayerViewMatchesTarListing(t *testing.T) {
	requireRoot(t)
	// GNU tar lists even the cases it cannot extract.
	imageCases(t, testimage.RuleCases(), func(t *testing.T, img layoutImage) {
		root := t.TempDir()
		importInto(t, root, img)
		for i, d := range img.layers {
			got := walk(t, mountDaemon(t, root, d.String()))
			want := singleLayerWant(tarListing(t, img.blobs[i]), got)
			requireSame(t, fmt.Sprintf("layer %d (%s)", i, d), want, got)
		}
	})
}

// TestOverlayViewsStackToMergedView stacks kernel overlayfs over the
// --overlay mounts of every layer and compares it with the oracle, two
// ways.
//
// Each layer given alone: a directory a layer only implies shows as 0755,
// 0:0, mtime 0 in the overlay-format view, and overlayfs takes a
// directory's attributes from the highest layer that has it, while the
// merged view takes them from the nearest layer beneath with an entry
// (rule 6). Rather than ignoring directory attributes, the expected tree
// is the oracle's with exactly those directories, found from the layers'
// tar listings, set so.
//
// Each layer given the layers beneath it (mount --overlay LOWER... TOP):
// what it implies resolves from them, and the stack is the oracle's tree
// exactly.
func TestOverlayViewsStackToMergedView(t *testing.T) {
	requireRoot(t)
	var cases []testimage.RuleCase
	for _, c := range extractableRuleCases() {
		// Its whiteout of nodir/missing lies in a directory no layer
		// beneath has, and overlayfs then lists the whiteout device by
		// name but cannot stat it: a kernel behaviour, which the oracle
		// avoids by dropping such whiteouts before it mounts.
		if c.Name != "whiteout-of-nothing" {
			cases = append(cases, c)
		}
	}
	imageCases(t, cases, func(t *testing.T, img layoutImage) {
		root := t.TempDir()
		importInto(t, root, img)
		var alone, withLowers, digests []string
		listings := make([]map[string]member, len(img.layers))
		for i, d := range img.layers {
			digests = append(digests, d.String())
			alone = append(alone, mountDaemon(t, root, "--overlay", d.String()))
			withLowers = append(withLowers, mountDaemon(t, root, append([]string{"--overlay"}, digests...)...))
			listings[i] = tarListing(t, img.blobs[i])
		}
		want := oracleTree(t, img.blobs)
		exact := oracle.Tree{}
		for p, e := range want {
			// The overlay-format view escapes user.overlay.* too, for
			// stacks mounted with userxattr; this one, mounted by root,
			// shows them escaped.
			escaped := map[string]string{}
			for k, v := range e.Xattrs {
				if rest, ok := strings.CutPrefix(k, "user.overlay."); ok {
					k = "user.overlay.overlay." + rest
				}
				escaped[k] = v
			}
			if len(e.Xattrs) > 0 {
				e.Xattrs = escaped
				want[p] = e
			}
			exact[p] = e
			if e.Type != oracle.TypeDir {
				continue
			}
			for i := len(listings) - 1; i >= 0; i-- {
				if m, ok := listings[i][p]; ok {
					if m.implied {
						e.Mode, e.UID, e.GID, e.Mtime, e.Xattrs = 0o755, 0, 0, oracle.Timespec{}, nil
						want[p] = e
					}
					break
				}
			}
		}
		requireSame(t, "overlayfs over the --overlay mounts", want, walk(t, overlayMount(t, alone)))
		requireSame(t, "overlayfs over the --overlay mounts given their lower layers", exact, walk(t, overlayMount(t, withLowers)))
	})
}
