package store

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/layerfs/layerfs/store/index"
	"github.com/layerfs/layerfs/whiteout"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
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

// EntryError names the tar entry a layer was refused for.
type EntryError struct {
	Entry string
	Err   error
}

func (e *EntryError) Error() string { return fmt.Sprintf("entry %q: %v", e.Entry, e.Err) }
func (e *EntryError) Unwrap() error { return e.Err }

// ExtractLayer makes layer desc extracted: its blob in the store and its
// index and objects written. src supplies the blob's bytes when the store
// does not hold the blob yet; it is read once, and the blob is stored and
// extracted in that one pass. diffID is the config's digest of the
// uncompressed tar. A layer already extracted is left alone, by this
// process or any other.
func (s *Store) ExtractLayer(ctx context.Context, desc ocispec.Descriptor, diffID digest.Digest, src func() (io.ReadCloser, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("layer %q: %w", desc.Digest, err)
	}
	if s.Extracted(desc.Digest) && s.HasBlob(desc.Digest) {
		return nil
	}
	if err := os.MkdirAll(s.layerDir(desc.Digest), dirMode); err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	unlock, err := lockFile(s.layerDir(desc.Digest)+".lock", unix.LOCK_EX)
	if err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	defer unlock()
	if err := s.extractLocked(ctx, desc, diffID, src); err != nil {
		return fmt.Errorf("layer %s: %w", desc.Digest, err)
	}
	return nil
}

func (s *Store) extractLocked(ctx context.Context, desc ocispec.Descriptor, diffID digest.Digest, src func() (io.ReadCloser, error)) (err error) {
	haveBlob := s.HasBlob(desc.Digest)
	if haveBlob && s.Extracted(desc.Digest) {
		return nil
	}
	var in io.ReadCloser
	var blob *Staged
	if haveBlob {
		in, err = os.Open(s.BlobPath(desc.Digest))
	} else {
		in, err = src()
	}
	if err != nil {
		return err
	}
	defer in.Close()
	meter := extractMeter(ctx, desc)
	defer func() { meter.Done(err) }()
	var r io.Reader = contextReader{ctx, in, meter}
	if !haveBlob {
		if blob, err = s.stage("blob"); err != nil {
			return err
		}
		defer blob.Abort()
		r = io.TeeReader(r, blob)
	}
	x := &extraction{store: s, root: index.NewRoot(), objects: map[digest.Digest]bool{}, meter: meter}
	defer x.abort()
	uncompressed, err := x.read(r)
	if err != nil {
		return err
	}
	if blob != nil {
		if err := blob.check(desc.Size, desc.Digest); err != nil {
			return fmt.Errorf("blob: %w", err)
		}
	}
	if diffID != "" && uncompressed != diffID {
		return fmt.Errorf("%w: uncompressed digest %s, config's diff_id %s", ErrMismatch, uncompressed, diffID)
	}
	if s.Extracted(desc.Digest) {
		// Extracted earlier from other bytes of the same digest: only the
		// blob was missing.
		return blob.Commit(s.BlobPath(desc.Digest), desc.Size, desc.Digest)
	}
	if err := x.commit(desc, uncompressed, blob); err != nil {
		return err
	}
	// Logged only by the one process that extracted the layer, so a log
	// tells how often each layer was extracted.
	logrus.WithField("layer", desc.Digest).Debug("layer extracted")
	return nil
}

// extraction is one layer being turned into objects and an index.
type extraction struct {
	store   *Store
	root    *index.Node
	links   []*pendingLink
	pending []pendingObject
	objects map[digest.Digest]bool
	content int64
	objSize int64
	buf     []byte
	meter   ExtractMeter
}

type pendingLink struct {
	node   *index.Node
	name   string
	target string
}

type pendingObject struct {
	tmp string
	d   digest.Digest
}

func (x *extraction) abort() {
	for _, p := range x.pending {
		os.Remove(p.tmp)
	}
	x.pending = nil
}

// read consumes the whole compressed stream r and returns the digest of
// the uncompressed tar.
func (x *extraction) read(r io.Reader) (digest.Digest, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	dec, closeDec, err := decompress(br)
	if err != nil {
		return "", err
	}
	defer closeDec()
	sum := sha256.New()
	tee := io.TeeReader(dec, sum)
	tr := tar.NewReader(tee)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", fmt.Errorf("read tar: %w", streamError(err))
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
	if err := x.resolveLinks(); err != nil {
		return "", err
	}
	return digest.NewDigest(digest.SHA256, sum), nil
}

