// Package layer turns one layer's compressed tar stream into an index and
// content objects, staged in a directory of the store's: decompression,
// the checks of every entry, the tar-order rules, hardlinks, the index
// built in bounded memory and written in breadth-first order. The store
// (ExtractLayer) decides when a layer is extracted and commits what an
// Extraction staged.
package layer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/layerfs/layerfs/internal/compression"
	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

const (
	maxNameLen = 255
	maxPathLen = 4096
	// smallFile is the size up to which a file's content is hashed in
	// memory before anything is written, so content already in the store
	// costs no write at all.
	smallFile = 1 << 20
	xattrPAX  = "SCHILY.xattr."
)

// ErrMismatch is wrapped by the refusal of content that is not what its
// header claims; it is the store's ErrMismatch.
var ErrMismatch = errors.New("content does not match its descriptor")

// EntryError names the tar entry a layer was refused for.
type EntryError struct {
	Entry string
	Err   error
}

func (e *EntryError) Error() string { return fmt.Sprintf("entry %q: %v", e.Entry, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// Extraction is one layer being turned into content objects and an
// index. Its files live in a directory of its own (under the store's
// tmp/) until the store commits them.
type Extraction struct {
	dir string
	// objectPath is where the store keeps content d: content already
	// there is not staged again, and staged objects move there.
	objectPath func(d digest.Digest) string
	// entries holds every tar entry by path, results the index's records
	// in breadth-first order (see build.go).
	entries *sorter
	results *sorter
	seq     uint64
	links   map[uint64]*link
	targets map[string][]uint64 // hardlink seqs by the path they name
	files   map[uint64]index.Entry
	content int64
	objSize int64
	// limit bounds the uncompressed stream and the sum of file sizes;
	// 0 for none.
	limit    int64
	streamed int64
	buf      []byte
	wbuf     *bufio.Writer
	keyBuf   []byte
	recBuf   []byte
	meter    Meter
}

// Meter counts the tar entries an extraction stores.
type Meter interface{ Entry() }

type noMeter struct{}

func (noMeter) Entry() {}

// The modes of everything staged, as the store's: only its owner reads it.
const (
	dirMode  = 0o700
	fileMode = 0o600
)

// New starts an extraction staged in dir, an empty directory it owns
// from then on, that refuses a layer expanding beyond limit bytes (0 for
// none) and counts entries on meter (nil for none).
func New(dir string, limit int64, objectPath func(digest.Digest) string, meter Meter) (*Extraction, error) {
	if err := os.Mkdir(filepath.Join(dir, stagedObjects), dirMode); err != nil {
		return nil, fmt.Errorf("stage extraction: %w", err)
	}
	if meter == nil {
		meter = noMeter{}
	}
	return &Extraction{
		dir: dir, objectPath: objectPath, limit: limit, meter: meter,
		entries: newSorter(dir, "entries"), results: newSorter(dir, "results"),
		links: map[uint64]*link{}, targets: map[string][]uint64{}, files: map[uint64]index.Entry{},
	}, nil
}

// Abort removes everything the extraction staged. Removing a directory
// opens it: an extraction that failed for want of file descriptors
// (EMFILE) meets the same want here, while the other layers of its
// import still hold theirs, and tries again as they let them go, for a
// while, before it leaves the rest to gc. Its caller closes what it
// holds itself (the layer's stream, its blob) first.
func (x *Extraction) Abort() { RemoveStaged(x.dir) }

// RemoveStaged removes dir, a directory an extraction staged in, as
// Abort does.
func RemoveStaged(dir string) {
	for wait := 10 * time.Millisecond; ; wait *= 2 {
		err := os.RemoveAll(dir)
		if err == nil || wait > 500*time.Millisecond || !(errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)) {
			return
		}
		time.Sleep(wait)
	}
}

// Read consumes the whole compressed stream r, applies the layer's rules
// and returns the digest of the uncompressed tar.
func (x *Extraction) Read(r io.Reader) (digest.Digest, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	dec, closeDec, err := decompress(br)
	if err != nil {
		return "", err
	}
	defer closeDec()
	sum := sha256.New()
	hashed := Behind(sum)
	defer hashed.Close()
	tee := readAhead(io.TeeReader(&limitedStream{r: dec, x: x}, hashed))
	defer tee.close()
	tr := tar.NewReader(tee)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read tar: %w", streamError(err))
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			// Defaults for the entries after it, which every field of
			// theirs overrides; docker and containerd skip it too.
			continue
		}
		if hdr.Typeflag == tar.TypeGNUSparse {
			// GNU tar's own format, its default, marks a sparse file so;
			// the reader gives its size and its bytes, holes filled, as
			// those of a regular file, which GNU tar extracts it as.
			hdr.Typeflag = tar.TypeReg
		}
		if err := x.add(hdr, tr); err != nil {
			return "", &EntryError{Entry: hdr.Name, Err: err}
		}
		x.meter.Entry()
	}
	// The tar's end blocks and any padding after them are part of the
	// diff_id, and the rest of the compressed stream part of the digest.
	if _, err := io.Copy(io.Discard, tee); err != nil {
		return "", fmt.Errorf("read tar: %w", streamError(err))
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return "", fmt.Errorf("read layer: %w", err)
	}
	if err := x.build(); err != nil {
		return "", err
	}
	hashed.Close() // a hash takes every write
	return digest.NewDigest(digest.SHA256, sum), nil
}

