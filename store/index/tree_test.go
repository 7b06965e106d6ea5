package index

import (
	"bytes"
	"io"
	"sort"
)

// The tree below builds small indexes for the tests: the importer writes
// records one at a time through Writer, in the order it numbers them.

// Node is an entry being assembled, with its children.
type Node struct {
	Entry
	Children map[string]*Node
	inodeOf  *Node
}

// NewRoot returns the implied root directory of a layer.
func NewRoot() *Node {
	return &Node{Entry: Entry{Type: TypeDir, Flags: FlagImplied, Mode: 0o755}, Children: map[string]*Node{}}
}

// Write serializes the tree under root into f, numbering the records.
func Write(f io.Writer, root *Node, info Info) error {
	var order []*Node
	order = append(order, root)
	for i := 0; i < len(order); i++ {
		n := order[i]
		if n.Type != TypeDir {
			continue
		}
		names := make([]string, 0, len(n.Children))
		for name := range n.Children {
			names = append(names, name)
		}
		sort.Strings(names)
		n.ChildStart, n.ChildCount = uint32(len(order)), uint32(len(names))
		for _, name := range names {
			c := n.Children[name]
			c.Parent = uint32(i)
			order = append(order, c)
		}
	}
	number := make(map[*Node]uint32, len(order))
	var strLen int64
	info.XattrEntries = 0
	for i, n := range order {
		number[n] = uint32(i)
		strLen += StringBytes(n.Entry)
		if len(n.Xattrs) > 0 {
			info.XattrEntries++
		}
	}
	var spool bytes.Buffer
	w, err := NewWriter(f, &spool, len(order), strLen, info)
	if err != nil {
		return err
	}
	for i, n := range order {
		n.Inode = uint32(i)
		if n.inodeOf != nil {
			n.Inode = number[n.inodeOf]
		}
		if err := w.Add(n.Entry); err != nil {
			return err
		}
	}
	return w.Close()
}

// LinkTo makes n another name of the file target: the same inode.
func (n *Node) LinkTo(target *Node) { n.inodeOf = target }