func streamError(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("truncated stream: %w", err)
	}
	return err
}

func decompress(br *bufio.Reader) (io.Reader, func(), error) {
	magic, err := br.Peek(4)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("read layer: %w", err)
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		return zr, func() { zr.Close() }, nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	case bytes.HasPrefix(magic, []byte("BZh")), bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X'}):
		return nil, nil, errors.New("unsupported compression (bzip2 or xz)")
	}
	return br, func() {}, nil
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

func (x *extraction) add(hdr *tar.Header, body io.Reader) error {
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
		e.Flags = x.root.Flags & index.FlagOpaque
		x.root.Entry = e
		return nil
	}
	dir, name := path.Split(p)
	if err := whiteout.Validate(name); err != nil {
		return err
	}
	parent, err := x.mkdirs(strings.TrimSuffix(dir, "/"))
	if errors.Is(err, errNotDir) && whiteout.IsMarker(name) {
		// umoci writes, for a directory that became a file, markers for
		// the old children beneath the new file. The file hides all of
		// that path already, so they say nothing.
		return nil
	}
	if err != nil {
		return err
	}
	if name == whiteout.Opaque {
		parent.Flags |= index.FlagOpaque
	}
	e.Name = name
	node := &index.Node{Entry: e}
	if old := parent.Children[name]; old != nil && old.Type == index.TypeDir {
		if e.Type != index.TypeDir && !onlyMarkers(old) {
			return errors.New("replaces a directory that holds entries of this layer")
		}
		if e.Type == index.TypeDir {
			node.Children = old.Children
			node.Flags |= old.Flags & index.FlagOpaque
		}
	}
	if e.Type == index.TypeDir && node.Children == nil {
		node.Children = map[string]*index.Node{}
	}
	parent.Children[name] = node
	switch hdr.Typeflag {
	case tar.TypeLink:
		target, err := CleanPath(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("hardlink target %q: %w", hdr.Linkname, err)
		}
		x.links = append(x.links, &pendingLink{node: node, name: p, target: target})
	case tar.TypeReg:
		return x.storeContent(node, body)
	}
	return nil
}

// mkdirs returns the directory node at p, creating implied directories.
func (x *extraction) mkdirs(p string) (*index.Node, error) {
	n := x.root
	if p == "" {
		return n, nil
	}
	for _, c := range strings.Split(p, "/") {
		child := n.Children[c]
		if child == nil {
			child = &index.Node{Entry: index.Entry{Name: c, Type: index.TypeDir, Flags: index.FlagImplied, Mode: 0o755}, Children: map[string]*index.Node{}}
			n.Children[c] = child
		} else if child.Type != index.TypeDir {
			return nil, fmt.Errorf("%w: parent %q is a %s in this layer", errNotDir, c, child.Type)
		}
		n = child
	}
	return n, nil
}

var errNotDir = errors.New("not a directory")

// onlyMarkers reports whether everything beneath directory n is whiteout
// markers, which a non-directory replacing n may drop.
func onlyMarkers(n *index.Node) bool {
	for name, c := range n.Children {
		if !whiteout.IsMarker(name) && (c.Type != index.TypeDir || !onlyMarkers(c)) {
			return false
		}
	}
	return true
}

func headerEntry(hdr *tar.Header) (index.Entry, error) {
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
// store or this extraction holds that content already.
func (x *extraction) storeContent(node *index.Node, body io.Reader) error {
	if node.Size == 0 {
		return nil
	}
	x.content += node.Size
	if node.Size <= smallFile {
		if x.buf == nil {
			x.buf = make([]byte, smallFile)
		}
		b := x.buf[:node.Size]
		if _, err := io.ReadFull(body, b); err != nil {
			return fmt.Errorf("read content: %w", streamError(err))
		}
		node.Object = digest.FromBytes(b)
		if x.known(node.Object) {
			return nil
		}
		return x.writeObject(node.Object, bytes.NewReader(b))
	}
	w, err := x.store.stage("object")
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Abort()
		return fmt.Errorf("read content: %w", streamError(err))
	}
	if err := w.check(node.Size, ""); err != nil {
		w.Abort()
		return err
	}
	node.Object = w.Digest()
	if x.known(node.Object) {
		w.Abort()
		return nil
	}
	return x.keep(w, node.Object)
}

