package viewops

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

// ListOptions choose what List writes.
type ListOptions struct {
	// Long writes one ls -l line per entry instead of the bare name.
	Long bool
	// Recursive lists every directory beneath, as ls -R.
	Recursive bool
	// Directory lists a directory itself, not its entries, as ls -d:
	// how its own mode, owner and mtime are seen.
	Directory bool
	// Quote prints names, link targets and headings as output.Name
	// does, for a terminal: a name out of an image must not write
	// escape sequences to it, which GNU ls does not either.
	Quote bool
}

// TimeLayout is the format of the time column of a long listing, in UTC:
// what GNU ls writes with --time-style='+%Y-%m-%d %H:%M'.
const TimeLayout = "2006-01-02 15:04"

// List writes directory p of v as GNU ls -A (LC_ALL=C) writes it to a
// pipe: one name a line, sorted by byte order, dot files included; or,
// for a non-directory, p itself. Long writes ls -ln lines: numeric owner
// and group, devices as "major, minor", symlinks as "name -> target" and
// the time as TimeLayout, with no "total" line, since an index has no
// disk blocks. The link counts, sizes and types are those a mount of the
// view shows. Recursive heads each directory with "path:" and goes down
// into every subdirectory after listing it, as ls -R; p names them as
// given, so "." heads "./etc" and "/" heads "/etc". Directory writes
// the line of p itself, a directory too, and nothing beneath it.
func List(w io.Writer, v *stack.View, p string, opt ListOptions) error {
	bw := bufio.NewWriter(w)
	// As GNU ls takes a path it is given: a symlink at its end is
	// followed when the path ends in a slash (which resolve answers with
	// ENOTDIR unless it leads to a directory), or, with neither -l nor
	// -d, when it leads to a directory; otherwise it is listed itself.
	dirOnly := strings.HasSuffix(p, "/")
	r, err := resolve(v, p, true)
	if !dirOnly && (opt.Long || opt.Directory || err != nil || r.Attr.Type != view.TypeDir) {
		r, err = resolve(v, p, false)
	}
	if err != nil {
		return fmt.Errorf("ls: %w", err)
	}
	if r.Attr.Type != view.TypeDir || opt.Directory {
		writeEntries(bw, []lsEntry{{p, r.Attr}}, opt)
		return bw.Flush()
	}
	l := &lister{v: v, w: bw, opt: opt}
	if err := l.dir(p, r.Node); err != nil {
		return err
	}
	return bw.Flush()
}

type lister struct {
	v   *stack.View
	w   *bufio.Writer
	opt ListOptions
	// started is set once a directory's listing is written.
	started bool
}

type lsEntry struct {
	name string
	a    view.Attr
}

func (l *lister) dir(p string, n view.Node) error {
	children, err := l.v.List(n)
	if err != nil {
		return fmt.Errorf("ls %s: %w", p, err)
	}
	entries := make([]lsEntry, 0, len(children))
	var subdirs []view.Node
	for _, c := range children {
		cn, err := lookup(l.v, n, join(p, c.Name), c.Name)
		if err != nil {
			return fmt.Errorf("ls: %w", err)
		}
		a, err := l.v.Attr(cn)
		if err != nil {
			return fmt.Errorf("ls %s: %s: %w", p, c.Name, err)
		}
		entries = append(entries, lsEntry{c.Name, a})
		if a.Type == view.TypeDir {
			subdirs = append(subdirs, cn)
		}
	}
	if l.opt.Recursive {
		if l.started {
			l.w.WriteByte('\n')
		}
		l.started = true
		fmt.Fprintf(l.w, "%s:\n", l.opt.shown(p))
	}
	writeEntries(l.w, entries, l.opt)
	if !l.opt.Recursive {
		return nil
	}
	k := 0
	for _, e := range entries {
		if e.a.Type != view.TypeDir {
			continue
		}
		if err := l.dir(concat(p, e.name), subdirs[k]); err != nil {
			return err
		}
		k++
	}
	return nil
}

