// Package index is the on-disk form of one extracted layer: every tar entry
// of the layer, markers included, as fixed-size records in breadth-first
// order, so that one directory's children are one contiguous range sorted
// by name. A mount reads it through mmap and binary-searches a directory
// without parsing or allocating for the directories nobody visits.
//
// Layout, all integers little-endian:
//
//	header   headerSize bytes: magic, version, counts, section offsets, layer facts
//	records  count * recordSize bytes; record Root (0) is the layer's root directory
//	strings  names, link targets and encoded xattrs, referenced by offset
//	trailer  sha256 of everything before it
package index

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Type is the kind of an entry.
type Type uint8

const (
	TypeReg Type = iota + 1
	TypeDir
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFifo
	// TypeLowerLink is a hardlink whose target is not in its own layer:
	// it shows the file at Link in the view beneath the layer.
	TypeLowerLink
)

func (t Type) String() string {
	switch t {
	case TypeReg:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeChar:
		return "char"
	case TypeBlock:
		return "block"
	case TypeFifo:
		return "fifo"
	case TypeLowerLink:
		return "hardlink"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Flag bits of an entry.
const (
	// FlagImplied marks a directory the layer has no entry for, only
	// entries beneath it.
	FlagImplied uint8 = 1 << iota
	// FlagOpaque marks a directory holding an opaque marker in this layer.
	FlagOpaque
)

// Entry is one record, decoded. Names are base names; the root's is "".
type Entry struct {
	Name     string
	Type     Type
	Flags    uint8
	Mode     uint32 // permission bits with setuid, setgid and sticky
	UID, GID uint32
	Size     int64
	Mtime    int64 // seconds
	MtimeNs  uint32
	Major    uint32
	Minor    uint32
	Link     string // symlink target, or a lower hardlink's target path
	Xattrs   []Xattr
	Object   digest.Digest // content of a non-empty regular file
	Nlink    uint32
	// Inode is the record number shared by every name of one hardlinked
	// file: the identity that the file keeps in every view.
	Inode uint32
	// Parent is the record number of the directory holding the entry.
	Parent uint32
	// Children is the record range of a directory's children.
	ChildStart, ChildCount uint32
}

// DirSize is the size every view shows for a directory, as ext4 would.
const DirSize = 4096

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value string
}

// Info is what the header says of the whole layer.
type Info struct {
	DiffID       digest.Digest
	Entries      int
	ContentBytes int64 // sum of regular-file sizes
	ObjectBytes  int64 // sum of distinct object sizes
	// XattrEntries counts the records that carry xattrs; it is -1 in an
	// index written before they were counted.
	XattrEntries int64
}

var errCorrupt = errors.New("corrupt index")

// Writer writes an index one record at a time, in final order, so that a
// layer of any size is written holding one record: the caller numbers the
// records (Inode, Parent, ChildStart, ChildCount) and knows the record count
// and the string bytes (the sum of StringBytes) before the first one.
// Strings go to a spool until Close appends them after the records.
type Writer struct {
	out    io.Writer
	spool  io.ReadWriter
	sum    hash.Hash
	count  uint64
	added  uint64
	strLen uint64
	strOff uint64
	rec    [recordSize]byte
	xattrs []byte
	// xattrEntries is the count the header declares, withXattrs the
	// records added that carry some.
	xattrEntries, withXattrs uint64
}

// NewWriter writes the header of an index of count records and strLen
// string bytes to out. spool holds the strings meanwhile; Close reads it
// back from its start (seeking there when it is an io.Seeker).
func NewWriter(out io.Writer, spool io.ReadWriter, count int, strLen int64, info Info) (*Writer, error) {
	if count > 1<<31 {
		return nil, fmt.Errorf("layer has %d entries, more than an index holds", count)
	}
	if strLen > 1<<32-1 {
		return nil, errors.New("layer names and xattrs exceed 4 GiB")
	}
	hdr := make([]byte, headerSize)
	copy(hdrMagic.get(hdr), magic)
	hdrVersion.put(hdr, version)
	hdrRecordSize.put(hdr, recordSize)
	hdrCount.put(hdr, uint64(count))
	hdrStringsOff.put(hdr, uint64(headerSize+count*recordSize))
	hdrStringsLen.put(hdr, uint64(strLen))
	hdrContentBytes.put(hdr, uint64(info.ContentBytes))
	hdrObjectBytes.put(hdr, uint64(info.ObjectBytes))
	hdrXattrEntries.put(hdr, uint64(info.XattrEntries))
	raw, err := hexBytes(info.DiffID)
	if err != nil {
		return nil, fmt.Errorf("diff_id: %w", err)
	}
	copy(hdrDiffID.get(hdr), raw)
	w := &Writer{out: out, spool: spool, sum: sha256.New(), count: uint64(count), strLen: uint64(strLen), xattrEntries: uint64(info.XattrEntries)}
	if err := w.write(hdr); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) write(b []byte) error {
	w.sum.Write(b)
	if _, err := w.out.Write(b); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

// StringBytes is what entry e adds to an index's string section.
func StringBytes(e Entry) int64 {
	n := int64(len(e.Name) + len(e.Link))
	for _, x := range e.Xattrs {
		n += int64(8 + len(x.Name) + len(x.Value))
	}
	return n
}

func (w *Writer) addString(s []byte) (uint32, uint32, error) {
	off := w.strOff
	w.strOff += uint64(len(s))
	if w.strOff > w.strLen {
		return 0, 0, fmt.Errorf("index strings exceed the %d bytes declared", w.strLen)
	}
	if _, err := w.spool.Write(s); err != nil {
		return 0, 0, fmt.Errorf("write index strings: %w", err)
	}
	return uint32(off), uint32(len(s)), nil
}

// Add writes the next record.
func (w *Writer) Add(e Entry) error {
	if w.added == w.count {
		return fmt.Errorf("index holds %d records, not more", w.count)
	}
	w.added++
	if len(e.Xattrs) > 0 {
		w.withXattrs++
	}
	r := w.rec[:]
	clear(r)
	nameOff, nameLen, err := w.addString([]byte(e.Name))
	if err != nil {
		return err
	}
	linkOff, linkLen, err := w.addString([]byte(e.Link))
	if err != nil {
		return err
	}
	w.xattrs = w.xattrs[:0]
	for _, x := range e.Xattrs {
		w.xattrs = le.AppendUint32(w.xattrs, uint32(len(x.Name)))
		w.xattrs = append(w.xattrs, x.Name...)
		w.xattrs = le.AppendUint32(w.xattrs, uint32(len(x.Value)))
		w.xattrs = append(w.xattrs, x.Value...)
	}
	xOff, xLen, err := w.addString(w.xattrs)
	if err != nil {
		return err
	}
	recName.put(r, nameOff, nameLen)
	recType.put(r, uint8(e.Type))
	recFlags.put(r, e.Flags)
	recMode.put(r, e.Mode)
	recUID.put(r, e.UID)
	recGID.put(r, e.GID)
	recSize.put(r, uint64(e.Size))
	recMtime.put(r, uint64(e.Mtime))
	recMtimeNs.put(r, e.MtimeNs)
	recMajor.put(r, e.Major)
	recMinor.put(r, e.Minor)
	recLink.put(r, linkOff, linkLen)
	recXattrs.put(r, xOff, xLen)
	recChildStart.put(r, e.ChildStart)
	recChildCount.put(r, e.ChildCount)
	recNlink.put(r, e.Nlink)
	recInode.put(r, e.Inode)
	recParent.put(r, e.Parent)
	if e.Object != "" {
		raw, err := hexBytes(e.Object)
		if err != nil {
			return fmt.Errorf("entry %q: %w", e.Name, err)
		}
		copy(recObject.get(r), raw)
	}
	return w.write(r)
}

// Close appends the strings and the checksum trailer.
func (w *Writer) Close() error {
	if w.added != w.count || w.strOff != w.strLen || w.withXattrs != w.xattrEntries {
		return fmt.Errorf("index declared %d records, %d string bytes and %d records with xattrs, got %d, %d and %d",
			w.count, w.strLen, w.xattrEntries, w.added, w.strOff, w.withXattrs)
	}
	if sk, ok := w.spool.(io.Seeker); ok {
		if _, err := sk.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("read index strings: %w", err)
		}
	}
	if _, err := io.Copy(writerFunc(w.write), w.spool); err != nil {
		return fmt.Errorf("copy index strings: %w", err)
	}
	if _, err := w.out.Write(w.sum.Sum(nil)); err != nil {
		return fmt.Errorf("write index: %w", err)
	}
	return nil
}

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func hexBytes(d digest.Digest) ([]byte, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return nil, fmt.Errorf("not a sha256 digest: %q", d)
	}
	return hex.DecodeString(d.Encoded())
}

