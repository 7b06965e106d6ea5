package layer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
)

// A layer's index is built without its tree in memory, in two sorts:
//
//  1. Every tar entry is a record keyed by its path, component by
//     component, then by its place in the tar (its seq). Read back in that
//     order, a path's entries come together and before everything beneath
//     it, so one pass with a stack of the current path's ancestors applies
//     the tar-order rules (last entry wins, a directory replaced, entries
//     beneath a non-directory, opaque markers, implied directories): an
//     entry's fate depends only on the entries of its own path and of its
//     ancestors, which the stack holds.
//  2. The entries that remain are keyed by depth, then path: the index's
//     breadth-first order, each directory's children together and sorted.
//     The index is written from that order, numbering records as they go.
//
// Each sort holds at most runBytes in memory and spills sorted runs to the
// extraction's directory under tmp/. What stays in memory besides is one
// path's entries and its ancestors' (a stack as deep as the path) and the
// hardlinks of the layer.

// rec is one entry as the sorts carry it.
type rec struct {
	seq     uint64 // place in the tar, from 1; 0 for an implied directory
	tarName string
	e       index.Entry
}

func (r *rec) encode(b []byte) []byte {
	e := &r.e
	b = binary.AppendUvarint(b, r.seq)
	b = appendString(b, r.tarName)
	b = appendString(b, e.Name)
	b = append(b, byte(e.Type), e.Flags)
	for _, v := range []uint64{uint64(e.Mode), uint64(e.UID), uint64(e.GID), uint64(e.Size), uint64(e.MtimeNs), uint64(e.Major), uint64(e.Minor), uint64(e.ChildCount), uint64(e.Nlink)} {
		b = binary.AppendUvarint(b, v)
	}
	b = binary.AppendVarint(b, e.Mtime)
	b = appendString(b, e.Link)
	b = appendString(b, string(e.Object))
	b = binary.AppendUvarint(b, uint64(len(e.Xattrs)))
	for _, x := range e.Xattrs {
		b = appendString(b, x.Name)
		b = appendString(b, x.Value)
	}
	return b
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// recDecoder reads what encode wrote; the bytes come from this process's
// own spill files, so a short read is a damaged tmp/, not bad input.
type recDecoder struct {
	b   []byte
	err error
}

func (d *recDecoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errSpill
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recDecoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errSpill
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

var errSpill = errors.New("damaged spill file")

func (d *recDecoder) skipString() {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errSpill
		return
	}
	d.b = d.b[n:]
}

// dirChildren reads, without decoding the rest, whether an encoded record
// is a directory and how many children it has.
func dirChildren(b []byte) (bool, uint32, error) {
	d := &recDecoder{b: b}
	d.uvarint()
	d.skipString()
	d.skipString()
	if d.err != nil || len(d.b) < 2 {
		return false, 0, errSpill
	}
	isDir := index.Type(d.b[0]) == index.TypeDir
	d.b = d.b[2:]
	for range 7 {
		d.uvarint()
	}
	n := uint32(d.uvarint())
	return isDir, n, d.err
}

func decodeRec(b []byte) (rec, error) {
	d := &recDecoder{b: b}
	var r rec
	e := &r.e
	r.seq = d.uvarint()
	r.tarName = d.string()
	e.Name = d.string()
	if len(d.b) < 2 {
		return r, errSpill
	}
	e.Type, e.Flags = index.Type(d.b[0]), d.b[1]
	d.b = d.b[2:]
	e.Mode, e.UID, e.GID = uint32(d.uvarint()), uint32(d.uvarint()), uint32(d.uvarint())
	e.Size = int64(d.uvarint())
	e.MtimeNs, e.Major, e.Minor = uint32(d.uvarint()), uint32(d.uvarint()), uint32(d.uvarint())
	e.ChildCount, e.Nlink = uint32(d.uvarint()), uint32(d.uvarint())
	v, n := binary.Varint(d.b)
	if n <= 0 {
		return r, errSpill
	}
	e.Mtime, d.b = v, d.b[n:]
	e.Link = d.string()
	e.Object = digest.Digest(d.string())
	for i := d.uvarint(); i > 0 && d.err == nil; i-- {
		e.Xattrs = append(e.Xattrs, index.Xattr{Name: d.string(), Value: d.string()})
	}
	return r, d.err
}

// pathKey encodes p so that byte order is component order: each component
// ends in a NUL, which no name holds and which sorts before every byte
// a name can hold.
func pathKey(b []byte, p string) []byte {
	if p == "" {
		return b
	}
	for _, c := range strings.Split(p, "/") {
		b = append(append(b, c...), 0)
	}
	return b
}

// entryKey orders entries by path, then tar order.
func entryKey(b []byte, p string, seq uint64) []byte {
	b = append(pathKey(b, p), 0)
	return binary.BigEndian.AppendUint64(b, seq)
}

// link is one hardlink entry of the layer and what it resolves to.
type link struct {
	name   string // clean path of the link, for errors
	target string // clean path it names
	kind   linkKind
	to     uint64 // the seq of the link or file it resolves to
	err    error
	lower  string // for a link to a lower layer: the path there
}

type linkKind uint8

const (
	// linkLower: the target is not in this layer at the link's time nor at
	// the end; the link shows the view beneath at lower.
	linkLower linkKind = iota
	linkToLink
	linkToFile
	linkVisiting
)

// frame is one path on the stack of the first pass: the path of the
// current group of entries and each of its ancestors.
type frame struct {
	name  string
	path  string
	key   []byte // pathKey of path
	depth int
	// The valid entries of the path in tar order; the non-directories
	// among them again, with their tar names, for the questions "what was
	// the path at time t" and "when did it next stop being a directory".
	seqs       []uint64
	types      []index.Type
	nondir     []uint64
	nondirName []string
	// versions keeps every valid entry of a path some hardlink names.
	versions map[uint64]index.Entry
	target   bool
	// cutoff: entries before it were dropped with an ancestor that a
	// non-directory replaced later. alive: every ancestor ends a directory.
	cutoff   uint64
	alive    bool
	cand     *rec // the last valid entry at or after cutoff: the winner
	children uint32
	opaque   bool
}

func (f *frame) container() bool { return f.cand == nil || f.cand.e.Type == index.TypeDir }

// childCutoff is where the directory this path ends as began.
func (f *frame) childCutoff() uint64 {
	if n := len(f.nondir); n > 0 && f.nondir[n-1] > f.cutoff {
		return f.nondir[n-1]
	}
	return f.cutoff
}

// builder is the first pass.
type builder struct {
	x      *Extraction
	stack  []*frame
	err    error
	errSeq uint64
}

func (b *builder) fail(seq uint64, err error) {
	if b.err == nil || seq < b.errSeq {
		b.err, b.errSeq = err, seq
	}
}

// state tells what the ancestors in stack were at time t: the index of
// the first one (from the root) that was not a directory then, with its
// type, or -1 and the seq where the directories they were at t began (a
// path's entries before it went with an ancestor a non-directory replaced).
func state(stack []*frame, t uint64) (blocker int, typ index.Type, since uint64) {
	for i, f := range stack {
		j := sort.Search(len(f.seqs), func(k int) bool { return f.seqs[k] >= t }) - 1
		if j < 0 || f.seqs[j] < since {
			continue // implied at time t
		}
		if f.types[j] != index.TypeDir {
			return i, f.types[j], 0
		}
		if k := sort.Search(len(f.nondir), func(k int) bool { return f.nondir[k] >= t }) - 1; k >= 0 && f.nondir[k] > since {
			since = f.nondir[k]
		}
	}
	return -1, 0, since
}

// nextNondir is the seq of the first non-directory entry of f after t.
func (f *frame) nextNondir(t uint64) (uint64, int) {
	k := sort.Search(len(f.nondir), func(k int) bool { return f.nondir[k] > t })
	if k == len(f.nondir) {
		return math.MaxUint64, -1
	}
	return f.nondir[k], k
}

func (b *builder) push(name string) *frame {
	parent := b.stack[len(b.stack)-1]
	f := &frame{name: name, depth: parent.depth + 1}
	f.path = name
	if parent.path != "" {
		f.path = parent.path + "/" + name
	}
	f.key = append(append(slices.Clip(parent.key), name...), 0)
	f.alive = parent.alive && parent.container()
	f.cutoff = parent.childCutoff()
	f.target = len(b.x.targets[f.path]) > 0
	b.stack = append(b.stack, f)
	return f
}

// enter makes the stack the ancestors of the path whose key is pk, then
// that path.
func (b *builder) enter(pk []byte) (*frame, error) {
	comps := strings.Split(string(pk), "\x00")
	comps = comps[:len(comps)-1]
	d := 0
	for d < len(comps) && d+1 < len(b.stack) && b.stack[d+1].name == comps[d] {
		d++
	}
	for len(b.stack) > d+1 {
		if err := b.pop(); err != nil {
			return nil, err
		}
	}
	for _, c := range comps[d:] {
		b.push(c)
	}
	return b.stack[len(b.stack)-1], nil
}

// entry applies one tar entry of path f, whose ancestors are on the stack.
func (b *builder) entry(f *frame, r *rec) {
	t := r.seq
	ancestors := b.stack[:len(b.stack)-1]
	if len(ancestors) > 0 {
		if i, typ, _ := state(ancestors, t); i >= 0 {
			if whiteout.IsMarker(f.name) {
				// umoci writes, for a directory that became a file,
				// markers for the old children beneath the new file. The
				// file hides all of that path already: they say nothing.
				return
			}
			b.fail(t, &EntryError{Entry: r.tarName, Err: fmt.Errorf("%w: parent %q is a %s in this layer", errNotDir, b.stack[i].name, typ)})
			return
		}
	}
	f.seqs = append(f.seqs, t)
	f.types = append(f.types, r.e.Type)
	if r.e.Type != index.TypeDir {
		f.nondir = append(f.nondir, t)
		f.nondirName = append(f.nondirName, r.tarName)
	}
	if f.target {
		if f.versions == nil {
			f.versions = map[uint64]index.Entry{}
		}
		f.versions[t] = r.e
	}
	if t >= f.cutoff {
		c := *r
		f.cand = &c
	}
	if f.name == whiteout.Opaque && len(ancestors) > 0 {
		if p := ancestors[len(ancestors)-1]; t >= p.childCutoff() {
			p.opaque = true
		}
	}
}

// endGroup checks, once every entry of f is known, that no ancestor was
// replaced by a non-directory while an entry of f that is not a marker
// stood beneath it.
func (b *builder) endGroup(f *frame) {
	if whiteout.IsMarker(f.name) {
		return
	}
	n := len(b.stack) - 1
	lowest := 0 // ancestors above a marker component lose only markers
	for i := n; i >= 1; i-- {
		if whiteout.IsMarker(b.stack[i].name) {
			lowest = i
			break
		}
	}
	for i, t := range f.seqs {
		if f.types[i] == index.TypeDir {
			continue
		}
		end := uint64(math.MaxUint64)
		if i+1 < len(f.seqs) {
			end = f.seqs[i+1]
		}
		first, at, k := end, -1, -1
		for a := 0; a < n; a++ {
			if s, j := b.stack[a].nextNondir(t); s < first {
				first, at, k = s, a, j
			}
		}
		if at >= lowest && at >= 0 {
			b.fail(first, &EntryError{Entry: b.stack[at].nondirName[k], Err: errors.New("replaces a directory that holds entries of this layer")})
		}
	}
}

// pop ends the path on top of the stack: its hardlinks are resolved and
// its winning entry, or the implied directory it is, goes to the second
// sort.
func (b *builder) pop() error {
	f := b.stack[len(b.stack)-1]
	b.stack = b.stack[:len(b.stack)-1]
	if f.target {
		for _, seq := range b.x.targets[f.path] {
			b.resolve(f, seq)
		}
	}
	if !f.alive {
		return nil
	}
	var out rec
	switch {
	case f.cand != nil:
		out = *f.cand
		if out.e.Type == index.TypeDir {
			out.e.ChildCount = f.children
		}
	case f.children > 0 || f.depth == 0:
		out.e = index.Entry{Name: f.name, Type: index.TypeDir, Flags: index.FlagImplied, Mode: 0o755, ChildCount: f.children}
	default:
		return nil
	}
	if f.opaque {
		out.e.Flags |= index.FlagOpaque
	}
	if len(b.stack) > 0 {
		b.stack[len(b.stack)-1].children++
	}
	return b.x.addResult(f.depth, f.key, &out)
}

// resolve finds what the hardlink at seq, naming path f, names: the entry
// f had when the link was written, as tar extracting in order links to the
// inode then at that name; or, when f had none then, f's last entry.
func (b *builder) resolve(f *frame, seq uint64) {
	l := b.x.links[seq]
	var e index.Entry
	var at uint64
	found := false
	if i, _, since := state(b.stack, seq); i < 0 {
		if j := sort.Search(len(f.seqs), func(k int) bool { return f.seqs[k] >= seq }) - 1; j >= 0 && f.seqs[j] >= since {
			at, e, found = f.seqs[j], f.versions[f.seqs[j]], true
		}
	}
	if !found && f.alive {
		switch {
		case f.cand != nil:
			at, e, found = f.cand.seq, f.cand.e, true
		case f.children > 0:
			e.Type, found = index.TypeDir, true
		}
	}
	switch {
	case !found:
		l.kind, l.lower = linkLower, l.target
	case e.Type == index.TypeDir:
		l.err = fmt.Errorf("hardlink to directory %q", l.target)
	case e.Type == index.TypeLowerLink:
		l.kind, l.to = linkToLink, at
	default:
		l.kind, l.to = linkToFile, at
		b.x.files[at] = e
	}
}

// build is the first pass over the entries in path order.
func (x *Extraction) build() error {
	c, err := x.entries.read()
	if err != nil {
		return err
	}
	defer c.close()
	b := &builder{x: x, stack: []*frame{{alive: true, target: len(x.targets[""]) > 0}}}
	var cur *frame
	var curKey []byte
	for {
		key, body, ok, err := c.next()
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		pk := key[:len(key)-9]
		if cur == nil || !bytes.Equal(pk, curKey) {
			if cur != nil {
				b.endGroup(cur)
			}
			if cur, err = b.enter(pk); err != nil {
				return err
			}
			curKey = append(curKey[:0], pk...)
		}
		r, err := decodeRec(body)
		if err != nil {
			return err
		}
		b.entry(cur, &r)
	}
	if cur != nil {
		b.endGroup(cur)
	}
	for len(b.stack) > 0 {
		if err := b.pop(); err != nil {
			return err
		}
	}
	if b.err != nil {
		return b.err
	}
	return x.followLinks()
}

func (x *Extraction) addResult(depth int, key []byte, r *rec) error {
	r.tarName = "" // only errors use it, and they are all known by now
	x.keyBuf = binary.BigEndian.AppendUint16(x.keyBuf[:0], uint16(depth))
	x.keyBuf = append(x.keyBuf, key...)
	x.recBuf = r.encode(x.recBuf[:0])
	return x.results.add(x.keyBuf, x.recBuf)
}

// followLinks makes every hardlink name the file at the end of its chain,
// each link visited a bounded number of times (path compression), and
// refuses cycles and links to directories, first in tar order.
func (x *Extraction) followLinks() error {
	seqs := make([]uint64, 0, len(x.links))
	for s := range x.links {
		seqs = append(seqs, s)
	}
	slices.Sort(seqs)
	var chain []*link
	for _, s := range seqs {
		l := x.links[s]
		chain = chain[:0]
		end := l
		for end.err == nil && (end.kind == linkToLink || end.kind == linkVisiting) {
			if end.kind == linkVisiting {
				end.err = fmt.Errorf("hardlink cycle through %q", end.target)
				break
			}
			end.kind = linkVisiting
			chain = append(chain, end)
			end = x.links[end.to]
		}
		if end.kind == linkLower && end.lower == "" {
			end.lower = end.target
		}
		for _, c := range chain {
			c.kind, c.to, c.lower, c.err = end.kind, end.to, end.lower, end.err
		}
		if l.err != nil {
			return &EntryError{Entry: l.name, Err: l.err}
		}
	}
	return nil
}

// inodeGroup is one file with several names in the layer.
type inodeGroup struct {
	names    uint32
	own, min uint32
	hasOwn   bool
	hasMin   bool
}

func (g *inodeGroup) inode() uint32 {
	if g.hasOwn {
		return g.own
	}
	return g.min
}

// resolved is the record a result becomes in the index: a hardlink takes
// the attributes of the file it names.
func (x *Extraction) resolved(r *rec) (*link, index.Entry) {
	if r.e.Type != index.TypeLowerLink {
		return nil, r.e
	}
	l := x.links[r.seq]
	if l.kind != linkToFile {
		e := r.e
		e.Link = l.lower
		return l, e
	}
	e := x.files[l.to]
	e.Name = r.e.Name
	return l, e
}

// WriteIndex writes the index from the second sort: one pass to count
// records, string bytes and the names of each hardlinked file, one to
// write, with a second cursor a step behind that tells each record's
// parent.
func (x *Extraction) WriteIndex(out io.Writer, info index.Info) error {
	open, err := x.results.replayable()
	if err != nil {
		return err
	}
	groups := map[uint64]*inodeGroup{}
	group := func(seq uint64) *inodeGroup {
		g := groups[seq]
		if g == nil {
			g = &inodeGroup{}
			groups[seq] = g
		}
		return g
	}
	var count uint32
	var strLen int64
	err = eachResult(open, func(r *rec) error {
		l, e := x.resolved(r)
		switch {
		case l != nil && l.kind == linkToFile:
			g := group(l.to)
			g.names++
			if !g.hasMin {
				g.min, g.hasMin = count, true
			}
		case r.e.Type != index.TypeLowerLink && x.files[r.seq].Type != 0:
			g := group(r.seq)
			g.names++
			g.own, g.hasOwn = count, true
		}
		strLen += index.StringBytes(e)
		if len(e.Xattrs) > 0 {
			info.XattrEntries++
		}
		count++
		return nil
	})
	if err != nil {
		return err
	}
	var spool io.ReadWriter = &bytes.Buffer{}
	if strLen > int64(runBytes) {
		f, err := os.Create(filepath.Join(x.dir, "strings"))
		if err != nil {
			return fmt.Errorf("index strings: %w", err)
		}
		defer f.Close()
		spool = &bufferedFile{f: f, w: bufio.NewWriterSize(f, 1<<18)}
	}
	bw := bufio.NewWriterSize(out, 1<<18)
	w, err := index.NewWriter(bw, spool, int(count), strLen, info)
	if err != nil {
		return err
	}
	parents, err := open()
	if err != nil {
		return err
	}
	defer parents.close()
	var n, nextChild, parent, left uint32 = 0, 1, 0, 0
	parentAt := -1
	err = eachResult(open, func(r *rec) error {
		l, e := x.resolved(r)
		switch {
		case l != nil && l.kind == linkToFile:
			g := groups[l.to]
			e.Nlink, e.Inode = g.names, g.inode()
		case r.e.Type != index.TypeLowerLink && groups[r.seq] != nil:
			g := groups[r.seq]
			e.Nlink, e.Inode = g.names, g.inode()
		default:
			e.Inode = n
		}
		if e.Type == index.TypeDir {
			e.ChildStart = nextChild
			nextChild += e.ChildCount
		}
		if n > 0 {
			for left == 0 {
				_, body, ok, err := parents.next()
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("%w: record %d has no parent", errSpill, n)
				}
				parentAt++
				isDir, children, err := dirChildren(body)
				if err != nil {
					return err
				}
				if isDir {
					parent, left = uint32(parentAt), children
				}
			}
			e.Parent = parent
			left--
		}
		n++
		return w.Add(e)
	})
	if err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

func eachResult(open func() (cursor, error), fn func(*rec) error) error {
	c, err := open()
	if err != nil {
		return err
	}
	defer c.close()
	for {
		_, body, ok, err := c.next()
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		r, err := decodeRec(body)
		if err != nil {
			return err
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
}

// bufferedFile is a spool file written through a buffer and read back.
type bufferedFile struct {
	f *os.File
	w *bufio.Writer
}

func (b *bufferedFile) Write(p []byte) (int, error) { return b.w.Write(p) }
func (b *bufferedFile) Read(p []byte) (int, error)  { return b.f.Read(p) }
func (b *bufferedFile) Seek(off int64, whence int) (int64, error) {
	if err := b.w.Flush(); err != nil {
		return 0, err
	}
	return b.f.Seek(off, whence)
}
