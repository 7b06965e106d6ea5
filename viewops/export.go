package viewops

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/opencontainers/go-digest"
)

// Export writes merged view v as one PAX tar stream: every path in Walk's
// order, the root as "./" and every directory with an entry of its own,
// mtimes with nanoseconds, xattrs as SCHILY.xattr records, and the names
// of one file after the first as hardlinks to that first name. A view
// shows no whiteout markers, so the stream holds none. Contents are read
// through openObject one file at a time. A single-layer view is exported
// as that layer merged over nothing: without its markers.
func Export(w io.Writer, v *stack.View, openObject func(digest.Digest) (*os.File, error)) error {
	if v.Kind() != view.Merged {
		// The single-layer view shows markers as files, which any reader
		// of the tar would take for whiteouts: export the layer merged.
		v = v.Merged(len(v.Layers))
	}
	x := &exporter{tw: tar.NewWriter(w), openObject: openObject, first: map[uint64]string{}}
	if err := Walk(v, "", x.add); err != nil {
		return err
	}
	if err := x.tw.Close(); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}

type exporter struct {
	tw         *tar.Writer
	openObject func(digest.Digest) (*os.File, error)
	// first is the name written for each file that may have several.
	first map[uint64]string
}

func (x *exporter) add(p string, _ view.Node, a view.Attr) error {
	h := &tar.Header{
		Name:    p,
		Mode:    int64(a.Mode),
		Uid:     int(a.UID),
		Gid:     int(a.GID),
		ModTime: time.Unix(a.Mtime, int64(a.MtimeNs)),
		Format:  tar.FormatPAX,
	}
	if len(a.Xattrs) > 0 {
		h.PAXRecords = make(map[string]string, len(a.Xattrs))
		for _, xa := range a.Xattrs {
			h.PAXRecords["SCHILY.xattr."+xa.Name] = xa.Value
		}
	}
	if mayHaveNames(a) {
		if first, ok := x.first[a.Ino]; ok {
			h.Typeflag, h.Linkname = tar.TypeLink, first
			return x.header(h)
		}
		x.first[a.Ino] = p
	}
	switch a.Type {
	case view.TypeDir:
		h.Typeflag = tar.TypeDir
		h.Name += "/"
		if p == "" {
			h.Name = "./"
		}
	case view.TypeReg:
		h.Typeflag, h.Size = tar.TypeReg, a.Size
	case view.TypeSymlink:
		h.Typeflag, h.Linkname = tar.TypeSymlink, a.Link
	case view.TypeChar:
		h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, int64(a.Major), int64(a.Minor)
	case view.TypeBlock:
		h.Typeflag, h.Devmajor, h.Devminor = tar.TypeBlock, int64(a.Major), int64(a.Minor)
	case view.TypeFifo:
		h.Typeflag = tar.TypeFifo
	default:
		return fmt.Errorf("export %s: cannot write type %d", showPath(p), a.Type)
	}
	if err := x.header(h); err != nil {
		return err
	}
	if a.Type == view.TypeReg && a.Size > 0 {
		return copyContent(x.tw, "export "+showPath(p), a, x.openObject)
	}
	return nil
}

func (x *exporter) header(h *tar.Header) error {
	if err := x.tw.WriteHeader(h); err != nil {
		return fmt.Errorf("export %s: %w", h.Name, err)
	}
	return nil
}

// mayHaveNames is whether a may be one of several names of a file. The
// link count a view shows counts names only for files and symlinks: a
// device or FIFO may be hardlinked too.
func mayHaveNames(a view.Attr) bool {
	switch a.Type {
	case view.TypeDir:
		return false
	case view.TypeReg, view.TypeSymlink:
		return a.Nlink > 1
	}
	return true
}
