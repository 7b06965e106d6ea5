package erofs

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"path"
	"slices"
	"strings"

	"github.com/layerfs/layerfs/view"
)

// The metadata-only writer is our own. go-erofs keeps a tree node and an
// xattr map per entry and builds its metadata area in a buffer that
// doubles, which for a view of a million entries costs more time than the
// whole build may (docs/erofs.md). An image without file contents needs
// little of what go-erofs does, so this writer lays it out in one walk of
// the source and writes each inode as soon as it is complete.
//
// Layout: block 0 with the superblock and then the root's inode (it comes
// first because the superblock holds the root's nid in 16 bits), every
// other inode in post-order (a directory right after everything under
// it, so its entries' nids are known when it is written), each directory
// or symlink's last partial block inline after its inode where it fits in
// that block; then, from the next block on, the directory and symlink
// blocks that are not inline.

const imageBlockSize = 1 << imageBlockBits
const imageBlockBits = 12

// xattrIndexes are the EROFS xattr name indexes: an xattr is stored as the
// index of its namespace and the rest of its name. The POSIX ACLs are
// whole names.
var xattrIndexes = []struct {
	prefix string
	index  uint8
}{
	{"user.", 1},
	{"system.posix_acl_access", 2},
	{"system.posix_acl_default", 3},
	{"trusted.", 4},
	{"security.", 6},
}

// area is the directory and symlink blocks while the image is written,
// grown in fixed chunks: growing never copies or zeroes again what is
// written, and a field written earlier can be changed in place.
type area struct {
	chunks [][]byte
	size   int64
}

const areaChunk = 4 << 20

func (a *area) write(p []byte) {
	for len(p) > 0 {
		off := int(a.size % areaChunk)
		if off == 0 {
			a.chunks = append(a.chunks, make([]byte, areaChunk))
		}
		n := copy(a.chunks[len(a.chunks)-1][off:], p)
		p = p[n:]
		a.size += int64(n)
	}
}

var zeros [imageBlockSize]byte

// padding is how many zeros make size a multiple of align (at most a
// block).
func padding(size, align int64) []byte {
	if r := size % align; r != 0 {
		return zeros[:align-r]
	}
	return nil
}

func (a *area) pad(align int64) { a.write(padding(a.size, align)) }

// field is the n bytes at off. Every field changed after it is written
// lies within one block (a directory entry's nid), and a chunk is whole
// blocks.
func (a *area) field(off int64, n int) []byte {
	return a.chunks[off/areaChunk][off%areaChunk:][:n]
}

// stream is the inodes' area, the image's start, written out while it
// grows: the bytes from flushed on are in buf, those before handed to a
// goroutine that writes them while the walk goes on. Holding the whole
// area in memory instead cost a million-entry image a quarter of its
// build in page faults alone, and the write another quarter on the
// walk's core. A field changed after its bytes were handed over (the
// superblock, the root's inode, a directory's "..", an i_u) is written
// in place at the end: a few small writes per directory.
type stream struct {
	out     io.WriterAt
	buf     []byte
	flushed int64
	patches []patch
	full    chan []byte // to the writer
	free    chan []byte // back from it
	done    chan error
	closed  bool
}

type patch struct {
	off  int64
	data []byte
}

// streamChunk is whole blocks, so no field straddles what is handed over
// and what is not.
const streamChunk = 4 << 20

func newStream(out io.WriterAt) *stream {
	s := &stream{out: out, buf: make([]byte, 0, streamChunk), full: make(chan []byte, 1), free: make(chan []byte, 2), done: make(chan error, 1)}
	s.free <- make([]byte, 0, streamChunk)
	go func() {
		var err error
		var off int64
		for b := range s.full {
			if err == nil {
				_, err = out.WriteAt(b, off)
			}
			off += int64(len(b))
			s.free <- b[:0]
		}
		s.done <- err
	}()
	return s
}

func (s *stream) size() int64 { return s.flushed + int64(len(s.buf)) }

func (s *stream) write(p []byte) {
	for len(p) > 0 {
		n := min(len(p), cap(s.buf)-len(s.buf))
		s.buf = append(s.buf, p[:n]...)
		p = p[n:]
		if len(s.buf) == cap(s.buf) {
			s.full <- s.buf
			s.flushed += int64(len(s.buf))
			s.buf = <-s.free
		}
	}
}