// concat joins as ls -R names subdirectories: no slash is doubled.
func concat(dir, name string) string {
	if strings.HasSuffix(dir, "/") {
		return dir + name
	}
	return dir + "/" + name
}

// shown is a name as the listing prints it.
func (opt ListOptions) shown(name string) string {
	if opt.Quote {
		return output.Name(name)
	}
	return name
}

// writeEntries writes one block of a listing, its columns aligned as GNU
// ls aligns them.
func writeEntries(w *bufio.Writer, entries []lsEntry, opt ListOptions) {
	if !opt.Long {
		for _, e := range entries {
			w.WriteString(opt.shown(e.name))
			w.WriteByte('\n')
		}
		return
	}
	type cols struct{ nlink, uid, gid, size, major, minor string }
	rows := make([]cols, len(entries))
	var wl, wu, wg, ws, wmaj, wmin int
	for i, e := range entries {
		a := e.a
		c := cols{
			nlink: strconv.FormatUint(uint64(a.Nlink), 10),
			uid:   strconv.FormatUint(uint64(a.UID), 10),
			gid:   strconv.FormatUint(uint64(a.GID), 10),
		}
		if a.Type == view.TypeChar || a.Type == view.TypeBlock {
			c.major = strconv.FormatUint(uint64(a.Major), 10)
			c.minor = strconv.FormatUint(uint64(a.Minor), 10)
			wmaj, wmin = max(wmaj, len(c.major)), max(wmin, len(c.minor))
			ws = max(ws, wmaj+2+wmin)
		} else {
			c.size = strconv.FormatInt(a.Size, 10)
			ws = max(ws, len(c.size))
		}
		wl, wu, wg = max(wl, len(c.nlink)), max(wu, len(c.uid)), max(wg, len(c.gid))
		rows[i] = c
	}
	for i, e := range entries {
		c := rows[i]
		fmt.Fprintf(w, "%s %*s %*s %*s ", ModeString(e.a.Type, e.a.Mode), wl, c.nlink, wu, c.uid, wg, c.gid)
		if c.major != "" {
			fmt.Fprintf(w, "%*s, %*s ", wmaj+max(0, ws-(wmaj+2+wmin)), c.major, wmin, c.minor)
		} else {
			fmt.Fprintf(w, "%*s ", ws, c.size)
		}
		w.WriteString(time.Unix(e.a.Mtime, int64(e.a.MtimeNs)).UTC().Format(TimeLayout))
		w.WriteByte(' ')
		w.WriteString(opt.shown(e.name))
		if e.a.Type == view.TypeSymlink {
			w.WriteString(" -> ")
			w.WriteString(opt.shown(e.a.Link))
		}
		w.WriteByte('\n')
	}
}

// ModeString is the mode column of ls -l: the type letter, then rwx
// triplets with setuid, setgid and sticky as s/S and t/T.
func ModeString(t view.Type, mode uint32) string {
	b := []byte("?---------")
	switch t {
	case view.TypeReg:
		b[0] = '-'
	case view.TypeDir:
		b[0] = 'd'
	case view.TypeSymlink:
		b[0] = 'l'
	case view.TypeChar:
		b[0] = 'c'
	case view.TypeBlock:
		b[0] = 'b'
	case view.TypeFifo:
		b[0] = 'p'
	}
	const rwx = "rwxrwxrwx"
	for i := 0; i < 9; i++ {
		if mode&(1<<(8-i)) != 0 {
			b[1+i] = rwx[i]
		}
	}
	special := func(pos int, bit uint32, set, unset byte) {
		if mode&bit == 0 {
			return
		}
		if b[pos] == 'x' {
			b[pos] = set
		} else {
			b[pos] = unset
		}
	}
	special(3, 0o4000, 's', 'S')
	special(6, 0o2000, 's', 'S')
	special(9, 0o1000, 't', 'T')
	return string(b)
}
