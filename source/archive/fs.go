package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/layerfs/layerfs/internal/compression"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
)

// maxLinkHops bounds how many symlinks or hardlinks of an archive one
// name may pass through, as the kernel's ELOOP does.
const maxLinkHops = 40

// maxCachedMembers bounds the bytes of small members a compressed archive
// keeps in memory after its index pass, so that its manifests, configs
// and small layers are not decompressed again.
const maxCachedMembers = 64 << 20

// openSource opens an image source, a directory or a tar file (plain or
// compressed), as a file system. A directory is read through an os.Root,
// so no symlink in it leads out of it. A tar is indexed once; a plain one
// is then read in place, a compressed one streamed again for each large
// member it is asked for: neither is unpacked to disk.
func openSource(p string) (fs.FS, io.Closer, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, nil, err
	}
	if st.IsDir() {
		root, err := os.OpenRoot(p)
		if err != nil {
			return nil, nil, err
		}
		return dirFS{root}, root, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, err
	}
	t, err := indexTar(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("read archive: %w", err)
	}
	return t, t, nil
}

// dirFS serves the regular files of a directory, refusing anything else
// (a FIFO or a device would block or never end) and any symlink out of it.
type dirFS struct{ root *os.Root }

func (d dirFS) Open(name string) (fs.File, error) {
	st, err := d.root.Stat(name)
	if err != nil {
		if target, lerr := d.root.Readlink(name); lerr == nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: symlink to %q leads out of the directory: %w", name, target, fs.ErrPermission)
		}
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: a %s, not a regular file", name, output.Kind(st.Mode()))
	}
	return d.root.Open(name)
}

// tarFS serves the members of a tar: regular files, and symlinks and
// hardlinks resolved to the regular member they name inside the archive.
type tarFS struct {
	f *os.File
	// compressed is set when members must be streamed again to be read.
	compressed bool
	members    map[string]*tarMember

	mu sync.Mutex
	// idle are decompressions of a compressed archive that a closed
	// member left, kept to read later members from.
	idle []*archiveStream
}

// maxIdleStreams bounds the decompressions kept between reads: a layer
// import reads at most one member per core at a time.
const maxIdleStreams = 4

// archiveStream is one decompression of an archive from its start.
type archiveStream struct {
	tr *tar.Reader
	// at is the ordinal of the member last reached, -1 before the first.
	at   int
	done func()
}

type tarMember struct {
	name      string
	typeflag  byte
	linkname  string
	ordinal   int
	off, size int64
	mode      fs.FileMode
	mtime     time.Time
	// data holds a compressed archive's small member read in the index pass.
	data []byte
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// openStream reads the archive in f from its start, decompressed. The
// reads are at offsets, so that several streams share f.
func openStream(f *os.File) (tr *tar.Reader, counted *countingReader, done func(), err error) {
	r, done, err := compression.NewReader(bufio.NewReaderSize(io.NewSectionReader(f, 0, math.MaxInt64), 1<<16))
	if err != nil {
		return nil, nil, nil, err
	}
	counted = &countingReader{r: r}
	return tar.NewReader(counted), counted, done, nil
}

func indexTar(f *os.File) (*tarFS, error) {
	kind := compression.Sniff(bufio.NewReader(io.NewSectionReader(f, 0, math.MaxInt64)))
	return indexStream(f, kind != "")
}

func indexStream(f *os.File, compressed bool) (*tarFS, error) {
	tr, cr, done, err := openStream(f)
	if err != nil {
		return nil, err
	}
	defer done()
	t := &tarFS{f: f, compressed: compressed, members: map[string]*tarMember{}}
	cached := 0
	// last is the member read before, and lastOff where its bytes start.
	var last *tar.Header
	var lastOff int64
	for ordinal := 0; ; ordinal++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		switch {
		case err == nil:
		case ordinal == 0:
			return nil, fmt.Errorf("not a tar archive: %w", err)
		case errors.Is(err, io.ErrUnexpectedEOF) && cr.n < lastOff+last.Size:
			return nil, truncated(last, cr.n-lastOff, err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("truncated: the archive ends after member %q: %w", last.Name, err)
		default:
			return nil, err
		}
		last, lastOff = hdr, cr.n
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeSymlink, tar.TypeLink:
		default:
			continue
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		// Sparse members are not laid out contiguously; image archives
		// never hold them.
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return nil, fmt.Errorf("member %q: unsupported sparse file", hdr.Name)
			}
		}
		m := &tarMember{name: name, typeflag: hdr.Typeflag, linkname: hdr.Linkname, ordinal: ordinal,
			off: cr.n, size: hdr.Size, mode: hdr.FileInfo().Mode(), mtime: hdr.ModTime}
		if compressed && hdr.Typeflag == tar.TypeReg && hdr.Size <= store.MaxMetadataSize && cached+int(hdr.Size) <= maxCachedMembers {
			m.data, err = io.ReadAll(tr)
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, truncated(hdr, int64(len(m.data)), err)
			}
			if err != nil {
				return nil, fmt.Errorf("member %q: %w", hdr.Name, err)
			}
			cached += len(m.data)
		}
		t.members[name] = m
	}
	return t, nil
}

// truncated says that an archive cut short ends inside member hdr, after
// read of its bytes: a copy cut short most often ends in a layer, and GNU
// tar says no more than "Unexpected EOF".
func truncated(hdr *tar.Header, read int64, err error) error {
	return fmt.Errorf("truncated: the archive ends inside member %q, after %d of its %d bytes: %w", hdr.Name, read, hdr.Size, err)
}

