package erofs

import (
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"path"

	goerofs "github.com/erofs/go-erofs"
)

// linkTable makes hardlinks one inode. go-erofs writes an inode for every
// path it is given and has no way to name one inode twice, so the first
// name of each file is written whole, later names as empty placeholders,
// and once the image is complete apply points each later name's directory
// entry at the first name's inode (docs/erofs.md).
type linkTable struct {
	first map[uint64]string
	later []link
}

type link struct{ name, first string }

func newLinkTable() *linkTable { return &linkTable{first: map[uint64]string{}} }

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
	t.later = append(t.later, link{name: name, first: first})
	return true
}

// On-disk EROFS layout facts the rewrite needs (the kernel's erofs_fs.h).
const (
	sbRootNidOff     = superblockOff + 14
	sbMetaBlkAddrOff = superblockOff + 40
	sbBlkSizeBitsOff = superblockOff + 12
	inodeSlotSize    = 32
	compactInodeSize = 32
	extendedInode    = 64
	direntSize       = 12
	layoutFlatPlain  = 0
	layoutFlatInline = 2
)

func (t *linkTable) apply(img Output, size int64) error {
	if len(t.later) == 0 {
		return nil
	}
	fsys, geo, err := readBack(img, size)
	if err != nil {
		return err
	}
	for _, l := range t.later {
		target, err := nid(fsys, l.first)
		if err != nil {
			return err
		}
		parent, err := nid(fsys, path.Dir(l.name))
		if err != nil {
			return err
		}
		off, err := geo.direntOffset(parent, path.Base(l.name))
		if err != nil {
			return fmt.Errorf("%s: %w", l.name, err)
		}
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], target)
		if _, err := img.Seek(off, io.SeekStart); err != nil {
			return fmt.Errorf("%s: seek to its directory entry: %w", l.name, err)
		}
		if _, err := img.Write(b[:]); err != nil {
			return fmt.Errorf("%s: rewrite its directory entry: %w", l.name, err)
		}
	}
	return nil
}

// readBack opens the finished image as go-erofs reads it, and as the
// rewrites address it.
func readBack(img Output, size int64) (fs.FS, geometry, error) {
	fsys, err := goerofs.Open(io.NewSectionReader(img, 0, size))
	if err != nil {
		return nil, geometry{}, fmt.Errorf("read back image: %w", err)
	}
	sb := make([]byte, 128)
	if _, err := img.ReadAt(sb, superblockOff); err != nil {
		return nil, geometry{}, fmt.Errorf("read superblock: %w", err)
	}
	return fsys, geometry{
		r:         img,
		blockSize: int64(1) << sb[sbBlkSizeBitsOff-superblockOff],
		metaAddr:  int64(binary.LittleEndian.Uint32(sb[sbMetaBlkAddrOff-superblockOff:])),
	}, nil
}

// shiftNids keeps the root's inode number from being 0. go-erofs writes
// the metadata after the data, the root's inode first, so the root's nid,
// which the kernel gives as its inode number, is 0, and glibc's readdir
// drops every entry whose inode number is 0: "." and ".." of the root and
// ".." of its children would vanish from listings. Starting the metadata
// area one block earlier, in the last data block, which no nid points
// into, adds blockSize/32 to every nid: the superblock's root nid and
// every directory entry's are rewritten to match.
func shiftNids(img Output, size int64) error {
	fsys, geo, err := readBack(img, size)
	if err != nil {
		return err
	}
	if geo.metaAddr == 0 {
		return fmt.Errorf("metadata starts at block 0: no block before it to start from")
	}
	var dirents []int64
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		dir, err := nid(fsys, p)
		if err != nil {
			return err
		}
		return geo.eachDirent(dir, func(off int64, _ string) bool {
			dirents = append(dirents, off)
			return true
		})
	})
	if err != nil {
		return fmt.Errorf("list directory entries: %w", err)
	}
	shift := uint64(geo.blockSize / inodeSlotSize)
	for _, off := range dirents {
		if err := addAt(img, off, 8, shift); err != nil {
			return fmt.Errorf("directory entry at %d: %w", off, err)
		}
	}
	if err := addAt(img, sbRootNidOff, 2, shift); err != nil {
		return fmt.Errorf("superblock root nid: %w", err)
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(geo.metaAddr-1))
	if _, err := img.Seek(sbMetaBlkAddrOff, io.SeekStart); err != nil {
		return fmt.Errorf("superblock metadata address: %w", err)
	}
	if _, err := img.Write(b[:]); err != nil {
		return fmt.Errorf("superblock metadata address: %w", err)
	}
	return nil
}