// known reports whether content d needs no new object, counting d as
// this layer's once.
func (x *extraction) known(d digest.Digest) bool {
	if x.objects[d] {
		return true
	}
	x.objects[d] = true
	st, err := os.Stat(x.store.ObjectPath(d))
	if err == nil {
		x.objSize += st.Size()
		return true
	}
	return false
}

func (x *extraction) writeObject(d digest.Digest, r io.Reader) error {
	w, err := x.store.stage("object")
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return fmt.Errorf("write object: %w", err)
	}
	return x.keep(w, d)
}

func (x *extraction) keep(w *Staged, d digest.Digest) error {
	x.objSize += w.Size()
	if err := w.close(); err != nil {
		return err
	}
	x.pending = append(x.pending, pendingObject{tmp: w.f.Name(), d: d})
	return nil
}

// resolveLinks turns each hardlink into another name of its target's
// inode when the target is in this layer, wherever it stands in the tar.
func (x *extraction) resolveLinks() error {
	byNode := map[*index.Node]*pendingLink{}
	for _, l := range x.links {
		byNode[l.node] = l
	}
	names := map[*index.Node]int{}
	final := map[*index.Node]*index.Node{}
	for _, l := range x.links {
		target, err := x.follow(l, byNode)
		if err != nil {
			return &EntryError{Entry: l.name, Err: err}
		}
		if target == nil {
			l.node.Link = l.target
			continue
		}
		final[l.node] = target
		names[target]++
	}
	for link, target := range final {
		name := link.Name
		link.Entry = target.Entry
		link.Name = name
		link.LinkTo(target)
	}
	for link, target := range final {
		link.Nlink = uint32(names[target] + 1)
		target.Nlink = link.Nlink
	}
	return nil
}

// follow finds the non-link node a hardlink ends at in this layer, or nil
// when its target is not in the layer.
func (x *extraction) follow(l *pendingLink, byNode map[*index.Node]*pendingLink) (*index.Node, error) {
	seen := map[*pendingLink]bool{}
	for {
		if seen[l] {
			return nil, fmt.Errorf("hardlink cycle through %q", l.target)
		}
		seen[l] = true
		target := x.lookup(l.target)
		if target == nil {
			return nil, nil
		}
		if target.Type == index.TypeDir {
			return nil, fmt.Errorf("hardlink to directory %q", l.target)
		}
		next, isLink := byNode[target]
		if !isLink {
			return target, nil
		}
		l = next
	}
}

func (x *extraction) lookup(p string) *index.Node {
	n := x.root
	for _, c := range strings.Split(p, "/") {
		if c == "" {
			continue
		}
		if n = n.Children[c]; n == nil {
			return nil
		}
	}
	return n
}

// commit makes the extraction visible. The order is what makes a crash
// at any point harmless:
//  1. objects were written to tmp/ without fsync, one syncfs makes them
//     all durable at once (cheaper than an fsync per file);
//  2. they are renamed to their content names; a name under objects/
//     therefore always holds its complete content;
//  3. a second syncfs makes those renames durable;
//  4. the blob, then the index are committed (fsync, rename, fsync dir).
//
// The index is the commit point: a layer is extracted exactly when its
// index exists, and by then everything it names is durable.
func (x *extraction) commit(desc ocispec.Descriptor, diffID digest.Digest, blob *Staged) error {
	s := x.store
	if err := s.syncfs(); err != nil {
		return err
	}
	for _, p := range x.pending {
		final := s.ObjectPath(p.d)
		if err := os.MkdirAll(path.Dir(final), dirMode); err != nil {
			return fmt.Errorf("object %s: %w", p.d, err)
		}
		if err := os.Rename(p.tmp, final); err != nil {
			return fmt.Errorf("object %s: %w", p.d, err)
		}
	}
	x.pending = nil
	if err := s.syncfs(); err != nil {
		return err
	}
	if blob != nil {
		if err := blob.Commit(s.BlobPath(desc.Digest), desc.Size, desc.Digest); err != nil {
			return fmt.Errorf("blob: %w", err)
		}
	}
	w, err := s.stage("index")
	if err != nil {
		return err
	}
	info := index.Info{DiffID: diffID, ContentBytes: x.content, ObjectBytes: x.objSize}
	if err := index.Write(w, x.root, info); err != nil {
		w.Abort()
		return err
	}
	return w.Commit(s.IndexPath(desc.Digest), -1, "")
}

func (s *Store) syncfs() error {
	d, err := os.Open(s.path(tmpDir))
	if err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	defer d.Close()
	if err := unix.Syncfs(int(d.Fd())); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}
