// Package viewops answers questions about a view with no mount: what
// changed between two views (Diff), a listing in the form of ls -l
// (List), one file's bytes (Cat), and the whole view as one tar stream
// (Export). Which layer
// provides a path is the view's own answer (stack.View.Which).
package viewops

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
)

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// resolve finds p in v as a mount of v shows it, following symlinks on
// the way and, when followLast, at its end; or fails naming it.
func resolve(v *stack.View, p string, followLast bool) (view.Resolved, error) {
	r, err := view.ResolvePath(v, p, followLast)
	if errors.Is(err, fs.ErrNotExist) {
		return r, fmt.Errorf("%s: %w in the view", givenPath(p), stack.ErrNotFound)
	}
	if err != nil {
		return r, fmt.Errorf("%s: %w", givenPath(p), err)
	}
	return r, nil
}

// lookup finds name, at path p, in directory dir, which listed it.
func lookup(v *stack.View, dir view.Node, p, name string) (view.Node, error) {
	n, ok, err := v.Lookup(dir, name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", showPath(p), err)
	}
	if !ok {
		return nil, fmt.Errorf("%s: listed but not found: %w", showPath(p), stack.ErrCorrupt)
	}
	return n, nil
}

// showPath prints p for messages and line-oriented output, quoted when
// it holds a newline, tab, backslash or other control character.
func showPath(p string) string {
	return output.Name("/" + p)
}

// givenPath prints p as it was given, for the errors of resolving it:
// cleaning it would name another path, since ".." after a symlink climbs
// from where the link leads ("/bin/.." is "/usr" where bin -> usr/bin).
func givenPath(p string) string {
	return showPath(strings.TrimPrefix(p, "/"))
}

// WalkFunc is called for every path Walk visits, p as CleanPath gives it.
type WalkFunc func(p string, n view.Node, a view.Attr) error

// Walk calls fn for p and every path beneath it, depth first, each
// directory's children sorted by name, as tar --sort=name archives:
// "d", "d/x", "d-x". A directory's subtree follows it with nothing in
// between, which GNU tar needs to restore the directory's mtime once it
// has written into it. Walk holds only the directories on the way down.
func Walk(v *stack.View, p string, fn WalkFunc) error {
	r, err := resolve(v, p, false)
	if err != nil {
		return err
	}
	return walkFrom(v, r.Path, r.Node, fn)
}

// walkFrom is Walk from node n, found at p.
func walkFrom(v *stack.View, p string, n view.Node, fn WalkFunc) error {
	a, err := v.Attr(n)
	if err != nil {
		return fmt.Errorf("%s: %w", showPath(p), err)
	}
	if err := fn(p, n, a); err != nil {
		return err
	}
	if a.Type != view.TypeDir {
		return nil
	}
	return walkDir(v, p, n, fn)
}

func walkDir(v *stack.View, dir string, n view.Node, fn WalkFunc) error {
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