// ErrExpansion is wrapped by the refusal of a layer that expands beyond
// the store's limit.
var ErrExpansion = errors.New("layer expands beyond the limit")

func (x *Extraction) tooLarge(what string, n int64) error {
	return fmt.Errorf("%w: %s reaches %d bytes, over the limit of %d (see %s)", ErrExpansion, what, n, x.limit, expansionEnv)
}

// Sizes are the bytes of the layer's regular files and of its distinct
// contents, for the index's header.
func (x *Extraction) Sizes() (content, objects int64) { return x.content, x.objSize }

// limitedStream counts the uncompressed stream against the limit, so a
// compression bomb stops when it passes it rather than when the disk fills.
type limitedStream struct {
	r io.Reader
	x *Extraction
}

func (l *limitedStream) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.x.streamed += int64(n)
	if l.x.limit > 0 && l.x.streamed > l.x.limit {
		return n, l.x.tooLarge("the uncompressed stream", l.x.streamed)
	}
	return n, err
}

func streamError(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated stream: %w", err)
	}
	return err
}

// decompress undoes a layer's compression, gzip or zstd: the media types
// of layers the image spec names; bzip2 and xz are for archives only.
func decompress(br *bufio.Reader) (io.Reader, func(), error) {
	if _, err := br.Peek(4); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("read layer: %w", err)
	}
	switch compression.Sniff(br) {
	case "bzip2", "xz":
		return nil, nil, errors.New("unsupported compression (bzip2 or xz)")
	}
	return compression.NewReader(br)
}

// CleanPath turns a tar entry name into a path relative to the layer
// root: "" for the root itself. It refuses names that leave the root or
// exceed the limits of a Linux filesystem.
func CleanPath(name string) (string, error) {
	if len(name) > maxPathLen {
		return "", fmt.Errorf("path is %d bytes, longer than %d", len(name), maxPathLen)
	}
	if strings.Contains(name, "\x00") {
		return "", errors.New("path holds a NUL byte")
	}
	p := path.Clean(strings.TrimLeft(name, "/"))
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", errors.New("path leaves the layer")
	}
	if p == "." {
		return "", nil
	}
	for _, c := range strings.Split(p, "/") {
		if len(c) > maxNameLen {
			return "", fmt.Errorf("name %.20q... is %d bytes, longer than %d", c, len(c), maxNameLen)
		}
	}
	return p, nil
}

