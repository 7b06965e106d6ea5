// Package view names what a view of layers shows, for every consumer to
// read it the same way: a kind of view, nodes, one Attr per node, and an
// io/fs.FS over any view. It holds no rule and reads no index: package
// view/stack answers every question over a stack of extracted layers, so
// a consumer such as the FUSE server depends on neither the index format
// nor the merge rules.
//
// A Go program reads an image of a store through package store, which
// opens views, and NewFS, which makes one an io/fs file system
// (ExampleNewFS runs these steps):
//
//	s, err := store.Open(root)            // OpenForWriting to import into it too
//	t, err := s.Resolve([]string{"debian"}) // a name, a digest, or layer digests
//	release, err := s.LeaseReading(ctx, t, "my-program")
//	v, err := s.OpenView(t.Digests(), view.Merged) // view.Single when t.Single
//	fsys := view.NewFS(v, view.ByName(s.OpenObject))
//	data, err := fs.ReadFile(fsys, "etc/os-release")
//	// ... fs.WalkDir, http.FS(fsys), erofs.Build(out, fsys, opts)
//	v.Close(); release(); s.Close()
//
// Store.ResolvePlatform picks another platform of an image index than the
// host's. The lease keeps a gc run meanwhile, by another process, from
// removing what the view reads, even if its image is removed; without it
// such a file fails to open with EIO. The view is closed before the store,
// since its files' contents are opened through the store. The same view
// serves a FUSE mount (package fs) or an EROFS image (package erofs).
package view

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/opencontainers/go-digest"
)

// Kind is how a view shows its layers (docs/semantics.md).
type Kind int

const (
	// Merged is a stack of layers with whiteouts applied (rules 1-10).
	Merged Kind = iota
	// Single is one layer as it was built, markers shown as the empty
	// files they are (rule S).
	Single
	// Overlay is one layer in the format kernel overlayfs stacks:
	// whiteouts as 0/0 character devices, opaque directories marked
	// (rule O).
	Overlay
)

func (k Kind) String() string {
	switch k {
	case Merged:
		return "merged"
	case Single:
		return "single-layer"
	case Overlay:
		return "overlay-format"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Ref is one layer's record: Layer is the layer's position in the view,
// lowest first.
type Ref struct {
	Layer int
	Rec   uint32
}

// Node is one path of a view: the layer records that make it up, highest
// first. A non-directory has one; a merged directory one per layer whose
// directory of that path merges into it.
type Node []Ref

// Top is the record that provides the node in the view.
func (n Node) Top() Ref { return n[0] }

// Type is the type of a node as the view shows it: an index's types
// less its hardlinks into lower layers, which a view resolves.
type Type uint8

const (
	TypeReg Type = iota + 1
	TypeDir
	TypeSymlink
	TypeChar
	TypeBlock
	TypeFifo
)

// Bits is the type as st_mode's S_IFMT bits.
func (t Type) Bits() uint32 {
	switch t {
	case TypeDir:
		return syscall.S_IFDIR
	case TypeSymlink:
		return syscall.S_IFLNK
	case TypeChar:
		return syscall.S_IFCHR
	case TypeBlock:
		return syscall.S_IFBLK
	case TypeFifo:
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

// Xattr is one extended attribute as the view shows it.
type Xattr struct {
	Name  string
	Value string
}

// Attr is everything a view shows of one node, computed once: what stat,
// readlink and the xattr calls answer, and the object to read.
type Attr struct {
	Type     Type
	Mode     uint32 // permission bits with setuid, setgid and sticky
	UID, GID uint32
	Size     int64  // as stat shows it: 4096 for a directory, the target's length for a symlink
	Nlink    uint32 // as stat shows it: 1 for a directory
	// Ino is the inode number: two paths share it exactly when they are
	// names of one file (hardlinks); the root's is 1.
	Ino          uint64
	Major, Minor uint32
	Mtime        int64 // seconds
	MtimeNs      uint32
	Link         string // symlink target
	Xattrs       []Xattr
	Object       digest.Digest // content of a non-empty regular file
	// Source is the record the node's attributes come from: its top
	// record, or for a hardlink to a lower layer's file, that file's.
	Source Ref
}

// Child is one name of a directory as the view lists it.
type Child struct {
	Name string
	Type Type
	Ino  uint64
	// Top is the record that provides the child: all of its node but
	// for a directory, whose node Lookup finds.
	Top Ref
}

// ChildNode is the node of c, a child of directory dir as List gives it:
// anything but a directory is its top record alone; only a merged
// directory is looked up, for the records beneath.
func ChildNode(v View, dir Node, c Child) (Node, bool, error) {
	if c.Type != TypeDir {
		return Node{c.Top}, true, nil
	}
	return v.Lookup(dir, c.Name)
}

// ErrDamagedObject is wrapped by errors about a file whose object does
// not hold as many bytes as the file's record says: the object was cut
// short or replaced in the store. Serving it would show the file with
// other bytes, or zeros, than the image has.
var ErrDamagedObject = errors.New("damaged object")

// View is what every consumer reads a view through. A view never
// changes, and its methods may be called from many goroutines at once;
// package view/stack's View, which store.Store's OpenView returns, is
// one.
type View interface {
	// Kind is how the view shows its layers.
	Kind() Kind
	// Root is the view's root directory, the node every path starts at.
	Root() Node
	// Lookup finds name in directory dir.
	Lookup(dir Node, name string) (Node, bool, error)
	// List returns directory dir's children, sorted by name.
	List(dir Node) ([]Child, error)
	// Attr is everything node n shows.
	Attr(n Node) (Attr, error)
	// Totals counts the entries and content bytes of the view's layers,
	// what statfs reports.
	Totals() (entries, contentBytes uint64)
	// HasXattrs is false when no node of the view can show an xattr.
	HasXattrs() bool
}
