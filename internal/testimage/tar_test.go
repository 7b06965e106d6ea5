package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// caseLayers writes the layers of every case uncompressed and returns the
// blob paths, by case name then layer index.
func caseLayers(t *testing.T, cases []RuleCase) map[string][]string {
	t.Helper()
	dir := t.TempDir()
	blobs := map[string][]string{}
	for _, c := range cases {
		descs, err := WriteLayout(dir, Image{Name: c.Name, Layers: withCompression(None, c.Layers)})
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		m, _, err := ReadImage(dir, descs[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range m.Layers {
			blobs[c.Name] = append(blobs[c.Name], BlobPath(dir, l.Digest))
		}
	}
	return blobs
}

// tarTypes are the letters GNU tar -tv shows for each type.
var tarTypes = map[byte]byte{
	tar.TypeReg: '-', tar.TypeDir: 'd', tar.TypeSymlink: 'l', tar.TypeLink: 'h',
	tar.TypeChar: 'c', tar.TypeBlock: 'b', tar.TypeFifo: 'p',
}

// listing is what GNU tar --numeric-owner --full-time -tvv should
// print for e, with runs of spaces squeezed and one "x: LEN NAME" line per
// xattr in name order.
func listing(e Entry) []string {
	h := e.Header()
	m := []byte{tarTypes[h.Typeflag]}
	for i, c := range "rwxrwxrwx" {
		if h.Mode&(1<<(8-i)) != 0 {
			m = append(m, byte(c))
		} else {
			m = append(m, '-')
		}
	}
	for _, s := range []struct {
		bit  int64
		at   int
		char byte
	}{{04000, 3, 's'}, {02000, 6, 's'}, {01000, 9, 't'}} {
		if h.Mode&s.bit != 0 {
			if m[s.at] == '-' {
				m[s.at] = s.char - 'a' + 'A'
			} else {
				m[s.at] = s.char
			}
		}
	}
	size := fmt.Sprint(h.Size)
	if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock {
		size = fmt.Sprintf("%d,%d", h.Devmajor, h.Devminor)
	}
	mtime := h.ModTime.UTC().Format("2006-01-02 15:04:05")
	if ns := h.ModTime.Nanosecond(); ns != 0 {
		mtime += strings.TrimRight(fmt.Sprintf(".%09d", ns), "0")
	}
	line := fmt.Sprintf("%s %d/%d %s %s %s", m, h.Uid, h.Gid, size, mtime, h.Name)
	switch h.Typeflag {
	case tar.TypeSymlink:
		line += " -> " + h.Linkname
	case tar.TypeLink:
		line += " link to " + h.Linkname
	}
	lines := []string{line}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range e.Xattrs {
			if !yield(k) {
				return
			}
		}
	}) {
		lines = append(lines, fmt.Sprintf("x: %d %s", len(e.Xattrs[k]), k))
	}
	return lines
}

