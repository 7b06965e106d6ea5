package output

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// File is a file a command writes its output to (export -o). A regular
// file, or a new one, is written beside its name and renamed into place
// by Commit, so a failed command leaves no truncated file under that
// name. A character device or a FIFO is written into, never replaced. A
// symlink is followed, as docker does, and its target treated so; the
// link itself is left alone. A directory, a socket, a block device or a
// terminal is refused before any work starts.
type File struct {
	*os.File
	// final is the name the temp file is renamed to; empty when the
	// output is written in place.
	final string
}

// Create checks name and opens the output for it.
func Create(name string) (*File, error) {
	target, err := filepath.EvalSymlinks(name)
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
	switch mode := st.Mode(); {
	case mode.IsRegular():
		f, err := createTemp(target)
		if err != nil {
			return nil, err
		}
		// A file replaced keeps its mode.
		if err := f.Chmod(mode.Perm()); err != nil {
			f.Abort()
			return nil, fmt.Errorf("%s: keep its mode: %w", name, err)
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

// createTemp opens a temp file beside name, to be renamed to it, of mode
// 0666 less the umask, as any file a tool creates.
func createTemp(name string) (*File, error) {
	f, err := openTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-")
	if err != nil {
		// Named as the user named it, not as the temp file beside it.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, &fs.PathError{Op: "create", Path: name, Err: err}
	}
	return &File{File: f, final: name}, nil
}

// openTemp creates a new file of a random name starting with prefix in
// dir, of mode 0666 less the umask (os.CreateTemp's is 0600, which only
// a chmod could widen, and the umask cannot be read without changing it).
func openTemp(dir, prefix string) (*os.File, error) {
	for {
		name := filepath.Join(dir, prefix+strconv.FormatUint(uint64(rand.Uint32()), 10))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
}

// Commit closes the output and renames it into place.
func (f *File) Commit() error {
	err := f.Close()
	if f.final == "" {
		return err
	}
	if err == nil {
		err = os.Rename(f.Name(), f.final)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// Abort closes the output and removes what was written beside its name.
func (f *File) Abort() {
	f.Close()
	if f.final != "" {
		os.Remove(f.Name())
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