// Reader serves one index file through a read-only mapping.
type Reader struct {
	data    []byte
	count   uint32
	recs    []byte
	strs    []byte
	info    Info
	mmapped bool
	// decoded counts the records Entry has read, for giving the mapping
	// back (see noteDecoded).
	decoded atomic.Uint32
}

// releaseEvery is how many records Entry decodes between two releases of
// the whole mapping: about 2 MiB of records and their names.
const releaseEvery = 16384

// noteDecoded gives the whole mapping back to the kernel every
// releaseEvery records decoded. A walk of a view touches every record of
// its layers once, and each page it touches would stay in the server's
// RSS for as long as the mount lives: 150 bytes per entry of a
// million-entry view. Released pages stay in the page cache, shared with
// every other reader of the index; the next read of one maps it again
// with a minor fault. The data stays valid throughout: the mapping is
// of the file, read-only and shared.
func (r *Reader) noteDecoded() {
	if r.mmapped && r.decoded.Add(1)%releaseEvery == 0 {
		unix.Madvise(r.data, unix.MADV_DONTNEED)
	}
}

// Open maps and checks an index file. verify re-hashes the whole file
// against its trailer; without it only the structure is checked, since
// a mount opens indexes on its hot path.
func Open(path string, verify bool) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return OpenFile(f, verify)
}