func (s *stream) pad(align int64) { s.write(padding(s.size(), align)) }

// put writes data over the bytes at off, which are written already.
func (s *stream) put(off int64, data []byte) {
	if off >= s.flushed {
		copy(s.buf[off-s.flushed:], data)
		return
	}
	s.patches = append(s.patches, patch{off, slices.Clone(data)})
}

// finish writes out the rest and the patches; stop after it is a no-op.
func (s *stream) finish() error {
	s.full <- s.buf
	s.flushed += int64(len(s.buf))
	s.buf = nil
	s.closed = true
	close(s.full)
	err := <-s.done
	for _, p := range s.patches {
		if err != nil {
			break
		}
		_, err = s.out.WriteAt(p.data, p.off)
	}
	return err
}

// stop ends the writer of a build that failed.
func (s *stream) stop() {
	if !s.closed {
		s.closed = true
		close(s.full)
		<-s.done
	}
}

// place is a position in the image being written: in the inodes' area,
// or in the blocks after it, whose start is known only at the end.
type place struct {
	inBlocks bool
	off      int64
}

type metaWriter struct {
	src    readLinkFS
	inodes *stream // block 0 and every inode
	blocks area    // directory and symlink blocks that are not inline
	count  uint64
	// links maps a hardlinked file's Ino to the nid of its inode.
	links map[uint64]uint64
	// blockRefs are the inodes whose i_u is a block of blocks, made an
	// address once the inodes' area has its size.
	blockRefs []blockRef
	buildTime uint64
	redirect  func(a *view.Attr) string
	chunked   bool
	record    []byte
	// inlined are the files whose contents go into the image, written
	// once the inodes are out.
	inlined []inlineContent
}

// inlineContent is a file of path p whose contents go at off.
type inlineContent struct {
	p    string
	info fs.FileInfo
	off  int64
}

// A small file's contents go into the image, right after its inode, as
// composefs and mkfs.erofs keep them: a cold read of it then costs no
// lookup in the data-only layer and no disk read of its own, and a file
// opened costs overlayfs no second file. At most inlineFiles of them, the
// first in walk order, so that the image of a view of a million small
// files still reads a bounded number of objects while it builds.
const (
	inlineMaxSize = 768
	inlineFiles   = 1 << 14
)

// blockRef is an inode at off whose data starts at block of blocks.
type blockRef struct {
	off   int64
	block uint32
}

func buildMeta(out MetaOutput, src readLinkFS, opts Options) (Result, error) {
	w := &metaWriter{src: src, inodes: newStream(out), links: map[uint64]uint64{}, buildTime: opts.BuildTime, redirect: opts.Redirect}
	defer w.inodes.stop()
	info, err := fs.Stat(src, ".")
	if err != nil {
		return Result{}, fmt.Errorf("erofs: stat the root: %w", err)
	}
	root, err := w.inode(".", info)
	if err != nil {
		return Result{}, err
	}
	// The root's inode is reserved, whole blocks of entries only, so that
	// its size is known before its entries are.
	w.inodes.write(zeros[:superblockOff+superblockSize])
	const rootNid = (superblockOff + superblockSize) / inodeSlotSize
	root.extended = true
	w.inodes.write(make([]byte, root.headerSize()))
	if _, _, err := w.directory(".", root, rootNid); err != nil {
		return Result{}, err
	}

	w.inodes.pad(imageBlockSize)
	firstBlock := uint32(w.inodes.size() / imageBlockSize)
	for _, r := range w.blockRefs {
		w.inodes.put(r.off+inodeDataOff, binary.LittleEndian.AppendUint32(nil, r.block+firstBlock))
	}
	size := w.inodes.size() + w.blocks.size
	if size/imageBlockSize > 1<<32-1 {
		return Result{}, fmt.Errorf("erofs: an image of %d bytes, more than EROFS addresses", size)
	}
	w.superblock(rootNid, uint32(size/imageBlockSize), uuidFrom(opts.Seed))
	left := w.blocks.size
	for _, c := range w.blocks.chunks {
		n := min(left, int64(len(c)))
		w.inodes.write(c[:n])
		left -= n
	}
	if err := w.inodes.finish(); err != nil {
		return Result{}, fmt.Errorf("erofs: write image: %w", err)
	}
	if err := w.writeInlined(out); err != nil {
		return Result{}, err
	}
	return finished(out, size, opts.Digest)
}

