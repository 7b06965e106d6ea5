package oracle

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Type is the kind of a file, as a word that reads well in a diff.
type Type string

// The file types Walk reports.
const (
	TypeDir     Type = "dir"
	TypeReg     Type = "reg"
	TypeSymlink Type = "symlink"
	TypeChar    Type = "char"
	TypeBlock   Type = "block"
	TypeFIFO    Type = "fifo"
	TypeSocket  Type = "socket"
)

// Timespec is a timestamp exactly as the kernel reports it, so that
// nanoseconds are compared, never rounded.
type Timespec struct {
	Sec  int64
	Nsec int64
}

func (t Timespec) String() string {
	return fmt.Sprintf("%d.%09d", t.Sec, t.Nsec)
}

// Entry is what a view shows for one path. Fields that do not apply to the
// entry's type are zero, so two entries are equal exactly when the view
// shows the same thing.
type Entry struct {
	Type Type
	// Mode holds the permission bits with setuid, setgid and sticky (07777).
	Mode uint32
	UID  uint32
	GID  uint32
	// Size is set for regular files and symlinks only.
	Size  int64
	Mtime Timespec
	// SHA256 is the hex digest of a regular file's content.
	SHA256 string
	// Link is a symlink's target.
	Link string
	// DevMajor and DevMinor are set for character and block devices.
	DevMajor uint32
	DevMinor uint32
	// Xattrs holds every extended attribute except the excluded ones (see
	// Walk); nil when there are none.
	Xattrs map[string]string
	// Nlink is set for non-directories only: a directory's link count
	// depends on the filesystem, not on the image.
	Nlink uint64
	// HardlinkID is set for non-directories: the first, in byte order, of
	// the paths in the tree that name the same inode. Two paths have the
	// same HardlinkID exactly when they are hardlinks of each other.
	HardlinkID string
}

// Tree maps a path relative to the walked root, slash-separated and without
// a leading "./", to its entry. The root itself is ".".
type Tree map[string]Entry

// excludedXattr tells the xattr a view cannot be asked to show:
// security.selinux is the label the host's security module gives every
// file, not something an image carries. trusted.overlay.* stays: a kernel
// overlay mount hides its own marks and shows the ones an image carries
// (unpacked escaped), so a walk of a mount sees exactly the image's.
func excludedXattr(name string) bool {
	return name == "security.selinux"
}

// Walk reads every entry under root, root included, without following
// symlinks. It leaves out security.selinux, which no image carries.
// Regular files are hashed in parallel.
func Walk(root string) (Tree, error) {
	tree := make(Tree)
	type inode struct{ dev, ino uint64 }
	names := make(map[inode][]string)
	var files []string

	stack := []string{"."}
	for len(stack) > 0 {
		rel := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		abs := filepath.Join(root, rel)
		var st unix.Stat_t
		if err := unix.Lstat(abs, &st); err != nil {
			return nil, fmt.Errorf("walk %s: stat %s: %w", root, rel, err)
		}
		e, err := entryOf(abs, &st)
		if err != nil {
			return nil, fmt.Errorf("walk %s: %s: %w", root, rel, err)
		}
		tree[rel] = e
		switch e.Type {
		case TypeDir:
			kids, err := readDirNames(abs)
			if err != nil {
				return nil, fmt.Errorf("walk %s: %w", root, err)
			}
			for _, k := range kids {
				if rel == "." {
					stack = append(stack, k)
				} else {
					stack = append(stack, rel+"/"+k)
				}
			}
			continue
		case TypeReg:
			files = append(files, rel)
		}
		key := inode{st.Dev, st.Ino}
		names[key] = append(names[key], rel)
	}

	for _, ps := range names {
		sort.Strings(ps)
		for _, p := range ps {
			e := tree[p]
			e.HardlinkID = ps[0]
			tree[p] = e
		}
	}

	sums, err := hashFiles(root, files)
	if err != nil {
		return nil, err
	}
	for i, p := range files {
		e := tree[p]
		e.SHA256 = sums[i]
		tree[p] = e
	}
	return tree, nil
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("read directory %s: %w", dir, err)
	}
	return names, nil
}

func entryOf(abs string, st *unix.Stat_t) (Entry, error) {
	e := Entry{
		Mode:  st.Mode & 0o7777,
		UID:   st.Uid,
		GID:   st.Gid,
		Mtime: Timespec{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
		Nlink: st.Nlink,
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = TypeDir
		e.Nlink = 0
	case unix.S_IFREG:
		e.Type = TypeReg
		e.Size = st.Size
	case unix.S_IFLNK:
		e.Type = TypeSymlink
		e.Size = st.Size
		target, err := os.Readlink(abs)
		if err != nil {
			return Entry{}, err
		}
		e.Link = target
	case unix.S_IFCHR:
		e.Type = TypeChar
		e.DevMajor, e.DevMinor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	case unix.S_IFBLK:
		e.Type = TypeBlock
		e.DevMajor, e.DevMinor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
	case unix.S_IFIFO:
		e.Type = TypeFIFO
	case unix.S_IFSOCK:
		e.Type = TypeSocket
	default:
		return Entry{}, fmt.Errorf("unknown file type %#o", st.Mode&unix.S_IFMT)
	}
	xs, err := Xattrs(abs)
	if err != nil {
		return Entry{}, err
	}
	e.Xattrs = xs
	return e, nil
}

// Xattrs returns the xattrs of p itself, never of a symlink's target, as
// Walk gives them: security.selinux left out, nil when there are none.
func Xattrs(p string) (map[string]string, error) {
	xs, err := readXattrs(p)
	if err != nil {
		return nil, err
	}
	for k := range xs {
		if excludedXattr(k) {
			delete(xs, k)
		}
	}
	if len(xs) == 0 {
		return nil, nil
	}
	return xs, nil
}

// readXattrs returns all xattrs of p itself, never of a symlink's target.
func readXattrs(p string) (map[string]string, error) {
	var list []byte
	for {
		n, err := unix.Llistxattr(p, nil)
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
		}
		if n == 0 {
			return nil, nil
		}
		list = make([]byte, n)
		n, err = unix.Llistxattr(p, list)
		if errors.Is(err, unix.ERANGE) {
			continue // grew between the two calls
		}
		if err != nil {
			return nil, fmt.Errorf("list xattrs of %s: %w", p, err)
		}
		list = list[:n]
		break
	}
	xs := make(map[string]string)
	for _, name := range strings.Split(string(list), "\x00") {
		// Overlayfs counts the xattrs it hides when asked for the size, so
		// the list may come back shorter, even empty.
		if name == "" {
			continue
		}
		v, err := getXattr(p, name)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, err
		}
		xs[name] = v
	}
	return xs, nil
}

func getXattr(p, name string) (string, error) {
	for {
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			return "", fmt.Errorf("get xattr %s of %s: %w", name, p, err)
		}
		buf := make([]byte, n)
		n, err = unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("get xattr %s of %s: %w", name, p, err)
		}
		return string(buf[:n]), nil
	}
}

// hashFiles returns the hex sha256 of each file, in order, reading several
// at once so that one big file does not hold up thousands of small ones.
func hashFiles(root string, files []string) ([]string, error) {
	sums := make([]string, len(files))
	errs := make([]error, len(files))
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256*1024)
			for i := range next {
				sums[i], errs[i] = hashFile(filepath.Join(root, files[i]), buf)
			}
		}()
	}
	for i := range files {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("walk %s: %w", root, err)
	}
	return sums, nil
}

func hashFile(p string, buf []byte) (string, error) {
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("hash: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	// Hide File.WriteTo so that the caller's buffer is the one used.
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