// resolve follows name through the archive's links to a regular member.
// A link that leads out of the archive is refused, naming it.
func (t *tarFS) resolve(name string) (*tarMember, error) {
	cur := path.Clean(name)
	for range maxLinkHops {
		m, ok := t.members[cur]
		if !ok {
			return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
		}
		var next string
		switch m.typeflag {
		case tar.TypeReg:
			return m, nil
		case tar.TypeSymlink:
			next = path.Join(path.Dir(m.name), m.linkname)
		case tar.TypeLink:
			next = path.Clean(strings.TrimPrefix(m.linkname, "./"))
		}
		if path.IsAbs(m.linkname) || next == ".." || strings.HasPrefix(next, "../") {
			return nil, fmt.Errorf("member %q links to %q, outside the archive", m.name, m.linkname)
		}
		cur = next
	}
	return nil, fmt.Errorf("member %q: more than %d links", name, maxLinkHops)
}

func (t *tarFS) Open(name string) (fs.File, error) {
	m, err := t.resolve(name)
	if err != nil {
		return nil, err
	}
	file := &tarFile{name: name, m: m}
	switch {
	case m.data != nil:
		file.r = bytes.NewReader(m.data)
	case !t.compressed:
		file.r = io.NewSectionReader(t.f, m.off, m.size)
	default:
		if err := t.stream(file); err != nil {
			return nil, fmt.Errorf("open %s: %w", name, err)
		}
	}
	return file, nil
}

// stream positions a decompression of the archive at file's member: an
// idle one that has not passed it, so that members read in archive order
// cost one decompression between them, else a new one.
func (t *tarFS) stream(file *tarFile) error {
	s := t.takeIdle(file.m.ordinal)
	if s != nil {
		if err := s.advance(file.m.ordinal); err != nil {
			s = nil // a stream left broken by its last reader
		}
	}
	if s == nil {
		tr, _, done, err := openStream(t.f)
		if err != nil {
			return err
		}
		s = &archiveStream{tr: tr, at: -1, done: done}
		if err := s.advance(file.m.ordinal); err != nil {
			return fmt.Errorf("archive changed since it was read: %w", err)
		}
	}
	file.r = s.tr
	file.close = func() { t.putIdle(s) }
	return nil
}

// advance reads headers until s is at member ordinal; on error s is done.
func (s *archiveStream) advance(ordinal int) error {
	for s.at < ordinal {
		if _, err := s.tr.Next(); err != nil {
			s.done()
			return err
		}
		s.at++
	}
	return nil
}

// takeIdle takes the idle stream nearest before member ordinal, if any.
func (t *tarFS) takeIdle(ordinal int) *archiveStream {
	t.mu.Lock()
	defer t.mu.Unlock()
	best := -1
	for i, s := range t.idle {
		if s.at < ordinal && (best < 0 || s.at > t.idle[best].at) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	s := t.idle[best]
	t.idle = slices.Delete(t.idle, best, best+1)
	return s
}

func (t *tarFS) putIdle(s *archiveStream) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.idle = append(t.idle, s)
	if len(t.idle) > maxIdleStreams {
		// The stream furthest behind is the least likely to be reused.
		slices.SortFunc(t.idle, func(a, b *archiveStream) int { return b.at - a.at })
		t.idle[maxIdleStreams].done()
		t.idle = t.idle[:maxIdleStreams]
	}
}

// Close ends the idle decompressions and closes the archive.
func (t *tarFS) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.idle {
		s.done()
	}
	t.idle = nil
	return t.f.Close()
}

type tarFile struct {
	r     io.Reader
	close func()
	name  string
	m     *tarMember
}

func (f *tarFile) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *tarFile) Stat() (fs.FileInfo, error) { return f, nil }
func (f *tarFile) Close() error {
	if f.close != nil {
		f.close()
		f.close = nil
	}
	return nil
}
func (f *tarFile) Name() string       { return path.Base(f.name) }
func (f *tarFile) Size() int64        { return f.m.size }
func (f *tarFile) Mode() fs.FileMode  { return f.m.mode }
func (f *tarFile) ModTime() time.Time { return f.m.mtime }
func (f *tarFile) IsDir() bool        { return false }
func (f *tarFile) Sys() any           { return nil }

var errNotImage = errors.New("neither an OCI image layout (index.json) nor a docker-archive (manifest.json)")

// errLegacyArchive names the docker save format of before docker 1.10.
var errLegacyArchive = errors.New("a legacy docker-archive (before docker 1.10: a repositories file and a json per layer, no manifest.json) is not supported: load it into docker and save it again")

// skopeoDirError refuses src, a directory that skopeo's dir: transport
// wrote, or a tar of one, saying how to make it what import reads.
func skopeoDirError(src string, fsys fs.FS) error {
	dir := "DIR"
	if _, ok := fsys.(dirFS); ok {
		dir = src
	}
	return fmt.Errorf("a directory of skopeo's dir: transport (one image's manifest.json and its blobs, no index.json) is not one import reads: skopeo copy dir:%s oci-archive:FILE makes an archive layerfs import reads", dir)
}

// isSkopeoDir reports a directory written by skopeo's dir: transport: its
// version file says so, or its manifest.json is one manifest (a JSON
// object) where a docker-archive's is a list.
func isSkopeoDir(fsys fs.FS) bool {
	if f, err := fsys.Open("version"); err == nil {
		head := make([]byte, 64)
		n, _ := io.ReadFull(f, head)
		f.Close()
		if bytes.HasPrefix(head[:n], []byte("Directory Transport Version:")) {
			return true
		}
	}
	f, err := fsys.Open("manifest.json")
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 512)
	n, _ := io.ReadFull(f, head)
	first := bytes.TrimLeft(head[:n], " \t\r\n")
	return len(first) > 0 && first[0] == '{'
}
