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

// Cover is how one layer's directory hides a lower layer's entry of a
// name, in the order the rules apply (docs/semantics.md): an opaque
// directory before a replacing entry before a whiteout marker.
type Cover int

const (
	// Uncovered: the layer hides nothing of the name; a lower directory
	// merges with the layer's own directory of that name, if any.
	Uncovered Cover = iota
	// CoveredByOpaque: the directory is opaque.
	CoveredByOpaque
	// CoveredByReplace: the layer has a non-directory of that name, or a
	// directory over a lower non-directory: the two do not merge.
	CoveredByReplace
	// CoveredByWhiteout: the layer has a .wh.NAME marker.
	CoveredByWhiteout
)

// Layered is what one layer's directory holds for a name: its own entry,
// whether it whites the name out, and whether the directory is opaque.
// Lookup and the explanation of a view both decide through Covers.
type Layered struct {
	Child    int
	Found    bool
	IsDir    bool
	Whiteout bool
	Opaque   bool
}

// At looks name up in one layer's directory d.
func At(d Dir, name string) Layered {
	l := Layered{Opaque: d.Opaque()}
	l.Child, l.Found = d.Lookup(name)
	l.IsDir = l.Found && d.IsDir(l.Child)
	_, l.Whiteout = d.Lookup(Prefix + name)
	return l
}

// Covers says how the layer hides a lower layer's entry of the name,
// lowerIsDir telling whether that entry is a directory.
func (l Layered) Covers(lowerIsDir bool) Cover {
	switch {
	case l.Opaque:
		return CoveredByOpaque
	case l.Found && (!l.IsDir || !lowerIsDir):
		return CoveredByReplace
	case l.Whiteout:
		return CoveredByWhiteout
	}
	return Uncovered
}

// Lookup resolves name in a merged directory. stack is the directory's
// layers, highest first. It returns the layer entries that make up the
// merged child, highest first: one Source for a non-directory, and for a
// directory every layer whose same-named directory merges into it. A
// layer's entry is shown exactly when no layer above Covers it.
func Lookup(stack []Dir, name string) []Source {
	if IsMarker(name) {
		return nil
	}
	var found []Source
	dirsCovered, othersCovered := false, false
	for pos, d := range stack {
		l := At(d, name)
		if l.Found && !(l.IsDir && dirsCovered || !l.IsDir && othersCovered) {
			found = append(found, Source{pos, l.Child})
		}
		dirsCovered = dirsCovered || l.Covers(true) != Uncovered
		othersCovered = othersCovered || l.Covers(false) != Uncovered
		if dirsCovered {
			// Whatever covers a directory covers everything.
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
