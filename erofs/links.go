package erofs

import (
	"encoding/binary"
	"fmt"
	"io"
)

// linkTable makes hardlinks one inode. go-erofs writes an inode for every
// path it is given and has no way to name one inode twice, so the first
// name of each file is written whole, later names as empty placeholders,
// and once the image is complete rewriteNids points each later name's
// directory entry at the first name's inode (docs/erofs.md).
type linkTable struct {
	first map[uint64]string
	// later maps each later name to the first name of its file.
	later map[string]string
}

func newLinkTable() *linkTable {
	return &linkTable{first: map[uint64]string{}, later: map[string]string{}}
}

// add records name as a name of the file ino and says whether the file has
// been seen under another name already.
func (t *linkTable) add(name string, ino uint64, nlink uint32) bool {
	if ino == 0 || nlink < 2 {
		return false
	}
	first, seen := t.first[ino]
	if !seen {
		t.first[ino] = name
		return false
	}
	t.later[name] = first
	return true
}

// rewriteNids finishes the image go-erofs wrote: it keeps the root's
// inode number from being 0, makes each hardlink's later names point at
// the first name's inode, leaves the placeholders out of the superblock's
// inode count, and stores the UUID.
//
// go-erofs writes the metadata after the data, the root's inode first, so
// the root's nid, which the kernel gives as its inode number, is 0, and
// glibc's readdir drops every entry whose inode number is 0: "." and ".."
// of the root and ".." of its children would vanish from listings.
// Starting the metadata area one block earlier, in the last data block,
// which no nid points into, adds blockSize/32 to every nid: the
// superblock's root nid and every directory entry's are rewritten to
// match.
//
// The metadata area is read once, rewritten in memory and written back
// whole, as are the directories' blocks in the data area: one pass over
// the directory tree, with no lookup by path.
func rewriteNids(img Output, size int64, links *linkTable, uuid [16]byte) error {
	sb := make([]byte, superblockSize)
	if _, err := img.ReadAt(sb, superblockOff); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	blockSize := int64(1) << sb[sbBlkSizeBitsOff]
	metaAddr := int64(binary.LittleEndian.Uint32(sb[sbMetaBlkAddrOff:]))
	rootNid := uint64(binary.LittleEndian.Uint16(sb[sbRootNidOff:]))
	if metaAddr == 0 {
		return fmt.Errorf("metadata starts at block 0: no block before it to start from")
	}
	shift := uint64(blockSize / inodeSlotSize)
	if rootNid+shift > 0xffff {
		return fmt.Errorf("root nid %d cannot grow by %d", rootNid, shift)
	}
	t := &tree{img: img, blockSize: blockSize, metaStart: metaAddr * blockSize, blocks: map[int64][]byte{}}
	t.meta = make([]byte, size-t.metaStart)
	if _, err := img.ReadAt(t.meta, t.metaStart); err != nil {
		return fmt.Errorf("read metadata: %w", err)
	}

	// Every entry gets the shift; the later names of hardlinks are
	// rewritten once the walk has found every first name's nid.
	wanted := make(map[string]bool, len(links.later))
	for _, first := range links.later {
		wanted[first] = true
	}
	firstNid := make(map[string]uint64, len(wanted))
	laterAt := make(map[string][]byte, len(links.later))
	err := t.walk(rootNid, "", func(p string, nid uint64, ent []byte) error {
		if wanted[p] {
			firstNid[p] = nid
		}
		if _, ok := links.later[p]; ok {
			laterAt[p] = ent
		}
		binary.LittleEndian.PutUint64(ent, nid+shift)
		return nil
	})
	if err != nil {
		return err
	}
	for name, first := range links.later {
		nid, ok := firstNid[first]
		ent, found := laterAt[name]
		if !ok || !found {
			return fmt.Errorf("hardlink %s to %s: not both in the image", name, first)
		}
		binary.LittleEndian.PutUint64(ent, nid+shift)
	}

	// go-erofs counted the placeholders as inodes; the kernel gives the
	// count as the inodes in use (statfs, df -i), which mkfs.erofs makes
	// the files of the tree, a hardlinked file once.
	inos := binary.LittleEndian.Uint64(sb[sbInosOff:])
	if later := uint64(len(links.later)); inos > later {
		binary.LittleEndian.PutUint64(sb[sbInosOff:], inos-later)
	}
	binary.LittleEndian.PutUint16(sb[sbRootNidOff:], uint16(rootNid+shift))
	binary.LittleEndian.PutUint32(sb[sbMetaBlkAddrOff:], uint32(metaAddr-1))
	copy(sb[sbUUIDOff:], uuid[:])
	if err := writeAt(img, sb, superblockOff); err != nil {
		return fmt.Errorf("write superblock: %w", err)
	}
	if err := writeAt(img, t.meta, t.metaStart); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	for off, blk := range t.blocks {
		if err := writeAt(img, blk, off); err != nil {
			return fmt.Errorf("write directory block at %d: %w", off, err)
		}
	}
	return nil
}

func writeAt(img io.WriteSeeker, b []byte, off int64) error {
	if _, err := img.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := img.Write(b)
	return err
}

