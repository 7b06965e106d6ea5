package output

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/layerfs/layerfs/internal/kernelpath"
	"golang.org/x/sys/unix"
)

// File is a file a command writes its output to (export -o). A regular
// file, or a new one, is written as a file with no name in the same
// directory, given a name only by Commit and renamed into place, so a
// command that fails, or is killed, leaves no truncated file under that
// name and nothing beside it. A file replaced keeps its owner, group,
// mode, ACL and user xattrs; the rename replaces the name, not the file,
// so another hardlink of it keeps the old content. A character device or
// a FIFO is written into, never replaced. A symlink is followed where
// the kernel follows it, as docker's does, and its target treated so;
// the link itself is left alone. Another user's file or FIFO in a sticky
// directory anyone can write to is refused. A directory,
// a socket, a block device or a terminal is refused before any work
// starts.
type File struct {
	*os.File
	// final is the name the output is renamed to; empty when it is
	// written in place.
	final string
	// named is the temp file's name where the directory's file system
	// cannot make a file with no name (O_TMPFILE); a kill leaves it.
	named string
}

// Create checks name and opens the output for it.
func Create(name string) (*File, error) {
	target, err := followName(name)
	if errors.Is(err, fs.ErrNotExist) {
		if _, lerr := os.Lstat(name); lerr == nil {
			return nil, fmt.Errorf("%s: a symlink to nothing: name an existing file, or a new name", name)
		}
		return createTemp(name)
	}
	if err != nil {
		return nil, err
	}
	st, err := os.Stat(target)
	if err != nil {
		return nil, err
	}
	if mode := st.Mode(); mode.IsRegular() || mode&fs.ModeNamedPipe != 0 {
		if err := refuseForeign(name, target, st.Sys().(*syscall.Stat_t)); err != nil {
			return nil, err
		}
	}
	switch mode := st.Mode(); {
	case mode.IsRegular():
		f, err := createTemp(target)
		if err != nil {
			return nil, err
		}
		// A file replaced keeps its owner, group and mode, as one
		// rewritten in place would: root writing over a user's file
		// must not leave it root's.
		if err := f.keepOwner(name, st.Sys().(*syscall.Stat_t)); err != nil {
			f.Abort()
			return nil, err
		}
		if err := f.Chmod(mode.Perm()); err != nil {
			f.Abort()
			return nil, fmt.Errorf("%s: keep its mode: %w", name, err)
		}
		if err := f.keepXattrs(name, target); err != nil {
			f.Abort()
			return nil, err
		}
		return f, nil
	case mode.IsDir():
		return nil, fmt.Errorf("%s: is a directory", name)
	case mode&fs.ModeNamedPipe != 0, mode&fs.ModeCharDevice != 0:
		f, err := os.OpenFile(target, os.O_WRONLY, 0)
		if err != nil {
			return nil, err
		}
		if err := RefuseTerminal(f, name); err != nil {
			f.Close()
			return nil, err
		}
		return &File{File: f}, nil
	default:
		return nil, fmt.Errorf("%s: a %s is not a file to write to", name, Kind(mode))
	}
}

// followName is the file name leads to, its symlinks followed only
// where the kernel follows them for this user: with fs.protected_symlinks,
// root does not follow another user's link in a sticky world-writable
// directory such as /tmp, which would let that user choose the file
// root's output replaces.
func followName(name string) (string, error) {
	target, err := kernelpath.Resolve(name)
	if err == nil {
		return target, nil
	}
	if st, lerr := os.Lstat(name); lerr == nil && st.Mode()&fs.ModeSymlink != 0 && errors.Is(err, unix.EACCES) {
		return "", fmt.Errorf("%s: a symlink the kernel does not let this user follow (fs.protected_symlinks: another user's link in a sticky world-writable directory): %w", name, err)
	}
	return "", &fs.PathError{Op: "open", Path: name, Err: err}
}