// OpenFile maps the index open as f, as Open does; f may be closed after.
func OpenFile(f *os.File, verify bool) (*Reader, error) {
	path := f.Name()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < headerSize+sumSize {
		return nil, fmt.Errorf("index %s: %w: %d bytes", path, errCorrupt, st.Size())
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap index %s: %w", path, err)
	}
	r := &Reader{data: data, mmapped: true}
	if err := r.parse(verify); err != nil {
		r.Close()
		return nil, fmt.Errorf("index %s: %w", path, err)
	}
	return r, nil
}

// Parse checks an index held in memory, as Open does with verify.
func Parse(data []byte) (*Reader, error) {
	r := &Reader{data: data}
	if err := r.parse(true); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Reader) parse(verify bool) error {
	d := r.data
	if len(d) < headerSize+sumSize || string(hdrMagic.get(d)) != magic {
		return fmt.Errorf("%w: bad magic", errCorrupt)
	}
	v := hdrVersion.get(d)
	if v != version && v != oldVersion {
		return fmt.Errorf("%w: version %d, want %d", errCorrupt, v, version)
	}
	if rs := hdrRecordSize.get(d); rs != recordSize {
		return fmt.Errorf("%w: record size %d", errCorrupt, rs)
	}
	count := hdrCount.get(d)
	strOff := hdrStringsOff.get(d)
	strLen := hdrStringsLen.get(d)
	body := uint64(len(d) - sumSize)
	if count == 0 || count > 1<<31 || strOff != headerSize+count*recordSize || strOff+strLen != body {
		return fmt.Errorf("%w: sections do not fit the file", errCorrupt)
	}
	if verify {
		sum := sha256.Sum256(d[:body])
		if string(sum[:]) != string(d[body:]) {
			return fmt.Errorf("%w: checksum mismatch", errCorrupt)
		}
	}
	r.count = uint32(count)
	r.recs = d[headerSize:strOff]
	r.strs = d[strOff:body]
	r.info = Info{
		DiffID:       sha256Digest(hdrDiffID.get(d)),
		Entries:      int(count),
		ContentBytes: int64(hdrContentBytes.get(d)),
		ObjectBytes:  int64(hdrObjectBytes.get(d)),
		XattrEntries: int64(hdrXattrEntries.get(d)),
	}
	if v == oldVersion {
		r.info.XattrEntries = -1
	}
	if root, err := r.Entry(Root); err != nil {
		return err
	} else if root.Type != TypeDir {
		return fmt.Errorf("%w: root is not a directory", errCorrupt)
	}
	return nil
}

// Close unmaps the index. A read after it finds no records, an error
// that wraps fs.ErrClosed, where the unmapped pages would be a fault
// that no recover catches; a read while it runs is still a race.
func (r *Reader) Close() error {
	if !r.mmapped || r.data == nil {
		return nil
	}
	err := unix.Munmap(r.data)
	r.data, r.recs, r.strs, r.count = nil, nil, nil, 0
	return err
}