func (w *metaWriter) superblock(rootNid uint16, blocks uint32, uuid [16]byte) {
	sb := make([]byte, superblockSize)
	binary.LittleEndian.PutUint32(sb, erofsMagic)
	sb[sbBlkSizeBitsOff] = imageBlockBits
	binary.LittleEndian.PutUint16(sb[sbRootNidOff:], rootNid)
	binary.LittleEndian.PutUint64(sb[sbInosOff:], w.count)
	binary.LittleEndian.PutUint64(sb[sbBuildTimeOff:], w.buildTime)
	binary.LittleEndian.PutUint32(sb[sbBlocksOff:], blocks)
	copy(sb[sbUUIDOff:], uuid[:])
	if w.chunked {
		binary.LittleEndian.PutUint32(sb[sbIncompatOff:], featureChunkedFile)
	}
	w.inodes.put(superblockOff, sb)
}

// dirent is one name of a directory.
type dirent struct {
	name  string
	nid   uint64
	ftype uint8
}

// directory writes everything under dir, then dir's inode (in the slot
// reserved at nid reserved, if not 0), and returns its nid and where its
// ".." entry's nid lies, for its parent to fill in.
func (w *metaWriter) directory(dir string, ino *inode, reserved uint64) (uint64, place, error) {
	list, err := fs.ReadDir(w.src, dir)
	if err != nil {
		return 0, place{}, fmt.Errorf("erofs: list %s: %w", dir, err)
	}
	entries := make([]dirent, 0, len(list)+2)
	entries = append(entries, dirent{name: ".", ftype: fileTypeDir}, dirent{name: "..", ftype: fileTypeDir})
	var parentOf []place // the ".." entries of its subdirectories
	ino.nlink = 2
	for _, e := range list {
		p := path.Join(dir, e.Name())
		if len(e.Name()) > maxNameLen {
			return 0, place{}, fmt.Errorf("erofs: %s: a name of %d bytes, more than %d", p, len(e.Name()), maxNameLen)
		}
		info, err := e.Info()
		if err != nil {
			return 0, place{}, fmt.Errorf("erofs: stat %s: %w", p, err)
		}
		child, err := w.inode(p, info)
		if err != nil {
			return 0, place{}, err
		}
		var nid uint64
		if info.IsDir() {
			var dotdot place
			nid, dotdot, err = w.directory(p, child, 0)
			parentOf = append(parentOf, dotdot)
			ino.nlink++
		} else {
			nid, err = w.leaf(p, info, child)
		}
		if err != nil {
			return 0, place{}, err
		}
		entries = append(entries, dirent{name: e.Name(), nid: nid, ftype: child.fileType()})
	}
	slices.SortFunc(entries, func(a, b dirent) int { return strings.Compare(a.name, b.name) })

	blocks := packDirents(entries)
	last := blocks[len(blocks)-1]
	ino.size = uint64(len(blocks)-1)*imageBlockSize + uint64(last.used)
	var nid uint64
	var inline bool
	if reserved != 0 {
		nid = reserved
	} else {
		nid, inline = w.slot(ino, last.used)
	}
	full := blocks
	if inline {
		full = blocks[:len(blocks)-1]
		ino.layout = layoutFlatInline
	}
	dotdot := place{}
	var tail []byte
	first := w.blocks.size
	for i, b := range blocks {
		data := b.encode(entries, nid)
		at := place{inBlocks: true, off: first + int64(i)*imageBlockSize}
		if inline && i == len(blocks)-1 {
			tail = data[:b.used]
			at = place{off: int64(nid)*inodeSlotSize + int64(ino.headerSize())}
		} else {
			w.blocks.write(data)
		}
		if b.dotdot >= 0 {
			dotdot = place{inBlocks: at.inBlocks, off: at.off + int64(b.dotdot)}
		}
	}
	if len(full) > 0 {
		ino.data = uint32(first / imageBlockSize)
		w.blockRefs = append(w.blockRefs, blockRef{int64(nid) * inodeSlotSize, ino.data})
	}
	w.writeInode(nid, ino, tail)
	for _, p := range parentOf {
		w.setNid(p, nid)
	}
	if reserved != 0 {
		w.setNid(dotdot, nid)
	}
	return nid, dotdot, nil
}

