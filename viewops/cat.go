package viewops

import (
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/opencontainers/go-digest"
)

// Cat writes the bytes of the file at path p of v to w, p resolved as in
// a mount of the view, chrooted to it: symlinks are followed inside the
// view. The view holds no bytes for a device or FIFO, so only a regular
// file is read.
func Cat(w io.Writer, v *stack.View, p string, openObject func(digest.Digest) (*os.File, error)) error {
	r, err := resolve(v, p, true)
	if err != nil {
		return fmt.Errorf("cat: %w", err)
	}
	shown := givenPath(p)
	switch r.Attr.Type {
	case view.TypeReg:
	case view.TypeDir:
		return fmt.Errorf("cat: %s: %w", shown, syscall.EISDIR)
	default:
		return fmt.Errorf("cat: %s: a device or FIFO, whose bytes no view holds", shown)
	}
	if r.Attr.Size == 0 {
		return nil
	}
	return copyContent(w, "cat "+shown, r.Attr, openObject)
}

// copyContent writes the bytes of regular file a, checking that its
// object holds as many as the index says; op names what is being done,
// and to what, in its errors.
func copyContent(w io.Writer, op string, a view.Attr, openObject func(digest.Digest) (*os.File, error)) error {
	f, err := openObject(a.Object)
	if err != nil {
		return fmt.Errorf("%s: object %s: %w", op, a.Object, err)
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, a.Size+1))
	if err != nil {
		return fmt.Errorf("%s: object %s: %w", op, a.Object, err)
	}
	if n != a.Size {
		return fmt.Errorf("%s: object %s holds %d bytes where the index says %d: %w (\"layerfs verify\" re-hashes every object)", op, a.Object, n, a.Size, view.ErrDamagedObject)
	}
	return nil
}