// missing is the error about record i, beyond the index's records.
func (r *Reader) missing(i uint32) error {
	if r.mmapped && r.data == nil {
		return fmt.Errorf("layer index: %w", fs.ErrClosed)
	}
	return fmt.Errorf("%w: record %d of %d", errCorrupt, i, r.count)
}

// Info returns the layer facts of the header.
func (r *Reader) Info() Info { return r.info }

// Len is the number of records.
func (r *Reader) Len() int { return int(r.count) }

func (r *Reader) rec(i uint32) []byte {
	return r.recs[int(i)*recordSize : int(i+1)*recordSize]
}

func (r *Reader) str(off, n uint32) (string, error) {
	if uint64(off)+uint64(n) > uint64(len(r.strs)) {
		return "", fmt.Errorf("%w: string out of range", errCorrupt)
	}
	return string(r.strs[off : off+n]), nil
}

func (r *Reader) strBytes(off, n uint32) ([]byte, error) {
	if uint64(off)+uint64(n) > uint64(len(r.strs)) {
		return nil, fmt.Errorf("%w: string out of range", errCorrupt)
	}
	return r.strs[off : off+n], nil
}

// Name returns record i's base name without decoding the rest; it is the
// comparison of Lookup's binary search.
func (r *Reader) Name(i uint32) ([]byte, error) {
	if i >= r.count {
		return nil, r.missing(i)
	}
	return r.strBytes(recName.get(r.rec(i)))
}

// TypeOf returns record i's type and flags without decoding the rest.
func (r *Reader) TypeOf(i uint32) (Type, uint8) {
	if i >= r.count {
		return 0, 0
	}
	rec := r.rec(i)
	return Type(recType.get(rec)), recFlags.get(rec)
}

// Entry decodes record i, checking every reference it holds.
func (r *Reader) Entry(i uint32) (Entry, error) {
	if i >= r.count {
		return Entry{}, r.missing(i)
	}
	r.noteDecoded()
	rec := r.rec(i)
	var e Entry
	var err error
	if e.Name, err = r.str(recName.get(rec)); err != nil {
		return e, err
	}
	e.Type = Type(recType.get(rec))
	e.Flags = recFlags.get(rec)
	e.Mode = recMode.get(rec)
	e.UID = recUID.get(rec)
	e.GID = recGID.get(rec)
	e.Size = int64(recSize.get(rec))
	e.Mtime = int64(recMtime.get(rec))
	e.MtimeNs = recMtimeNs.get(rec)
	e.Major = recMajor.get(rec)
	e.Minor = recMinor.get(rec)
	if e.Link, err = r.str(recLink.get(rec)); err != nil {
		return e, err
	}
	xs, err := r.strBytes(recXattrs.get(rec))
	if err != nil {
		return e, err
	}
	if e.Xattrs, err = decodeXattrs(xs); err != nil {
		return e, err
	}
	e.ChildStart = recChildStart.get(rec)
	e.ChildCount = recChildCount.get(rec)
	e.Nlink = recNlink.get(rec)
	e.Inode = recInode.get(rec)
	e.Parent = recParent.get(rec)
	if e.Type < TypeReg || e.Type > TypeLowerLink || e.Inode >= r.count || e.Parent >= r.count || e.Size < 0 {
		return e, fmt.Errorf("%w: record %d has bad fields", errCorrupt, i)
	}
	if e.Type == TypeDir {
		if uint64(e.ChildStart)+uint64(e.ChildCount) > uint64(r.count) || (e.ChildCount > 0 && e.ChildStart <= i) {
			return e, fmt.Errorf("%w: record %d has a bad child range", errCorrupt, i)
		}
	}
	if e.Type == TypeReg && e.Size > 0 {
		e.Object = sha256Digest(recObject.get(rec))
	}
	return e, nil
}

// sha256Digest is digest.NewDigestFromBytes(digest.SHA256, sum) in one
// allocation: go-digest formats with two fmt.Sprintf calls, which cost
// more than the rest of decoding a record, and a walk decodes every one.
func sha256Digest(sum []byte) digest.Digest {
	const prefix = "sha256:"
	var b [len(prefix) + 2*sha256.Size]byte
	copy(b[:], prefix)
	hex.Encode(b[len(prefix):], sum)
	return digest.Digest(b[:])
}

