package store

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// openSource opens an image source, a directory or a tar file, as a file
// system. A tar is indexed once, then its members are read in place.
func openSource(p string) (fs.FS, io.Closer, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, nil, err
	}
	if st.IsDir() {
		return os.DirFS(p), io.NopCloser(nil), nil
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
	return t, f, nil
}

// tarFS serves the regular files of an uncompressed tar read at offsets.
type tarFS struct {
	r       io.ReaderAt
	members map[string]tarMember
}

type tarMember struct {
	off, size int64
	mode      fs.FileMode
	mtime     time.Time
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

func indexTar(f *os.File) (*tarFS, error) {
	cr := &countingReader{r: f}
	tr := tar.NewReader(cr)
	t := &tarFS{r: f, members: map[string]tarMember{}}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if len(t.members) == 0 {
				return nil, fmt.Errorf("not a tar archive: %w", err)
			}
			return nil, err
		}
		if hdr.Typeflag != tar.TypeReg {
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
		t.members[name] = tarMember{off: cr.n, size: hdr.Size, mode: hdr.FileInfo().Mode(), mtime: hdr.ModTime}
	}
	return t, nil
}

func (t *tarFS) Open(name string) (fs.File, error) {
	m, ok := t.members[path.Clean(name)]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &tarFile{SectionReader: io.NewSectionReader(t.r, m.off, m.size), name: name, m: m}, nil
}

type tarFile struct {
	*io.SectionReader
	name string
	m    tarMember
}

func (f *tarFile) Stat() (fs.FileInfo, error) { return f, nil }
func (f *tarFile) Close() error               { return nil }
func (f *tarFile) Name() string               { return path.Base(f.name) }
func (f *tarFile) Mode() fs.FileMode          { return f.m.mode }
func (f *tarFile) ModTime() time.Time         { return f.m.mtime }
func (f *tarFile) IsDir() bool                { return false }
func (f *tarFile) Sys() any                   { return nil }

var errNotImage = errors.New("neither an OCI image layout (index.json) nor a docker-archive (manifest.json)")