// tree reads an image's directories: the metadata area in memory, and the
// directory blocks of the data area as the walk meets them, kept to be
// written back.
type tree struct {
	img       io.ReaderAt
	blockSize int64
	metaStart int64
	meta      []byte
	blocks    map[int64][]byte
}

// bytes returns the n bytes of the image at off, from memory: the
// metadata area, or a data block read once.
func (t *tree) bytes(off, n int64) ([]byte, error) {
	if off >= t.metaStart {
		rel := off - t.metaStart
		if rel+n > int64(len(t.meta)) {
			return nil, fmt.Errorf("%d bytes at %d: past the end of the image", n, off)
		}
		return t.meta[rel : rel+n], nil
	}
	if off%t.blockSize != 0 || n > t.blockSize {
		return nil, fmt.Errorf("%d bytes at %d: not within one data block", n, off)
	}
	blk, ok := t.blocks[off]
	if !ok {
		blk = make([]byte, t.blockSize)
		if _, err := t.img.ReadAt(blk, off); err != nil {
			return nil, fmt.Errorf("read directory block at %d: %w", off, err)
		}
		t.blocks[off] = blk
	}
	return blk[:n], nil
}

// walk calls fn with every directory entry under the directory inode dir
// (at path prefix), "." and ".." included, depth first: its path, its nid
// as go-erofs wrote it, and its 12 bytes, which fn may change. Entries
// that are directories are walked in turn.
func (t *tree) walk(dir uint64, prefix string, fn func(p string, nid uint64, ent []byte) error) error {
	type child struct {
		nid  uint64
		path string
	}
	var subdirs []child
	err := t.eachBlock(dir, func(blk []byte) error {
		count := int(binary.LittleEndian.Uint16(blk[8:])) / direntSize
		if count == 0 || count*direntSize > len(blk) {
			return fmt.Errorf("directory inode %d: damaged block", dir)
		}
		for i := 0; i < count; i++ {
			ent := blk[i*direntSize : (i+1)*direntSize]
			start, end := int(binary.LittleEndian.Uint16(ent[8:])), len(blk)
			if i+1 < count {
				end = int(binary.LittleEndian.Uint16(blk[(i+1)*direntSize+8:]))
			}
			if start > end || end > len(blk) {
				return fmt.Errorf("directory inode %d: damaged block", dir)
			}
			name := blk[start:end]
			for i+1 == count && len(name) > 0 && name[len(name)-1] == 0 {
				name = name[:len(name)-1]
			}
			p := string(name)
			if prefix != "" {
				p = prefix + "/" + p
			}
			nid := binary.LittleEndian.Uint64(ent)
			if ent[10] == fileTypeDir && string(name) != "." && string(name) != ".." {
				subdirs = append(subdirs, child{nid, p})
			}
			if err := fn(p, nid, ent); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, c := range subdirs {
		if err := t.walk(c.nid, c.path, fn); err != nil {
			return err
		}
	}
	return nil
}

// eachBlock calls fn with each block of the directory inode dir's
// entries, the inline tail included.
func (t *tree) eachBlock(dir uint64, fn func(blk []byte) error) error {
	inodeOff := t.metaStart + int64(dir)*inodeSlotSize
	hdr, err := t.bytes(inodeOff, compactInodeSize)
	if err != nil {
		return fmt.Errorf("directory inode %d: %w", dir, err)
	}
	format := binary.LittleEndian.Uint16(hdr[0:])
	xattrCount := int64(binary.LittleEndian.Uint16(hdr[2:]))
	inodeSize, dirSize := int64(compactInodeSize), int64(binary.LittleEndian.Uint32(hdr[8:]))
	if format&1 == 1 {
		if hdr, err = t.bytes(inodeOff, extendedInode); err != nil {
			return fmt.Errorf("directory inode %d: %w", dir, err)
		}
		inodeSize, dirSize = extendedInode, int64(binary.LittleEndian.Uint64(hdr[8:]))
	}
	blkAddr := int64(binary.LittleEndian.Uint32(hdr[16:]))
	var xattrSize int64
	if xattrCount > 0 {
		xattrSize = 12 + (xattrCount-1)*4
	}
	layout := format >> 1 & 7
	if layout != layoutFlatPlain && layout != layoutFlatInline {
		return fmt.Errorf("directory inode %d has data layout %d", dir, layout)
	}
	for start := int64(0); start < dirSize; start += t.blockSize {
		n := min(t.blockSize, dirSize-start)
		at := (blkAddr + start/t.blockSize) * t.blockSize
		if layout == layoutFlatInline && start+t.blockSize > dirSize && dirSize%t.blockSize != 0 {
			at = inodeOff + inodeSize + xattrSize
		}
		blk, err := t.bytes(at, n)
		if err == nil && n < direntSize {
			err = fmt.Errorf("a block of %d bytes", n)
		}
		if err != nil {
			return fmt.Errorf("directory inode %d: %w", dir, err)
		}
		if err := fn(blk); err != nil {
			return err
		}
	}
	return nil
}