// refuseForeign refuses a file or FIFO target, old, of another user in
// a sticky directory anyone can write to (as /tmp), owned by neither
// this user nor the directory's owner, as the kernel's protected_regular
// and protected_fifos refuse a tool that opens it to create: someone
// else put it there, to be given root's output (a file replaced keeps
// its owner) or to read it through a FIFO.
func refuseForeign(name, target string, old *syscall.Stat_t) error {
	dir := filepath.Dir(target)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return fmt.Errorf("%s: its directory: %w", name, err)
	}
	const open = unix.S_ISVTX | unix.S_IWOTH
	if st.Mode&open != open || old.Uid == uint32(os.Geteuid()) || old.Uid == st.Uid {
		return nil
	}
	return fmt.Errorf("%s: uid %d's, in %s, a sticky directory anyone can write to: refusing to write into or over another user's file there; remove it or name another", name, old.Uid, dir)
}

// keepOwner gives the output old's owner and group where they are not
// its own already: only root may give a file away, and a user may not
// give it a group the user is not in, so a change is made only when
// needed, and one that cannot be made fails Create before anything is
// written.
func (f *File) keepOwner(name string, old *syscall.Stat_t) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: stat the output: %w", name, err)
	}
	uid, gid := -1, -1
	if st.Uid != old.Uid {
		uid = int(old.Uid)
	}
	if st.Gid != old.Gid {
		gid = int(old.Gid)
	}
	if uid == -1 && gid == -1 {
		return nil
	}
	if err := unix.Fchown(int(f.Fd()), uid, gid); err != nil {
		return fmt.Errorf("%s: keep its owner and group (%d:%d) in the file that replaces it: %w (nothing replaced)", name, old.Uid, old.Gid, err)
	}
	return nil
}

// keepXattrs gives the output the ACL and user xattrs of old, the file
// it replaces, as a tool writing over it in place (cp, mkfs.erofs) keeps
// them: an ACL that lets another user (qemu's, say) read the file is
// part of its permissions as much as its mode is. Other namespaces are
// the system's (security labels, capabilities) or need privileges a user
// has not, and are the new file's own.
func (f *File) keepXattrs(name, old string) error {
	// 64 KiB holds any list of names and any value (XATTR_LIST_MAX,
	// XATTR_SIZE_MAX).
	list := make([]byte, 64<<10)
	n, err := unix.Listxattr(old, list)
	if errors.Is(err, unix.ENOTSUP) {
		// A file system with no xattrs at all (many FUSE ones).
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: list its xattrs: %w", name, err)
	}
	value := make([]byte, 64<<10)
	for _, x := range strings.Split(string(list[:n]), "\x00") {
		if x != "system.posix_acl_access" && !strings.HasPrefix(x, "user.") {
			continue
		}
		vn, err := unix.Getxattr(old, x, value)
		if err == nil {
			err = unix.Fsetxattr(int(f.Fd()), x, value[:vn], 0)
		}
		if err != nil {
			return fmt.Errorf("%s: keep its xattr %s in the file that replaces it: %w (nothing replaced)", name, x, err)
		}
	}
	return nil
}

// Kind names the type of a file that is not a regular one, for messages:
// "directory", "FIFO".
func Kind(mode fs.FileMode) string {
	switch {
	case mode.IsDir():
		return "directory"
	case mode&fs.ModeNamedPipe != 0:
		return "FIFO"
	case mode&fs.ModeSocket != 0:
		return "socket"
	case mode&fs.ModeCharDevice != 0:
		return "character device"
	case mode&fs.ModeDevice != 0:
		return "block device"
	}
	return "special file"
}

// createTemp opens a file with no name in name's directory, to be named
// name by Commit, of mode 0666 less the umask, as any file a tool creates.
func createTemp(name string) (*File, error) {
	dir := filepath.Dir(name)
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o666)
	if err == nil {
		return &File{File: os.NewFile(uintptr(fd), name), final: name}, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EISDIR) {
		return nil, createError(name, err)
	}
	f, err := openTemp(name)
	if err != nil {
		// Named as the user named it, not as the temp file beside it.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, createError(name, err)
	}
	return &File{File: f, final: name, named: f.Name()}, nil
}