// addAt adds n to the little-endian unsigned number of width bytes (2 or
// 8) at off, refusing one that would overflow.
func addAt(img Output, off int64, width int, n uint64) error {
	b := make([]byte, width)
	if _, err := img.ReadAt(b, off); err != nil {
		return err
	}
	var v, limit uint64
	if width == 2 {
		v, limit = uint64(binary.LittleEndian.Uint16(b)), 0xffff
	} else {
		v, limit = binary.LittleEndian.Uint64(b), ^uint64(0)
	}
	if v > limit-n {
		return fmt.Errorf("nid %d cannot grow by %d", v, n)
	}
	if width == 2 {
		binary.LittleEndian.PutUint16(b, uint16(v+n))
	} else {
		binary.LittleEndian.PutUint64(b, v+n)
	}
	if _, err := img.Seek(off, io.SeekStart); err != nil {
		return err
	}
	_, err := img.Write(b)
	return err
}

func nid(fsys fs.FS, name string) (uint64, error) {
	info, err := fs.Stat(fsys, name)
	if err != nil {
		return 0, fmt.Errorf("read back %s: %w", name, err)
	}
	st, ok := info.Sys().(*goerofs.Stat)
	if !ok {
		return 0, fmt.Errorf("read back %s: no inode number", name)
	}
	return uint64(st.Ino), nil
}

type geometry struct {
	r         io.ReaderAt
	blockSize int64
	metaAddr  int64
}

// direntOffset finds, in the directory inode dir, the image offset of the
// entry called name.
func (g geometry) direntOffset(dir uint64, name string) (int64, error) {
	var at int64 = -1
	err := g.eachDirent(dir, func(off int64, n string) bool {
		if n == name {
			at = off
			return false
		}
		return true
	})
	if err == nil && at < 0 {
		err = fmt.Errorf("no entry %q in directory inode %d", name, dir)
	}
	return at, err
}

// eachDirent calls fn with the image offset and name of every entry of
// the directory inode dir, "." and ".." included, until fn returns false.
func (g geometry) eachDirent(dir uint64, fn func(off int64, name string) bool) error {
	inodeOff := g.metaAddr*g.blockSize + int64(dir)*inodeSlotSize
	hdr := make([]byte, extendedInode)
	if _, err := g.r.ReadAt(hdr, inodeOff); err != nil {
		return fmt.Errorf("read directory inode %d: %w", dir, err)
	}
	format := binary.LittleEndian.Uint16(hdr[0:])
	xattrCount := int64(binary.LittleEndian.Uint16(hdr[2:]))
	var inodeSize, dirSize, blkAddr int64
	if format&1 == 1 {
		inodeSize = extendedInode
		dirSize = int64(binary.LittleEndian.Uint64(hdr[8:]))
		blkAddr = int64(binary.LittleEndian.Uint32(hdr[16:]))
	} else {
		inodeSize = compactInodeSize
		dirSize = int64(binary.LittleEndian.Uint32(hdr[8:]))
		blkAddr = int64(binary.LittleEndian.Uint32(hdr[16:]))
	}
	var xattrSize int64
	if xattrCount > 0 {
		xattrSize = 12 + (xattrCount-1)*4
	}
	layout := format >> 1 & 7
	if layout != layoutFlatPlain && layout != layoutFlatInline {
		return fmt.Errorf("directory inode %d has data layout %d", dir, layout)
	}
	for start := int64(0); start < dirSize; start += g.blockSize {
		n := min(g.blockSize, dirSize-start)
		var at int64
		if layout == layoutFlatInline && start+g.blockSize > dirSize && dirSize%g.blockSize != 0 {
			at = inodeOff + inodeSize + xattrSize
		} else {
			at = (blkAddr + start/g.blockSize) * g.blockSize
		}
		if more, err := g.eachInBlock(at, n, fn); err != nil || !more {
			return err
		}
	}
	return nil
}

func (g geometry) eachInBlock(at, n int64, fn func(off int64, name string) bool) (bool, error) {
	blk := make([]byte, n)
	if _, err := g.r.ReadAt(blk, at); err != nil {
		return false, fmt.Errorf("read directory block at %d: %w", at, err)
	}
	if n < direntSize {
		return false, fmt.Errorf("directory block at %d is %d bytes", at, n)
	}
	count := int(binary.LittleEndian.Uint16(blk[8:])) / direntSize
	for i := 0; i < count; i++ {
		nameOff := int(binary.LittleEndian.Uint16(blk[i*direntSize+8:]))
		end := len(blk)
		if i+1 < count {
			end = int(binary.LittleEndian.Uint16(blk[(i+1)*direntSize+8:]))
		}
		if nameOff > end || end > len(blk) {
			return false, fmt.Errorf("directory block at %d is damaged", at)
		}
		got := blk[nameOff:end]
		for len(got) > 0 && got[len(got)-1] == 0 && i+1 == count {
			got = got[:len(got)-1]
		}
		if !fn(at+int64(i*direntSize), string(got)) {
			return false, nil
		}
	}
	return true, nil
}
