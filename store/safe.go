package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/layerfs/layerfs/store/index"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// What the store reads (blobs, index.json, layer indexes and handles
// files, objects, the links/ directories a kernel mount serves from, meta
// images and their records, leases), the locks of gc, index.json and each
// layer, and what gc removes are reached from the root's descriptor with
// RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS: a symlink there, planted or not,
// is refused rather than followed, so layerfs never reads, serves, locks
// or deletes a file outside the store on behalf of whoever could write
// into it. Writes go by full path (temp files under tmp/ and their renames
// into place, a layer's directory and links/, leases, partial downloads,
// and their removal when a write fails or a view ends), as do the
// listings of the store's directories and stats such as HasBlob's and
// Extracted's: a command that writes runs only on a store its own user
// owns (checkTrusted).
const resolveBeneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// errSymlink is wrapped by errors about a symlink found inside the store.
var errSymlink = errors.New("a symlink or a path leaving the store, refused")

// openBeneath opens rel, a path relative to the store root, without
// following any symlink on the way.
func (s *Store) openBeneath(rel string, flags int, mode uint32) (*os.File, error) {
	fd, err := s.openFdBeneath(rel, flags, mode)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), s.path(rel)), nil
}

func (s *Store) openFdBeneath(rel string, flags int, mode uint32) (int, error) {
	if s.dir == nil {
		return -1, &os.PathError{Op: "open", Path: s.path(rel), Err: unix.ENOENT}
	}
	if s.closed.Load() {
		return -1, &os.PathError{Op: "open", Path: s.path(rel), Err: os.ErrClosed}
	}
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC | unix.O_NOFOLLOW), Resolve: resolveBeneath}
	if flags&unix.O_CREAT != 0 {
		how.Mode = uint64(mode)
	}
	for {
		fd, err := unix.Openat2(int(s.dir.Fd()), rel, &how)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err == unix.ELOOP || err == unix.EXDEV {
			return -1, fmt.Errorf("%s: %w", s.path(rel), errSymlink)
		}
		if err != nil {
			return -1, &os.PathError{Op: "open", Path: s.path(rel), Err: err}
		}
		return fd, nil
	}
}

// openRegular opens rel for reading and makes sure it is a regular file:
// O_NONBLOCK keeps a FIFO or a device planted in the store from blocking
// the open, and the type check from being read.
//
// The checks run on the bare descriptor: an *os.File made of a
// non-blocking one would first be offered to the poller, which costs a
// mount's every open a few syscalls for nothing.
func (s *Store) openRegular(rel string) (*os.File, error) {
	fd, err := s.openFdBeneath(rel, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		// O_NOATIME is only for the file's owner.
		fd, err = s.openFdBeneath(rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("stat %s: %w", s.path(rel), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: not a regular file (type %#o), refused", s.path(rel), st.Mode&unix.S_IFMT)
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", s.path(rel), err)
	}
	return os.NewFile(uintptr(fd), s.path(rel)), nil
}

// readSmallFile reads a store file of at most MaxMetadataSize bytes.
func (s *Store) readSmallFile(rel string) ([]byte, error) {
	f, err := s.openRegular(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadMetadata(f)
}

// removeBeneath removes rel and, when it is a directory, everything in
// it, never following a symlink: a symlink is removed, not its target.
func (s *Store) removeBeneath(rel string) error {
	parent, err := s.openBeneath(filepath.Dir(rel), unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer parent.Close()
	if err := removeAt(int(parent.Fd()), filepath.Base(rel)); err != nil {
		return fmt.Errorf("in %s: %w", filepath.Dir(rel), err)
	}
	return nil
}

func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	for _, n := range names {
		if err := removeAt(fd, n); err != nil {
			return fmt.Errorf("%s/%w", name, err)
		}
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// checkTrusted refuses a store directory another user could change: one
// owned by neither the user running layerfs nor root (when only reading),
// or writable by its group or others. st describes it, not following a
// symlink.
func checkTrusted(p string, st *unix.Stat_t, forWriting bool) error {
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("store %s: not a directory (a symlink inside a store is refused)", p)
	}
	euid := uint32(os.Geteuid())
	if st.Uid != euid && (forWriting || st.Uid != 0) {
		return fmt.Errorf("store %s: owned by uid %d, not by uid %d who runs layerfs: refused, since its owner could make layerfs read or remove any file", p, st.Uid, euid)
	}
	if st.Mode&0o022 != 0 {
		return fmt.Errorf("store %s: writable by group or others (mode %#o): refused, since they could make layerfs read or remove any file", p, st.Mode&0o7777)
	}
	return nil
}

// openIndex maps layer d's index, opened as any other store file is.
func (s *Store) openIndex(d digest.Digest, verify bool) (*index.Reader, error) {
	f, err := s.openRegular(filepath.Join(layersDir, d.Encoded(), "index"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return index.OpenFile(f, verify)
}
