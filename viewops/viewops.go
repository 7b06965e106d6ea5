// Package viewops answers questions about a store view from its layer
// indexes alone, with no mount: which layer provides a path and what it
// hides (Which), what changed between two views (Diff), a listing in the
// form of ls -l (List), and the whole view as one tar stream (Export).
package viewops

import (
	"fmt"
	"path"
	"strings"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/store/index"
)

// FileID is a file's identity in a view: two paths have the same FileID
// exactly when they are names of one file (hardlinks).
type FileID struct {
	Layer int
	Inode uint32
}

// Attr is what a view shows for one path.
type Attr struct {
	// Entry holds the attributes; its Type is never TypeLowerLink.
	index.Entry
	ID FileID
}

// Stat returns the attributes node n shows. A hardlink to a lower layer's
// file shows that file; in a single-layer view, where nothing lies beneath
// to resolve it in, it is an empty regular file, as the mount shows it.
func Stat(v *store.View, n store.Node) (Attr, error) {
	e, ref, err := v.Entry(n)
	if err != nil {
		return Attr{}, err
	}
	return Attr{Entry: e, ID: FileID{Layer: ref.Layer, Inode: v.Layers[ref.Layer].Index.InodeOf(ref.Rec)}}, nil
}

// CleanPath turns a path as a user writes it ("/etc/", "./etc", "") into
// the form views and indexes use: no leading or trailing slash, "" for
// the root.
func CleanPath(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// resolve finds p in v, or fails naming it.
func resolve(v *store.View, p string) (store.Node, error) {
	n, ok, err := v.Resolve(p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", showPath(p), err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: %w in the view", showPath(p), store.ErrNotFound)
	}
	return n, nil
}

// lookup finds name, at path p, in directory dir, which listed it.
func lookup(v *store.View, dir store.Node, p, name string) (store.Node, error) {
	n, ok, err := v.Lookup(dir, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", showPath(p), err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: listed but not found: %w", showPath(p), store.ErrCorrupt)
	}
	return n, nil
}

// showPath names a path in messages; the root is "/".
// showPath prints p for messages and line-oriented output, quoted when
// it holds a newline, tab, backslash or other control character.
func showPath(p string) string {
	return output.Name("/" + p)
}

// WalkFunc is called for every path Walk visits, p as CleanPath gives it.
type WalkFunc func(p string, n store.Node, a Attr) error

// Walk calls fn for p and every path beneath it, depth first, each
// directory's children sorted by name, as tar --sort=name archives:
// "d", "d/x", "d-x". A directory's subtree follows it with nothing in
// between, which GNU tar needs to restore the directory's mtime once it
// has written into it. Walk holds only the directories on the way down.
func Walk(v *store.View, p string, fn WalkFunc) error {
	p = CleanPath(p)
	n, err := resolve(v, p)
	if err != nil {
		return err
	}
	return walkFrom(v, p, n, fn)
}

// walkFrom is Walk from node n, found at p.
func walkFrom(v *store.View, p string, n store.Node, fn WalkFunc) error {
	a, err := Stat(v, n)
	if err != nil {
		return fmt.Errorf("%s: %w", showPath(p), err)
	}
	if err := fn(p, n, a); err != nil {
		return err
	}
	if a.Type != index.TypeDir {
		return nil
	}
	return walkDir(v, p, n, fn)
}

func walkDir(v *store.View, dir string, n store.Node, fn WalkFunc) error {
	children, err := v.List(n)
	if err != nil {
		return fmt.Errorf("%s: %w", showPath(dir), err)
	}
	for _, c := range children {
		p := join(dir, c.Name)
		cn, err := lookup(v, n, p, c.Name)
		if err != nil {
			return err
		}
		if err := walkFrom(v, p, cn, fn); err != nil {
			return err
		}
	}
	return nil
}