// setNid fills in the nid of a directory entry written before it was known.
func (w *metaWriter) setNid(p place, nid uint64) {
	if p.inBlocks {
		binary.LittleEndian.PutUint64(w.blocks.field(p.off, 8), nid)
		return
	}
	w.inodes.put(p.off, binary.LittleEndian.AppendUint64(nil, nid))
}

// direntBlock is the entries [start, end) of a directory that one block
// holds, used bytes of it, and where in it the ".." entry's nid lies (-1
// when elsewhere).
type direntBlock struct {
	start, end int
	used       int
	dotdot     int
}

// packDirents splits a directory's sorted entries into blocks, each as
// many as fit: their 12-byte heads, then their names.
func packDirents(entries []dirent) []direntBlock {
	var blocks []direntBlock
	b := direntBlock{dotdot: -1}
	for i, e := range entries {
		need := direntSize + len(e.name)
		if b.used+need > imageBlockSize {
			blocks = append(blocks, b)
			b = direntBlock{start: i, dotdot: -1}
		}
		if e.name == ".." {
			b.dotdot = (i - b.start) * direntSize
		}
		b.used += need
		b.end = i + 1
	}
	return append(blocks, b)
}

// encode gives the block's bytes; self is the directory's own nid, for ".".
func (b direntBlock) encode(entries []dirent, self uint64) []byte {
	data := make([]byte, imageBlockSize)
	nameOff := (b.end - b.start) * direntSize
	for i, e := range entries[b.start:b.end] {
		d := data[i*direntSize:]
		nid := e.nid
		if e.name == "." {
			nid = self
		}
		binary.LittleEndian.PutUint64(d, nid)
		binary.LittleEndian.PutUint16(d[8:], uint16(nameOff))
		d[10] = e.ftype
		nameOff += copy(data[nameOff:], e.name)
	}
	return data
}

// leaf writes a file, symlink, device, FIFO or socket and returns its nid.
func (w *metaWriter) leaf(p string, info fs.FileInfo, ino *inode) (uint64, error) {
	hardlinked := ino.links > 1 && ino.ino != 0
	if hardlinked {
		if nid, ok := w.links[ino.ino]; ok {
			return nid, nil
		}
	}
	var tail []byte
	switch {
	case ino.mode&fs.ModeSymlink != 0:
		target := ino.link
		if target == "" {
			var err error
			if target, err = w.src.ReadLink(p); err != nil {
				return 0, fmt.Errorf("erofs: read symlink %s: %w", p, err)
			}
		}
		if len(target) >= imageBlockSize {
			return 0, fmt.Errorf("erofs: %s: a symlink target of %d bytes, more than %d", p, len(target), imageBlockSize-1)
		}
		tail = []byte(target)
		ino.size = uint64(len(target))
	case ino.inline:
		tail = make([]byte, ino.size) // its contents come once the inodes are out
		ino.layout = layoutFlatInline
	case ino.mode.IsRegular() && ino.size > 0:
		// No data: one chunk the size of the file, a hole, so the inode
		// has its size and overlayfs reads the bytes from the redirect.
		blocks := (ino.size + imageBlockSize - 1) / imageBlockSize
		chunkBits := min(bits.Len64(blocks-1), maxChunkBits)
		ino.layout = layoutChunkBased
		ino.data = uint32(chunkBits)
		chunks := (blocks + 1<<chunkBits - 1) >> chunkBits
		tail = make([]byte, 4*chunks)
		for i := range chunks {
			binary.LittleEndian.PutUint32(tail[4*i:], nullBlock)
		}
		w.chunked = true
	}
	nid, inline := w.slot(ino, len(tail))
	if ino.inline && !inline {
		w.inodes.pad(imageBlockSize)
		nid, _ = w.slot(ino, len(tail))
	}
	if ino.inline {
		w.inlined = append(w.inlined, inlineContent{p: p, info: info, off: int64(nid)*inodeSlotSize + int64(ino.headerSize())})
	}
	if ino.mode&fs.ModeSymlink != 0 {
		if inline {
			ino.layout = layoutFlatInline
		} else {
			ino.data = uint32(w.blocks.size / imageBlockSize)
			w.blockRefs = append(w.blockRefs, blockRef{int64(nid) * inodeSlotSize, ino.data})
			w.blocks.write(tail)
			w.blocks.pad(imageBlockSize)
			tail = nil
		}
	}
	w.writeInode(nid, ino, tail)
	if hardlinked {
		w.links[ino.ino] = nid
	}
	return nid, nil
}