// add checks one tar entry on its own and passes it to the first sort; the
// rules between entries apply in build.
func (x *Extraction) add(hdr *tar.Header, body io.Reader) error {
	p, err := CleanPath(hdr.Name)
	if err != nil {
		return err
	}
	e, err := headerEntry(hdr)
	if err != nil {
		return err
	}
	if p == "" {
		if e.Type != index.TypeDir {
			return errors.New("the layer root is not a directory")
		}
	} else {
		e.Name = path.Base(p)
		if err := whiteout.Validate(e.Name); err != nil {
			return err
		}
	}
	x.seq++
	switch hdr.Typeflag {
	case tar.TypeLink:
		target, err := CleanPath(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		e.Link = target
		x.links[x.seq] = &link{name: p, target: target}
		x.targets[target] = append(x.targets[target], x.seq)
	case tar.TypeReg:
		if err := x.storeContent(&e, body); err != nil {
			return err
		}
	}
	r := rec{seq: x.seq, tarName: hdr.Name, e: e}
	x.keyBuf = entryKey(x.keyBuf[:0], p, x.seq)
	x.recBuf = r.encode(x.recBuf[:0])
	return x.entries.add(x.keyBuf, x.recBuf)
}

var errNotDir = errors.New("not a directory")

func headerEntry(hdr *tar.Header) (index.Entry, error) {
	if err := checkRepresentable(hdr); err != nil {
		return index.Entry{}, err
	}
	e := index.Entry{
		Mode:    uint32(hdr.Mode) & 0o7777,
		Mtime:   hdr.ModTime.Unix(),
		MtimeNs: uint32(hdr.ModTime.Nanosecond()),
		Nlink:   1,
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) > 1<<32-1 || int64(hdr.Gid) > 1<<32-1 {
		return e, fmt.Errorf("owner %d:%d out of range", hdr.Uid, hdr.Gid)
	}
	e.UID, e.GID = uint32(hdr.Uid), uint32(hdr.Gid)
	switch hdr.Typeflag {
	case tar.TypeReg:
		e.Type, e.Size = index.TypeReg, hdr.Size
	case tar.TypeLink:
		e.Type = index.TypeLowerLink
	case tar.TypeDir:
		e.Type = index.TypeDir
	case tar.TypeSymlink:
		e.Type, e.Link, e.Size = index.TypeSymlink, hdr.Linkname, int64(len(hdr.Linkname))
		if hdr.Linkname == "" {
			return e, errors.New("symlink has an empty target")
		}
	case tar.TypeChar, tar.TypeBlock:
		e.Type = index.TypeChar
		if hdr.Typeflag == tar.TypeBlock {
			e.Type = index.TypeBlock
		}
		if hdr.Devmajor < 0 || hdr.Devminor < 0 || hdr.Devmajor > 1<<32-1 || hdr.Devminor > 1<<32-1 {
			return e, fmt.Errorf("device %d:%d out of range", hdr.Devmajor, hdr.Devminor)
		}
		e.Major, e.Minor = uint32(hdr.Devmajor), uint32(hdr.Devminor)
	case tar.TypeFifo:
		e.Type = index.TypeFifo
	default:
		return e, fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPAX); ok {
			e.Xattrs = append(e.Xattrs, index.Xattr{Name: name, Value: v})
		}
	}
	sort.Slice(e.Xattrs, func(i, j int) bool { return e.Xattrs[i].Name < e.Xattrs[j].Name })
	return e, nil
}

// storeContent writes a regular file's bytes as an object, unless the
// store or this extraction holds that content already. Runs of zeros stay
// holes, so a sparse file costs the disk what its data costs.
func (x *Extraction) storeContent(e *index.Entry, body io.Reader) error {
	if e.Size == 0 {
		return nil
	}
	x.content += e.Size
	if x.limit > 0 && x.content > x.limit {
		return x.tooLarge("the sum of file sizes", x.content)
	}
	if e.Size <= smallFile {
		if x.buf == nil {
			x.buf = make([]byte, smallFile)
		}
		b := x.buf[:e.Size]
		if _, err := io.ReadFull(body, b); err != nil {
			return fmt.Errorf("read content: %w", streamError(err))
		}
		e.Object = digest.FromBytes(b)
		if known, err := x.inStore(e.Object); known || err != nil {
			return err
		}
		return x.writeObject(e.Object, b)
	}
	tmp := filepath.Join(x.dir, "object")
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, fileMode)
	if err != nil {
		return fmt.Errorf("stage object: %w", err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	h := sha256.New()
	w := &sparseWriter{fd: fd}
	// Writes of smallFile bytes, not of the 32 KiB a tar stream reads in:
	// the page cache keeps what is written in folios of the size written,
	// and a file written in small ones reads back a quarter slower until
	// it is dropped and read again.
	if x.wbuf == nil {
		x.wbuf = bufio.NewWriterSize(w, smallFile)
	}
	x.wbuf.Reset(w)
	n, err := io.Copy(io.MultiWriter(h, x.wbuf), body)
	if err != nil {
		if w.err != nil {
			// The object's write failed (a full disk): that error says
			// so already.
			return w.err
		}
		return fmt.Errorf("read content: %w", streamError(err))
	}
	if n != e.Size {
		return fmt.Errorf("%w: %d bytes, want %d", ErrMismatch, n, e.Size)
	}
	if err := x.wbuf.Flush(); err != nil {
		return err
	}
	if err := w.finish(); err != nil {
		return err
	}
	e.Object = digest.NewDigest(digest.SHA256, h)
	if known, err := x.inStore(e.Object); known || err != nil {
		return err
	}
	err = unix.Close(fd)
	fd = -1
	if err != nil {
		return fmt.Errorf("stage object: %w", err)
	}
	// A name staged already holds the same bytes: this one is dropped.
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, x.stagedObject(e.Object), unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stage object: %w", err)
	}
	x.objSize += n
	return nil
}

