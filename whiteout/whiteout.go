// Package whiteout holds the OCI whiteout rules: what a marker name means,
// which marker names are malformed, and how the listings of a stack of
// layers merge into one directory. It knows nothing of disks or FUSE: a
// layer's directory is anything that implements Dir.
package whiteout

import (
	"fmt"
	"sort"
	"strings"
)

const (
	// Prefix starts every whiteout marker name.
	Prefix = ".wh."
	// Opaque is the marker that hides every lower child of its directory.
	Opaque = Prefix + Prefix + ".opq"
	// metaPrefix starts aufs bookkeeping names (".wh..wh.plnk" and the like).
	// They are markers, so never shown merged, but hide nothing.
	metaPrefix = Prefix + Prefix
)

// IsMarker reports whether a base name is a whiteout marker of any kind.
func IsMarker(name string) bool { return strings.HasPrefix(name, Prefix) }

// Hidden returns the name that marker hides in lower layers, if it hides one.
func Hidden(marker string) (string, bool) {
	if !IsMarker(marker) || strings.HasPrefix(marker, metaPrefix) {
		return "", false
	}
	return marker[len(Prefix):], true
}

// Validate refuses a marker whose hidden name is empty, "." or "..", or
// would reach outside its directory.
func Validate(marker string) error {
	if !IsMarker(marker) || strings.HasPrefix(marker, metaPrefix) {
		return nil
	}
	switch name := marker[len(Prefix):]; {
	case name == "":
		return fmt.Errorf("whiteout %q hides an empty name", marker)
	case name == "." || name == "..":
		return fmt.Errorf("whiteout %q hides %q", marker, name)
	case strings.ContainsRune(name, '/'):
		return fmt.Errorf("whiteout %q leaves its directory", marker)
	}
	return nil
}

// Dir is one layer's entries for one directory path.
type Dir interface {
	// Lookup finds the child called name, returning its handle.
	Lookup(name string) (child int, ok bool)
	// IsDir reports whether a child found by Lookup or Each is a directory.
	IsDir(child int) bool
	// Each calls fn for every child, markers included, in any order.
	Each(fn func(name string, child int))
	// Opaque reports whether this layer's directory is opaque: lower
	// layers' children of the same path are hidden.
	Opaque() bool
}

// Source is one layer's entry for a path: Layer is the position in the
// stack given to Lookup or List, Child the handle that layer's Dir gave.
type Source struct {
	Layer int
	Child int
}

// Lookup resolves name in a merged directory. stack is the directory's
// layers, highest first. It returns the layer entries that make up the
// merged child, highest first: one Source for a non-directory, and for a
// directory every layer whose same-named directory merges into it.
func Lookup(stack []Dir, name string) []Source {
	if IsMarker(name) {
		return nil
	}
	var found []Source
	for pos, d := range stack {
		if child, ok := d.Lookup(name); ok {
			isDir := d.IsDir(child)
			if len(found) == 0 {
				found = append(found, Source{pos, child})
				if !isDir {
					return found
				}
			} else if isDir {
				found = append(found, Source{pos, child})
			} else {
				// A lower non-directory under a directory merges with nothing.
				return found
			}
		}
		if _, ok := d.Lookup(Prefix + name); ok || d.Opaque() {
			return found
		}
	}
	return found
}

// Entry is one child of a merged directory listing.
type Entry struct {
	Name string
	Top  Source
}

// List returns every child a merged directory shows, sorted by name,
// each with the highest layer entry that provides it.
func List(stack []Dir) []Entry {
	shown := map[string]Source{}
	hidden := map[string]bool{}
	for pos, d := range stack {
		var hiddenHere []string
		d.Each(func(name string, child int) {
			if IsMarker(name) {
				if h, ok := Hidden(name); ok {
					hiddenHere = append(hiddenHere, h)
				}
				return
			}
			if _, ok := shown[name]; ok || hidden[name] {
				return
			}
			shown[name] = Source{pos, child}
		})
		if d.Opaque() {
			break
		}
		for _, h := range hiddenHere {
			hidden[h] = true
		}
	}
	out := make([]Entry, 0, len(shown))
	for name, src := range shown {
		out = append(out, Entry{name, src})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