// slot aligns the inodes' area for ino, followed by tail bytes of inline
// data, and returns its nid and whether the tail fits inline: the kernel
// reads inline data only from within the block where the inode's header
// ends.
func (w *metaWriter) slot(ino *inode, tail int) (uint64, bool) {
	ino.extended = !ino.fitsCompact(w.buildTime)
	w.inodes.pad(inodeSlotSize)
	if ino.extended && w.inodes.size()%imageBlockSize > imageBlockSize-extendedInode {
		w.inodes.pad(imageBlockSize)
	}
	off := w.inodes.size()
	end := off + int64(ino.headerSize())
	inline := tail < imageBlockSize && end%imageBlockSize+int64(tail) <= imageBlockSize
	return uint64(off / inodeSlotSize), inline
}

// writeInode writes ino at nid, which is the end of the inodes' area or
// the root's reserved slot, with tail right after its xattrs.
func (w *metaWriter) writeInode(nid uint64, ino *inode, tail []byte) {
	w.count++
	rec := ino.encode(w.record[:0], uint32(w.count))
	rec = append(rec, tail...)
	w.record = rec
	off := int64(nid) * inodeSlotSize
	if off == w.inodes.size() {
		w.inodes.write(rec)
		return
	}
	w.inodes.put(off, rec)
}

// inode is what an entry's inode holds, from its source FileInfo.
type inode struct {
	mode     fs.FileMode
	uid, gid uint32
	mtime    uint64
	mtimeNs  uint32
	nlink    uint32
	size     uint64
	ino      uint64 // the source's identity: equal for hardlinks
	links    uint32 // the source's link count
	link     string
	xattrs   []xattr
	layout   uint8
	data     uint32 // i_u
	extended bool
	inline   bool // a regular file whose contents the image holds
}

type xattr struct {
	index       uint8
	name, value string
}

// inode reads p's attributes; in the image its own overlay xattrs are
// escaped and a file with content gets its metacopy and redirect.
func (w *metaWriter) inode(p string, info fs.FileInfo) (*inode, error) {
	a, err := attrOf(p, info)
	if err != nil {
		return nil, fmt.Errorf("erofs: %w", err)
	}
	ino := &inode{
		mode: info.Mode(), uid: a.UID, gid: a.GID, mtime: uint64(a.Mtime), mtimeNs: a.MtimeNs,
		nlink: max(a.Nlink, 1), ino: a.Ino, links: a.Nlink, link: a.Link, layout: layoutFlatPlain,
	}
	switch {
	case info.Mode().IsRegular():
		ino.size = uint64(info.Size())
	case info.Mode()&fs.ModeDevice != 0:
		ino.data = encodeDev(a.Major, a.Minor)
	}
	add := func(name, value string) error {
		if len(value) > 0xffff {
			return fmt.Errorf("erofs: %s: xattr %q has a value of %d bytes, more than 65535", p, name, len(value))
		}
		for _, x := range xattrIndexes {
			rest, ok := strings.CutPrefix(name, x.prefix)
			// An ACL's name is all of it: its prefix does not end a namespace.
			whole := !strings.HasSuffix(x.prefix, ".")
			if ok && len(rest) <= maxNameLen && (rest == "" || !whole) {
				ino.xattrs = append(ino.xattrs, xattr{index: x.index, name: rest, value: value})
				return nil
			}
		}
		return fmt.Errorf("erofs: %s: xattr %q: EROFS holds only user., trusted., security. and POSIX ACL names of up to 255 bytes after the namespace", p, name)
	}
	for _, x := range a.Xattrs {
		name := x.Name
		if rest, ok := strings.CutPrefix(name, overlayPrefix); ok {
			name = escapedPrefix + rest
		}
		if err := add(name, x.Value); err != nil {
			return nil, err
		}
	}
	if info.Mode().IsRegular() && info.Size() > 0 {
		if a.Object == "" {
			return nil, fmt.Errorf("erofs: %s: %d bytes of content and no object", p, info.Size())
		}
		if w.inlines(ino) {
			ino.inline = true
			return ino, w.sortXattrs(p, ino)
		}
		target, err := w.redirectOf(a)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		if err := errors.Join(add(metacopyXattr, ""), add(redirectXattr, target)); err != nil {
			return nil, err
		}
	}
	return ino, w.sortXattrs(p, ino)
}