func (x *Extraction) stagedObject(d digest.Digest) string {
	return filepath.Join(x.ObjectsDir(), d.Encoded())
}

// inStore reports whether the store has content d, which is then staged
// as a link to the store's file, so that the staged objects are all of
// the layer's (ObjectsDir); also when this extraction staged it already.
// An object with as many links as the file system allows is staged as a
// copy of its own.
func (x *Extraction) inStore(d digest.Digest) (bool, error) {
	staged := x.stagedObject(d)
	err := os.Link(x.objectPath(d), staged)
	switch {
	case errors.Is(err, fs.ErrExist):
		return true, nil
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.EMLINK):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("link object %s: %w", d, err)
	}
	st, err := os.Lstat(staged)
	if err != nil {
		return false, fmt.Errorf("link object %s: %w", d, err)
	}
	x.objSize += st.Size()
	return true, nil
}

// writeObject stages new content b as d, unless this extraction staged d
// already. Raw descriptors: an os.File costs five more system calls to
// open and close (the poller's checks), a sixth of an import's time in
// the kernel for a layer of small files.
func (x *Extraction) writeObject(d digest.Digest, b []byte) error {
	fd, err := unix.Open(x.stagedObject(d), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, fileMode)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stage object: %w", err)
	}
	w := &sparseWriter{fd: fd}
	_, err = w.Write(b)
	if err == nil {
		err = w.finish()
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = fmt.Errorf("stage object: %w", cerr)
	}
	x.objSize += int64(len(b))
	return err
}

// sparseWriter writes a file from its start, seeking over every aligned
// block of zeros instead of writing it.
type sparseWriter struct {
	fd  int
	err error // the first write that failed
	off int64
	// end is where the last write ended: the file's size, short of off
	// when the file ends in a hole.
	end int64
}

const sparseBlock = 4096

var zeroBlock [sparseBlock]byte

func (w *sparseWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		// The data up to the next block of zeros goes in one write.
		n := 0
		for n < len(p) {
			step := min(sparseBlock-int((w.off+int64(n))%sparseBlock), len(p)-n)
			if bytes.Equal(p[n:n+step], zeroBlock[:step]) {
				break
			}
			n += step
		}
		if n > 0 {
			if err := pwriteAll(w.fd, p[:n], w.off); err != nil {
				w.err = fmt.Errorf("write object: %w", err)
				return total - len(p), w.err
			}
			w.off += int64(n)
			w.end = w.off
			p = p[n:]
		}
		for len(p) > 0 {
			step := min(sparseBlock-int(w.off%sparseBlock), len(p))
			if !bytes.Equal(p[:step], zeroBlock[:step]) {
				break
			}
			w.off += int64(step)
			p = p[step:]
		}
	}
	return total, nil
}

func pwriteAll(fd int, p []byte, off int64) error {
	for len(p) > 0 {
		n, err := unix.Pwrite(fd, p, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		p, off = p[n:], off+int64(n)
	}
	return nil
}

// finish sets the file's size, which a trailing hole leaves short.
func (w *sparseWriter) finish() error {
	if w.end == w.off {
		return nil
	}
	if err := unix.Ftruncate(w.fd, w.off); err != nil {
		return fmt.Errorf("write object: %w", err)
	}
	return nil
}

// MoveObjects gives each staged object its content name in the store, a
// batch of directory entries at a time. It links rather than renames, so
// the staged directory stays whole as the layer's own names of its
// objects (ObjectsDir). A name the store has already keeps its file:
// the staged one is the same file, or the same bytes.
func (x *Extraction) MoveObjects() error {
	d, err := os.Open(x.ObjectsDir())
	if err != nil {
		return fmt.Errorf("objects: %w", err)
	}
	defer d.Close()
	// The store's object directories each made once, not checked once
	// per object.
	made := map[string]bool{}
	for {
		names, err := d.Readdirnames(1024)
		for _, name := range names {
			final := x.objectPath(digest.NewDigestFromEncoded(digest.SHA256, name))
			if dir := filepath.Dir(final); !made[dir] {
				if err := os.MkdirAll(dir, dirMode); err != nil {
					return fmt.Errorf("object %s: %w", name, err)
				}
				made[dir] = true
			}
			if err := os.Link(filepath.Join(x.ObjectsDir(), name), final); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("object %s: %w", name, err)
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("objects: %w", err)
		}
	}
}

// ObjectsDir holds a name for each of the layer's objects, its hex
// digest, all in one directory.
func (x *Extraction) ObjectsDir() string { return filepath.Join(x.dir, stagedObjects) }

const stagedObjects = "objects"