func decodeXattrs(b []byte) ([]Xattr, error) {
	var xs []Xattr
	next := func() (string, error) {
		if len(b) < 4 {
			return "", fmt.Errorf("%w: truncated xattr", errCorrupt)
		}
		n := le.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return "", fmt.Errorf("%w: truncated xattr", errCorrupt)
		}
		s := string(b[:n])
		b = b[n:]
		return s, nil
	}
	for len(b) > 0 {
		name, err := next()
		if err != nil {
			return nil, err
		}
		value, err := next()
		if err != nil {
			return nil, err
		}
		xs = append(xs, Xattr{name, value})
	}
	return xs, nil
}

// Lookup finds the child called name of directory record dir.
func (r *Reader) Lookup(dir uint32, name string) (uint32, bool, error) {
	e, err := r.dirRange(dir)
	if err != nil {
		return 0, false, err
	}
	var searchErr error
	k := sort.Search(int(e.count), func(k int) bool {
		n, err := r.Name(e.start + uint32(k))
		if err != nil {
			searchErr = err
			return true
		}
		return string(n) >= name
	})
	if searchErr != nil {
		return 0, false, searchErr
	}
	if k < int(e.count) {
		if n, _ := r.Name(e.start + uint32(k)); string(n) == name {
			return e.start + uint32(k), true, nil
		}
	}
	return 0, false, nil
}

type childRange struct{ start, count uint32 }

func (r *Reader) dirRange(dir uint32) (childRange, error) {
	if dir >= r.count {
		return childRange{}, r.missing(dir)
	}
	rec := r.rec(dir)
	if Type(recType.get(rec)) != TypeDir {
		return childRange{}, fmt.Errorf("%w: record %d is not a directory", errCorrupt, dir)
	}
	start, count := recChildStart.get(rec), recChildCount.get(rec)
	if uint64(start)+uint64(count) > uint64(r.count) || (count > 0 && start <= dir) {
		return childRange{}, fmt.Errorf("%w: record %d has a bad child range", errCorrupt, dir)
	}
	return childRange{start, count}, nil
}

// Children returns the record range of directory record dir's children.
func (r *Reader) Children(dir uint32) (start, count uint32, err error) {
	cr, err := r.dirRange(dir)
	return cr.start, cr.count, err
}

// Path returns the full path of record i, without a leading slash.
func (r *Reader) Path(i uint32) (string, error) {
	var parts []string
	for seen := 0; i != Root; seen++ {
		if seen > int(r.count) {
			return "", fmt.Errorf("%w: parent loop at record %d", errCorrupt, i)
		}
		n, err := r.Name(i)
		if err != nil {
			return "", err
		}
		parts = append(parts, string(n))
		i = recParent.get(r.rec(i))
		if i >= r.count {
			return "", fmt.Errorf("%w: bad parent", errCorrupt)
		}
	}
	for a, b := 0, len(parts)-1; a < b; a, b = a+1, b-1 {
		parts[a], parts[b] = parts[b], parts[a]
	}
	return strings.Join(parts, "/"), nil
}

// Walk resolves a slash-separated path from the root.
func (r *Reader) Walk(p string) (uint32, bool, error) {
	cur := Root
	for _, name := range strings.Split(p, "/") {
		if name == "" {
			continue
		}
		if t, _ := r.TypeOf(cur); t != TypeDir {
			return 0, false, nil
		}
		next, ok, err := r.Lookup(cur, name)
		if err != nil || !ok {
			return 0, false, err
		}
		cur = next
	}
	return cur, true, nil
}

// Scan calls fn with each record's number and type, in order. On a mapped
// index it gives back each stretch of the mapping once read, so that a
// scan of a large index leaves little of it resident.
func (r *Reader) Scan(fn func(rec uint32, t Type) error) error {
	const stretch = 4 << 20
	page := os.Getpagesize()
	released := headerSize / page * page
	for i := uint32(0); i < r.count; i++ {
		if err := fn(i, Type(recType.get(r.rec(i)))); err != nil {
			return err
		}
		if end := headerSize + int(i+1)*recordSize; r.mmapped && end-released >= stretch {
			upTo := end / page * page
			unix.Madvise(r.data[released:upTo], unix.MADV_DONTNEED)
			released = upTo
		}
	}
	return nil
}

// InodeOf returns record i's inode record number without decoding the rest.
func (r *Reader) InodeOf(i uint32) uint32 {
	if i >= r.count {
		return i
	}
	return recInode.get(r.rec(i))
}