// sortXattrs puts ino's xattrs in the order EROFS keeps them.
func (w *metaWriter) sortXattrs(p string, ino *inode) error {
	slices.SortFunc(ino.xattrs, func(a, b xattr) int {
		return cmp.Or(cmp.Compare(a.index, b.index), strings.Compare(a.name, b.name))
	})
	for i := 1; i < len(ino.xattrs); i++ {
		if prev, x := ino.xattrs[i-1], ino.xattrs[i]; prev.index == x.index && prev.name == x.name {
			return fmt.Errorf("erofs: %s: an xattr given twice (index %d, %q)", p, x.index, x.name)
		}
	}
	return nil
}

// inlines says whether the contents of regular file ino go into the
// image: it is small, within the budget, and fits in one block after
// its inode and xattrs, which is where the kernel reads them from.
func (w *metaWriter) inlines(ino *inode) bool {
	return ino.size <= inlineMaxSize && len(w.inlined) < inlineFiles &&
		extendedInode+ino.xattrSize()+int(ino.size) <= imageBlockSize
}

// writeInlined reads the inlined files' contents, opened and read in by
// the prefetcher ahead of the copy, into their places in the image: a
// read and a write per chunk of the image that holds any, not a write
// per file.
func (w *metaWriter) writeInlined(out MetaOutput) error {
	ahead := newPrefetcher()
	defer ahead.stop()
	files := make([]*lazyFile, len(w.inlined))
	for i, c := range w.inlined {
		files[i] = &lazyFile{src: w.src, name: c.p, info: c.info, ahead: ahead}
		ahead.add(files[i])
	}
	var chunk []byte
	chunkOff := int64(-1)
	flush := func() error {
		if chunkOff < 0 {
			return nil
		}
		_, err := out.WriteAt(chunk, chunkOff)
		return err
	}
	for i, c := range w.inlined {
		if off := c.off / streamChunk * streamChunk; off != chunkOff {
			if err := flush(); err != nil {
				return fmt.Errorf("erofs: write image: %w", err)
			}
			chunk = make([]byte, min(streamChunk, w.inodes.flushed-off))
			if _, err := out.ReadAt(chunk, off); err != nil {
				return fmt.Errorf("erofs: read back image: %w", err)
			}
			chunkOff = off
		}
		size := c.info.Size()
		n, err := io.ReadFull(files[i], chunk[c.off-chunkOff:][:size])
		if err == nil {
			// A byte more than its size, to see that it ends there.
			var extra [1]byte
			if m, _ := files[i].Read(extra[:]); m > 0 {
				err = fmt.Errorf("more bytes than its size, %d", size)
			}
		} else {
			err = fmt.Errorf("%d bytes where its size is %d: %w", n, size, err)
		}
		if cerr := files[i].Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("erofs: read %s: %w", c.p, err)
		}
	}
	if err := flush(); err != nil {
		return fmt.Errorf("erofs: write image: %w", err)
	}
	return nil
}

// fitsCompact says whether the 32-byte inode holds ino: its mtime is the
// image's build time, and its ids, link count and size are small.
func (ino *inode) fitsCompact(buildTime uint64) bool {
	return ino.mtime == buildTime && ino.mtimeNs == 0 && ino.uid <= 0xffff && ino.gid <= 0xffff &&
		ino.nlink <= 0xffff && ino.size <= 0xffffffff
}

