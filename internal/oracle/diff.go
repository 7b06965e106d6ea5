package oracle

import (
	"fmt"
	"sort"
	"strconv"
)

// DiffOption relaxes what Diff compares. By default it compares everything.
type DiffOption func(*diffConfig)

type diffConfig struct {
	ignoreRoot      bool
	ignoreDirMtimes bool
}

// IgnoreRootAttrs skips the attributes of the root directory, which a mount
// point may take from whoever mounted it rather than from the image.
func IgnoreRootAttrs() DiffOption {
	return func(c *diffConfig) { c.ignoreRoot = true }
}

// IgnoreDirMtimes skips the mtimes of entries that are directories in both
// trees, for views that cannot reproduce them.
func IgnoreDirMtimes() DiffOption {
	return func(c *diffConfig) { c.ignoreDirMtimes = true }
}

// Diff lists every difference between want and got, one line each naming
// the path, the field and both values, sorted. No lines means the trees are
// identical.
func Diff(want, got Tree, opts ...DiffOption) []string {
	var c diffConfig
	for _, o := range opts {
		o(&c)
	}
	var out []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			out = append(out, fmt.Sprintf("%s: missing (want %s)", showPath(p), w.Type))
			continue
		}
		if p == "." && c.ignoreRoot {
			continue
		}
		out = append(out, diffEntry(p, w, g, c)...)
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			out = append(out, fmt.Sprintf("%s: unexpected (got %s)", showPath(p), g.Type))
		}
	}
	sort.Strings(out)
	return out
}

func diffEntry(p string, w, g Entry, c diffConfig) []string {
	var out []string
	field := func(name string, want, got any) {
		out = append(out, fmt.Sprintf("%s: %s want %v got %v", showPath(p), name, want, got))
	}
	if w.Type != g.Type {
		field("type", w.Type, g.Type)
	}
	if w.Mode != g.Mode {
		field("mode", fmt.Sprintf("%04o", w.Mode), fmt.Sprintf("%04o", g.Mode))
	}
	if w.UID != g.UID {
		field("uid", w.UID, g.UID)
	}
	if w.GID != g.GID {
		field("gid", w.GID, g.GID)
	}
	if w.Size != g.Size {
		field("size", w.Size, g.Size)
	}
	bothDirs := w.Type == TypeDir && g.Type == TypeDir
	if w.Mtime != g.Mtime && !(bothDirs && c.ignoreDirMtimes) {
		field("mtime", w.Mtime, g.Mtime)
	}
	if w.SHA256 != g.SHA256 {
		field("sha256", orNone(w.SHA256), orNone(g.SHA256))
	}
	if w.Link != g.Link {
		field("link", strconv.Quote(w.Link), strconv.Quote(g.Link))
	}
	if w.DevMajor != g.DevMajor || w.DevMinor != g.DevMinor {
		field("rdev", fmt.Sprintf("%d:%d", w.DevMajor, w.DevMinor), fmt.Sprintf("%d:%d", g.DevMajor, g.DevMinor))
	}
	if w.Nlink != g.Nlink {
		field("nlink", w.Nlink, g.Nlink)
	}
	if w.HardlinkID != g.HardlinkID {
		field("hardlink", orNone(w.HardlinkID), orNone(g.HardlinkID))
	}
	for k, wv := range w.Xattrs {
		gv, ok := g.Xattrs[k]
		switch {
		case !ok:
			field("xattr "+k, strconv.Quote(wv), "none")
		case gv != wv:
			field("xattr "+k, strconv.Quote(wv), strconv.Quote(gv))
		}
	}
	for k, gv := range g.Xattrs {
		if _, ok := w.Xattrs[k]; !ok {
			field("xattr "+k, "none", strconv.Quote(gv))
		}
	}
	return out
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// showPath quotes a path only when it holds bytes that would garble a line.
func showPath(p string) string {
	if q := strconv.Quote(p); q[1:len(q)-1] != p {
		return q
	}
	return p
}
