package erofs

// On-disk EROFS layout facts (the kernel's erofs_fs.h), for the
// metadata-only writer and the rewrite of go-erofs's images.
const (
	superblockOff    = 1024
	superblockSize   = 128
	sbBlkSizeBitsOff = 12
	sbRootNidOff     = 14
	sbInosOff        = 16
	sbBuildTimeOff   = 24
	sbBlocksOff      = 36
	sbMetaBlkAddrOff = 40
	sbUUIDOff        = 48
	sbIncompatOff    = 80
	erofsMagic       = 0xe0f5e1e2

	featureChunkedFile = 0x4

	inodeSlotSize    = 32
	compactInodeSize = 32
	extendedInode    = 64
	inodeDataOff     = 16 // i_u: a block address, a device number or the chunk format
	xattrHeaderSize  = 12
	direntSize       = 12
	maxNameLen       = 255

	layoutFlatPlain  = 0
	layoutFlatInline = 2
	layoutChunkBased = 4
	maxChunkBits     = 31
	nullBlock        = 0xffffffff
)

// Directory entry file types.
const (
	fileTypeRegular = 1 + iota
	fileTypeDir
	fileTypeCharDev
	fileTypeBlockDev
	fileTypeFIFO
	fileTypeSocket
	fileTypeSymlink
)