func (ino *inode) xattrSize() int {
	if len(ino.xattrs) == 0 {
		return 0
	}
	n := xattrHeaderSize
	for _, x := range ino.xattrs {
		n += (4 + len(x.name) + len(x.value) + 3) &^ 3
	}
	return n
}

// headerSize is the inode and its xattrs: where inline data starts.
func (ino *inode) headerSize() int {
	if ino.extended {
		return extendedInode + ino.xattrSize()
	}
	return compactInodeSize + ino.xattrSize()
}

func (ino *inode) fileType() uint8 {
	switch m := ino.mode; {
	case m.IsDir():
		return fileTypeDir
	case m&fs.ModeSymlink != 0:
		return fileTypeSymlink
	case m&fs.ModeCharDevice != 0:
		return fileTypeCharDev
	case m&fs.ModeDevice != 0:
		return fileTypeBlockDev
	case m&fs.ModeNamedPipe != 0:
		return fileTypeFIFO
	case m&fs.ModeSocket != 0:
		return fileTypeSocket
	}
	return fileTypeRegular
}

// unixMode is the mode as stat gives it: type, permissions, setuid,
// setgid and sticky.
func (ino *inode) unixMode() uint16 {
	m := uint16(ino.mode.Perm())
	if ino.mode&fs.ModeSetuid != 0 {
		m |= 0o4000
	}
	if ino.mode&fs.ModeSetgid != 0 {
		m |= 0o2000
	}
	if ino.mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	types := [...]uint16{fileTypeRegular: 0o100000, fileTypeDir: 0o040000, fileTypeCharDev: 0o020000,
		fileTypeBlockDev: 0o060000, fileTypeFIFO: 0o010000, fileTypeSocket: 0o140000, fileTypeSymlink: 0o120000}
	return m | types[ino.fileType()]
}

// encode appends the inode and its xattrs to b; serial is its i_ino.
func (ino *inode) encode(b []byte, serial uint32) []byte {
	le := binary.LittleEndian
	format := uint16(ino.layout) << 1
	xattrCount := uint16(0)
	if n := ino.xattrSize(); n > 0 {
		xattrCount = uint16((n-xattrHeaderSize)/4 + 1)
	}
	if ino.extended {
		var h [extendedInode]byte
		le.PutUint16(h[0:], format|1)
		le.PutUint16(h[2:], xattrCount)
		le.PutUint16(h[4:], ino.unixMode())
		le.PutUint64(h[8:], ino.size)
		le.PutUint32(h[16:], ino.data)
		le.PutUint32(h[20:], serial)
		le.PutUint32(h[24:], ino.uid)
		le.PutUint32(h[28:], ino.gid)
		le.PutUint64(h[32:], ino.mtime)
		le.PutUint32(h[40:], ino.mtimeNs)
		le.PutUint32(h[44:], ino.nlink)
		b = append(b, h[:]...)
	} else {
		var h [compactInodeSize]byte
		le.PutUint16(h[0:], format)
		le.PutUint16(h[2:], xattrCount)
		le.PutUint16(h[4:], ino.unixMode())
		le.PutUint16(h[6:], uint16(ino.nlink))
		le.PutUint32(h[8:], uint32(ino.size))
		le.PutUint32(h[16:], ino.data)
		le.PutUint32(h[20:], serial)
		le.PutUint16(h[24:], uint16(ino.uid))
		le.PutUint16(h[26:], uint16(ino.gid))
		b = append(b, h[:]...)
	}
	if xattrCount == 0 {
		return b
	}
	b = append(b, make([]byte, xattrHeaderSize)...)
	for _, x := range ino.xattrs {
		b = append(b, uint8(len(x.name)), x.index, 0, 0)
		le.PutUint16(b[len(b)-2:], uint16(len(x.value)))
		b = append(b, x.name...)
		b = append(b, x.value...)
		b = append(b, zeros[:(4-len(b)%4)%4]...)
	}
	return b
}

// redirectOf is where, beneath the data-only layer, the bytes of a are.
func (w *metaWriter) redirectOf(a *view.Attr) (string, error) {
	if w.redirect != nil {
		return w.redirect(a), nil
	}
	return ObjectPath(a.Object.String())
}