// TestTarListing has GNU tar list every layer of every case and checks it
// shows exactly the entries given: names, types, modes, owners, sizes,
// nanosecond mtimes, link targets and xattrs.
func TestTarListing(t *testing.T) {
	// Not tar's --utc: GNU tar 1.34 drops the xattr lines with it.
	t.Setenv("TZ", "UTC")
	cases := append(RuleCases(), RefusedCases()...)
	blobs := caseLayers(t, cases)
	for _, c := range cases {
		for i, l := range c.Layers {
			var want []string
			for _, e := range l.Entries {
				want = append(want, listing(e)...)
			}
			out := RunTool(t, "tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "--full-time",
				"--absolute-names", "--quoting-style=literal", "-tvvf", blobs[c.Name][i])
			var got []string
			for line := range strings.Lines(string(out)) {
				f := strings.Fields(line)
				f[0] = strings.TrimSuffix(f[0], "*")
				got = append(got, strings.Join(f, " "))
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s layer %d: tar lists\n%s\nwant\n%s", c.Name, i, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
	}
}

// TestTarExtract has GNU tar extract each layer of each rule case alone,
// as an overlay oracle does, checks that exactly the cases marked
// TarCannotExtract fail, and that what it extracts carries every attribute
// the entries give, xattr values included.
func TestTarExtract(t *testing.T) {
	RequireRoot(t, "extracting owners, devices and security.capability")
	tarPath := RequireTool(t, "tar")
	cases := RuleCases()
	blobs := caseLayers(t, cases)
	for _, c := range cases {
		failed := false
		for i, l := range c.Layers {
			dir := t.TempDir()
			out, err := exec.Command(tarPath, "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", blobs[c.Name][i], "-C", dir).CombinedOutput()
			if err != nil {
				failed = true
				if !c.TarCannotExtract {
					t.Errorf("%s layer %d: tar -x: %v\n%s", c.Name, i, err, out)
				}
				continue
			}
			checkExtracted(t, fmt.Sprintf("%s layer %d", c.Name, i), dir, l.Entries)
		}
		if c.TarCannotExtract && !failed {
			t.Errorf("%s is marked TarCannotExtract, but GNU tar extracted every layer", c.Name)
		}
	}
}

// tarPath is where GNU tar puts member name: without leading slashes or
// "./", and "." for the root.
func tarPath(name string) string {
	return path.Clean("./" + strings.TrimLeft(name, "/"))
}

func checkExtracted(t *testing.T, what, dir string, entries []Entry) {
	t.Helper()
	last := map[string]Entry{}
	lastAt := map[string]int{}
	// A hardlink is the file its target was when the link came: when a
	// later entry replaced the target, the link keeps the old file.
	linkedAt := map[string]int{}
	for i, e := range entries {
		name := tarPath(e.Name)
		if at, ok := lastAt[tarPath(e.Linkname)]; ok && e.Type == tar.TypeLink {
			linkedAt[name] = at
		}
		last[name], lastAt[name] = e, i
	}
	for name, e := range last {
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("%s: %v", what, err)
			continue
		}
		h := e.Header()
		if h.Typeflag == tar.TypeLink {
			at, ok := linkedAt[name]
			if !ok || at == lastAt[tarPath(h.Linkname)] {
				var target unix.Stat_t
				if err := unix.Lstat(filepath.Join(dir, tarPath(h.Linkname)), &target); err != nil || target.Ino != st.Ino {
					t.Errorf("%s: %s is inode %d, its target %s inode %d (%v)", what, name, st.Ino, h.Linkname, target.Ino, err)
				}
				continue
			}
			e, h = entries[at], entries[at].Header()
		}
		var diffs []string
		check := func(field string, got, want any) {
			if got != want {
				diffs = append(diffs, fmt.Sprintf("%s %v, want %v", field, got, want))
			}
		}
		check("type", st.Mode&unix.S_IFMT, map[byte]uint32{
			tar.TypeReg: unix.S_IFREG, tar.TypeDir: unix.S_IFDIR, tar.TypeSymlink: unix.S_IFLNK,
			tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO,
		}[h.Typeflag])
		if h.Typeflag != tar.TypeSymlink {
			check("mode", fmt.Sprintf("%#o", st.Mode&07777), fmt.Sprintf("%#o", h.Mode))
		}
		check("uid", int(st.Uid), h.Uid)
		check("gid", int(st.Gid), h.Gid)
		check("mtime", fmt.Sprint(st.Mtim.Sec, st.Mtim.Nsec), fmt.Sprint(h.ModTime.Unix(), h.ModTime.Nanosecond()))
		switch h.Typeflag {
		case tar.TypeReg:
			body, err := os.ReadFile(p)
			check("body", err == nil && bytes.Equal(body, e.Body), true)
		case tar.TypeSymlink:
			target, _ := os.Readlink(p)
			check("target", target, h.Linkname)
		case tar.TypeChar, tar.TypeBlock:
			check("device", fmt.Sprint(unix.Major(st.Rdev), unix.Minor(st.Rdev)), fmt.Sprint(h.Devmajor, h.Devminor))
		}
		check("xattrs", fmt.Sprintf("%q", xattrs(t, p)), fmt.Sprintf("%q", e.Xattrs))
		if len(diffs) > 0 {
			t.Errorf("%s: %s: %s", what, name, strings.Join(diffs, "; "))
		}
	}
}

func xattrs(t *testing.T, p string) map[string]string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("list xattrs of %s: %v", p, err)
	}
	var x map[string]string
	for name := range strings.SplitSeq(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("get xattr %s of %s: %v", name, p, err)
		}
		if x == nil {
			x = map[string]string{}
		}
		x[name] = string(v[:m])
	}
	return x
}