// createError says why the output for name could not be created. A
// directory that cannot be written to is named as the cause: the user
// may well be able to write name itself, which is never opened.
func createError(name string, err error) error {
	if !errors.Is(err, fs.ErrPermission) && !errors.Is(err, unix.EROFS) {
		return &fs.PathError{Op: "create", Path: name, Err: err}
	}
	dir := filepath.Dir(name)
	if abs, aerr := filepath.Abs(dir); aerr == nil {
		dir = abs
	}
	if _, serr := os.Lstat(name); serr != nil {
		return fmt.Errorf("%s: the output is written in %s and renamed to it, and %s is not writable: %w", name, dir, dir, err)
	}
	return fmt.Errorf("%s: the output is written beside it in %s and renamed over it, and %s is not writable: %w", name, dir, dir, err)
}

// tempName is a name for a temp file beside name: hidden, saying whose
// it is, and random.
func tempName(name string) string {
	return filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp-"+strconv.FormatUint(uint64(rand.Uint32()), 10))
}

// openTemp creates a new file of a temp name beside name, of mode 0666
// less the umask (os.CreateTemp's is 0600, which only a chmod could
// widen, and the umask cannot be read without changing it).
func openTemp(name string) (*os.File, error) {
	for {
		f, err := os.OpenFile(tempName(name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
}

// Commit names the output and renames it into place, then closes it.
func (f *File) Commit() error {
	if f.final == "" {
		return f.Close()
	}
	tmp := f.named
	var err error
	if tmp == "" {
		tmp, err = f.link()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, f.final)
	}
	if err != nil && tmp != "" {
		os.Remove(tmp)
	}
	return err
}

// link gives the file with no name a temp name beside its final one,
// through /proc, as linking the descriptor itself (AT_EMPTY_PATH) takes
// a capability. Linking straight to the final name would fail on a file
// there, which the rename replaces.
func (f *File) link() (string, error) {
	proc := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	for {
		tmp := tempName(f.final)
		err := unix.Linkat(unix.AT_FDCWD, proc, unix.AT_FDCWD, tmp, unix.AT_SYMLINK_FOLLOW)
		if err == nil {
			return tmp, nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("%s: name the output: %w", f.final, err)
		}
	}
}

// Abort closes the output and removes what was written beside its name.
func (f *File) Abort() {
	f.Close()
	if f.named != "" {
		os.Remove(f.named)
	}
}

// RefuseTerminal refuses to write binary output (a tar, a disk image) to
// a terminal, as docker export does.
func RefuseTerminal(f *os.File, name string) error {
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
		return fmt.Errorf("%s is a terminal: refusing to write binary data to it; redirect it or use -o FILE", name)
	}
	return nil
}

// CreateSeekable is Create for output written with seeks, such as a disk
// image: only a regular file, or a new name, takes it.
func CreateSeekable(name string) (*File, error) {
	// Checked before Create, which would wait in the open of a FIFO
	// and write into a character device; Create refuses the rest.
	if st, err := os.Stat(name); err == nil && st.Mode()&(fs.ModeNamedPipe|fs.ModeCharDevice) != 0 {
		return nil, fmt.Errorf("%s: a %s, and the output is written with seeks: name a regular file or a new name", name, Kind(st.Mode()))
	}
	return Create(name)
}

// Scratch opens a file with no name in $TMPDIR, for output that must be
// written with seeks before it can stream to a pipe; it vanishes when
// closed, whatever the command's fate.
func Scratch() (*os.File, error) {
	dir := os.TempDir()
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "(unnamed)")), nil
	}
	// File systems without O_TMPFILE: a temp file unlinked at once.
	f, err := os.CreateTemp(dir, ".layerfs-scratch-")
	if err != nil {
		return nil, fmt.Errorf("scratch file in %s: %w", dir, err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("scratch file in %s: %w", dir, err)
	}
	return f, nil
}
