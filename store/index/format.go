package index

import (
	"crypto/sha256"
	"encoding/binary"
)

// The byte layout of an index, every field named once here; the reader
// and the writer go through these names, never through offsets.

const (
	magic = "LAYERFSX"
	// version 2 counts the records that carry xattrs; version 1 indexes
	// are read, their count unknown.
	version    = 2
	oldVersion = 1
	headerSize = 128
	recordSize = 128
	sumSize    = sha256.Size
)

// Root is the record of the layer's root directory.
const Root uint32 = 0

// Header fields.
var (
	hdrMagic        = bytesField{0, len(magic)}
	hdrVersion      = u32Field{8}
	hdrRecordSize   = u32Field{12}
	hdrCount        = u64Field{16}
	hdrStringsOff   = u64Field{24}
	hdrStringsLen   = u64Field{32}
	hdrContentBytes = u64Field{40}
	hdrObjectBytes  = u64Field{48}
	hdrDiffID       = bytesField{56, 32} // raw sha256
	hdrXattrEntries = u64Field{88}
)

// Record fields. Strings are references into the string section.
var (
	recName       = strField{0}
	recType       = u8Field{8}
	recFlags      = u8Field{9}
	recMode       = u32Field{12}
	recUID        = u32Field{16}
	recGID        = u32Field{20}
	recSize       = u64Field{24}
	recMtime      = u64Field{32}
	recMtimeNs    = u32Field{40}
	recMajor      = u32Field{44}
	recMinor      = u32Field{48}
	recLink       = strField{52}
	recXattrs     = strField{60} // pairs of (u32 length, bytes): name, value
	recChildStart = u32Field{68}
	recChildCount = u32Field{72}
	recNlink      = u32Field{76}
	recInode      = u32Field{80}
	recParent     = u32Field{84}
	recObject     = bytesField{88, 32} // raw sha256, for a non-empty regular file
)

var le = binary.LittleEndian

type u8Field struct{ off int }

func (f u8Field) get(b []byte) uint8    { return b[f.off] }
func (f u8Field) put(b []byte, v uint8) { b[f.off] = v }

type u32Field struct{ off int }

func (f u32Field) get(b []byte) uint32    { return le.Uint32(b[f.off:]) }
func (f u32Field) put(b []byte, v uint32) { le.PutUint32(b[f.off:], v) }

type u64Field struct{ off int }

func (f u64Field) get(b []byte) uint64    { return le.Uint64(b[f.off:]) }
func (f u64Field) put(b []byte, v uint64) { le.PutUint64(b[f.off:], v) }

type bytesField struct{ off, len int }

func (f bytesField) get(b []byte) []byte { return b[f.off : f.off+f.len] }

// strField is a string's offset and length in the string section.
type strField struct{ off int }

func (f strField) get(b []byte) (off, n uint32) {
	return le.Uint32(b[f.off:]), le.Uint32(b[f.off+4:])
}

func (f strField) put(b []byte, off, n uint32) {
	le.PutUint32(b[f.off:], off)
	le.PutUint32(b[f.off+4:], n)
}
