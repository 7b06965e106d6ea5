// Package oracle is the independent reference for what a merged view of OCI
// layers must show. It deliberately shares no code with the rest of layerfs:
// layers are unpacked by GNU tar the way containerd's overlay snapshotter
// unpacks them, stacked by kernel overlayfs, and read back with plain
// syscalls, so that a bug in layerfs cannot hide in its own test reference.
//
// Everything here needs root: GNU tar must be able to chown, mknod and set
// trusted.* and security.* xattrs, and overlayfs must be mountable.
package oracle

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueMarker   = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"
	overlayXattrs  = "trusted.overlay."
)

// UnpackLayer unpacks the layer blob at blobPath (gzip, zstd or plain tar,
// told by its magic bytes) into dst in overlay format: whiteout markers
// become 0/0 character devices and opaque markers become
// trusted.overlay.opaque=y on their directory. dst must be missing or empty.
//
// lowerDirs are the layers beneath, lowest first, each already unpacked by
// UnpackLayer. They are only read, to give the directories this layer merely
// implies the attributes of the merged view beneath (docs/semantics.md rule 6). A
// directory this layer whites out and also has entries under (rule 4) is
// implied too and still takes the attributes of the directory beneath it:
// the whiteout hides the lower children, not the lower directory's
// attributes, since rule 6 asks only for the nearest lower directory.
//
// A hardlink to a file of a lower layer is not supported: GNU tar cannot
// resolve it and the unpack fails.
func UnpackLayer(blobPath, dst string, lowerDirs []string) error {
	if err := prepareDst(dst); err != nil {
		return fmt.Errorf("unpack %s: %w", blobPath, err)
	}
	explicit, err := extract(blobPath, dst)
	if err != nil {
		return fmt.Errorf("unpack %s into %s: %w", blobPath, dst, err)
	}
	dirs, err := listDirs(dst)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", blobPath, err)
	}
	if err := escapeOverlayXattrs(dst); err != nil {
		return fmt.Errorf("unpack %s: %w", blobPath, err)
	}
	if err := convertWhiteouts(dst); err != nil {
		return fmt.Errorf("unpack %s: %w", blobPath, err)
	}
	// GNU tar sets a directory's mtime once it has moved past the
	// directory's entries, and an entry that comes back to it later, a
	// hardlink say, or the conversion above, changes it again. So every
	// directory's mtime is set here, last: from its header, or from the
	// view beneath for the implied ones.
	mtimes := make(map[string]unix.Timespec, len(dirs))
	for _, rel := range dirs {
		if mt, ok := explicit[rel]; ok {
			mtimes[rel] = mt
			continue
		}
		mtime, err := inheritDirAttrs(filepath.Join(dst, rel), rel, lowerDirs)
		if err != nil {
			return fmt.Errorf("unpack %s: implied directory %s: %w", blobPath, rel, err)
		}
		mtimes[rel] = mtime
	}
	omit := unix.Timespec{Nsec: unix.UTIME_OMIT}
	for _, rel := range dirs {
		ts := []unix.Timespec{omit, mtimes[rel]}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dst, rel), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("unpack %s: set mtime of %s: %w", blobPath, rel, err)
		}
	}
	return nil
}

func prepareDst(dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("create layer dir: %w", err)
	}
	ents, err := os.ReadDir(dst)
	if err != nil {
		return fmt.Errorf("read layer dir: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("layer dir %s is not empty", dst)
	}
	return nil
}

// extract feeds the uncompressed tar to two GNU tars at once, one
// extracting and one listing, and returns the header mtime of each
// directory entry by path (cleaned, relative, "." for the root). The
// listing comes from the same tar program that extracted, so "explicit"
// means exactly what GNU tar saw.
func extract(blobPath, dst string) (map[string]unix.Timespec, error) {
	r, err := openLayer(blobPath)
	if err != nil {
		return nil, err
	}
	defer r.Close()

	env := append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	xtar := exec.Command("tar", "--xattrs", "--xattrs-include=*", "--numeric-owner",
		"--same-owner", "--same-permissions", "--quoting-style=escape", "-xf", "-", "-C", dst)
	ttar := exec.Command("tar", "--quoting-style=escape", "--numeric-owner", "--full-time", "--utc", "-tvf", "-")
	xtar.Env, ttar.Env = env, env
	var xerr, terr bytes.Buffer
	xtar.Stderr, ttar.Stderr = &xerr, &terr
	xin, err := xtar.StdinPipe()
	if err != nil {
		return nil, err
	}
	tin, err := ttar.StdinPipe()
	if err != nil {
		return nil, err
	}
	tout, err := ttar.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := xtar.Start(); err != nil {
		return nil, fmt.Errorf("start tar: %w", err)
	}
	if err := ttar.Start(); err != nil {
		xin.Close()
		_ = xtar.Wait()
		return nil, fmt.Errorf("start tar: %w", err)
	}

	type listing struct {
		dirs map[string]unix.Timespec
		err  error
	}
	listed := make(chan listing, 1)
	go func() {
		dirs, err := readListing(tout)
		listed <- listing{dirs, err}
	}()

	copyErr := teeInto(r, xin, tin)
	xin.Close()
	tin.Close()
	l := <-listed
	xwait, twait := xtar.Wait(), ttar.Wait()

	if copyErr != nil {
		return nil, fmt.Errorf("read layer: %w", copyErr)
	}
	if xwait != nil && !onlyMarkersUnderFiles(xwait, xerr.String(), dst) {
		return nil, fmt.Errorf("tar -x: %w: %s", xwait, strings.TrimSpace(xerr.String()))
	}
	if twait != nil {
		return nil, fmt.Errorf("tar -t: %w: %s", twait, strings.TrimSpace(terr.String()))
	}
	if l.err != nil {
		return nil, fmt.Errorf("tar -t output: %w", l.err)
	}
	return l.dirs, nil
}

// onlyMarkersUnderFiles tells whether tar failed only to create whiteout
// markers beneath a non-directory of the same layer. umoci writes those when
// a directory became a file: the file entry, then a whiteout for each of the
// old directory's children. The file hides everything beneath it anyway
// (docs/semantics.md rule 7), so such markers change nothing and are dropped.
func onlyMarkersUnderFiles(waitErr error, stderr, dst string) bool {
	var exit *exec.ExitError
	if !errors.As(waitErr, &exit) || exit.ExitCode() != 2 {
		return false
	}
	const failed, suffix = "tar: Exiting with failure status due to previous errors", ": Cannot open: Not a directory"
	sawMarker := false
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if line == failed || line == "tar: Removing leading `/' from member names" {
			continue
		}
		quoted, ok := strings.CutPrefix(line, "tar: ")
		if !ok {
			return false
		}
		if quoted, ok = strings.CutSuffix(quoted, suffix); !ok {
			return false
		}
		name, err := unescapeTarName(quoted)
		if err != nil {
			return false
		}
		rel := cleanName(name)
		if !strings.HasPrefix(path.Base(rel), whiteoutPrefix) {
			return false
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dst, path.Dir(rel)), &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return false
		}
		sawMarker = true
	}
	return sawMarker
}

// teeInto copies r to both writers. A tar may stop reading once it has seen
// the end-of-archive blocks, so a failed write only drops that writer: the
// tar's exit status is what tells whether it got what it needed. Only a read
// error (a corrupt or truncated stream) is returned.
func teeInto(r io.Reader, ws ...io.Writer) error {
	live := make([]bool, len(ws))
	for i := range live {
		live[i] = true
	}
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		for i, w := range ws {
			if live[i] && n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					live[i] = false
				}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readListing parses a verbose GNU tar listing (--full-time --utc
// --numeric-owner --quoting-style=escape), lines such as
// "drwxr-xr-x 0/0 0 2024-05-01 10:00:00.5 usr/bin/", and returns the
// directories. Only directories are kept: their names have no " -> " or
// " link to " tail to split off, and only they can be implied.
func readListing(r io.Reader) (map[string]unix.Timespec, error) {
	dirs := make(map[string]unix.Timespec)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var l listingParser
	var err error
	for sc.Scan() && err == nil {
		var isDir bool
		var name string
		var mtime unix.Timespec
		isDir, name, mtime, err = l.parse(sc.Text())
		if isDir {
			dirs[cleanName(name)] = mtime
		}
	}
	// Drain so tar never blocks on a full pipe if we stopped early.
	_, _ = io.Copy(io.Discard, r)
	if err == nil {
		err = sc.Err()
	}
	return dirs, err
}

// listingParser follows GNU tar's column layout: the time stamp is padded
// to the widest one printed so far, then one space, then the name, which
// may itself begin with spaces.
type listingParser struct {
	dateWidth int
}

func (l *listingParser) parse(line string) (isDir bool, name string, mtime unix.Timespec, err error) {
	// Mode, owner/group, size, date and time, separated by spaces.
	rest := line
	var fields [5]string
	for i := range fields {
		rest = strings.TrimLeft(rest, " ")
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			return false, "", mtime, fmt.Errorf("tar listing line %q: too few fields", line)
		}
		fields[i], rest = rest[:end], rest[end:]
	}
	stamp := fields[3] + " " + fields[4]
	l.dateWidth = max(l.dateWidth, len(stamp))
	pad := l.dateWidth - len(stamp) + 1
	if len(rest) < pad || strings.TrimLeft(rest[:pad], " ") != "" {
		return false, "", mtime, fmt.Errorf("tar listing line %q: unexpected layout", line)
	}
	rest = rest[pad:]
	if !strings.HasPrefix(fields[0], "d") {
		return false, "", mtime, nil
	}
	t, err := time.Parse("2006-01-02 15:04:05.999999999", stamp)
	if err != nil {
		return false, "", mtime, fmt.Errorf("tar listing line %q: %w", line, err)
	}
	if name, err = unescapeTarName(rest); err != nil {
		return false, "", mtime, err
	}
	return true, name, unix.Timespec{Sec: t.Unix(), Nsec: int64(t.Nanosecond())}, nil
}

// cleanName turns a tar member name into the relative path it is extracted
// at, as GNU tar does: leading "/" and "./" dropped, "." for the root.
func cleanName(name string) string {
	if p := strings.TrimPrefix(path.Clean("/"+name), "/"); p != "" {
		return p
	}
	return "."
}

// unescapeTarName undoes GNU tar's "escape" quoting style, which is what
// makes a name with a newline one listing line.
func unescapeTarName(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		if i >= len(s) {
			return "", fmt.Errorf("dangling backslash in tar listing line %q", s)
		}
		switch c := s[i]; c {
		case 'a':
			b.WriteByte('\a')
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'v':
			b.WriteByte('\v')
		case '0', '1', '2', '3', '4', '5', '6', '7':
			v := 0
			j := i
			for ; j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7'; j++ {
				v = v*8 + int(s[j]-'0')
			}
			if v > 0xff {
				return "", fmt.Errorf("bad octal escape in tar listing line %q", s)
			}
			b.WriteByte(byte(v))
			i = j - 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

// openLayer returns the uncompressed tar stream of a layer blob.
func openLayer(blobPath string) (io.ReadCloser, error) {
	f, err := os.Open(blobPath)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReaderSize(f, 1<<20)
	magic, err := br.Peek(4)
	if err != nil && err != io.EOF {
		f.Close()
		return nil, fmt.Errorf("read %s: %w", blobPath, err)
	}
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		gz, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("gzip %s: %w", blobPath, err)
		}
		return &stackedReader{Reader: gz, closers: []func() error{gz.Close, f.Close}}, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		if zstdPath, err := exec.LookPath("zstd"); err == nil {
			return zstdCommand(zstdPath, br, f)
		}
		return zstdLibrary(br, f)
	default:
		return &stackedReader{Reader: br, closers: []func() error{f.Close}}, nil
	}
}

// zstdCommand decompresses with the zstd program, the reference
// implementation, so the oracle does not lean on a Go decoder.
func zstdCommand(zstdPath string, r io.Reader, f *os.File) (io.ReadCloser, error) {
	cmd := exec.Command(zstdPath, "-dcq")
	cmd.Stdin = r
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start zstd: %w", err)
	}
	return &commandReader{out: out, cmd: cmd, stderr: &stderr, file: f}, nil
}

func zstdLibrary(r io.Reader, f *os.File) (io.ReadCloser, error) {
	zr, err := zstd.NewReader(r)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("zstd %s: %w", f.Name(), err)
	}
	return &stackedReader{Reader: zr, closers: []func() error{
		func() error { zr.Close(); return nil }, f.Close,
	}}, nil
}

type stackedReader struct {
	io.Reader
	closers []func() error
}

func (s *stackedReader) Close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c())
	}
	return errors.Join(errs...)
}

// commandReader reports the decompressor's failure as a read error at the
// end of its output, where a truncated or corrupt stream shows.
type commandReader struct {
	out    io.ReadCloser
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	file   *os.File
	waited bool
}

func (c *commandReader) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if err == io.EOF && !c.waited {
		c.waited = true
		if werr := c.cmd.Wait(); werr != nil {
			return n, fmt.Errorf("zstd %s: %w: %s", c.file.Name(), werr, strings.TrimSpace(c.stderr.String()))
		}
	}
	return n, err
}

func (c *commandReader) Close() error {
	if !c.waited {
		c.waited = true
		c.out.Close()
		_ = c.cmd.Process.Kill()
		_ = c.cmd.Wait()
	}
	return c.file.Close()
}

// listDirs returns every directory under root (root itself as "."), parents
// before children.
func listDirs(root string) ([]string, error) {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list directories of %s: %w", root, err)
	}
	return dirs, nil
}

// convertWhiteouts rewrites the markers of one unpacked layer into the
// overlayfs format. A marker never hides its own layer's entry (rule 2), so
// a whited-out name that this layer also has stays, and becomes opaque if it
// is a directory, which hides the lower one's children as the whiteout asks.
func convertWhiteouts(root string) error {
	var markers []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && strings.HasPrefix(d.Name(), whiteoutPrefix) {
			markers = append(markers, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("find whiteouts in %s: %w", root, err)
	}
	sort.Strings(markers)
	for _, m := range markers {
		dir, base := filepath.Split(m)
		if base == opaqueMarker && filepath.Clean(dir) == filepath.Clean(root) {
			// overlayfs never reads a layer root's opaque mark: the
			// marker hides nothing there.
		} else if base == opaqueMarker {
			if err := unix.Lsetxattr(dir, opaqueXattr, []byte("y"), 0); err != nil {
				return fmt.Errorf("mark %s opaque: %w", dir, err)
			}
		} else {
			name := strings.TrimPrefix(base, whiteoutPrefix)
			if name == "" || name == "." || name == ".." {
				return fmt.Errorf("whiteout %s names no entry", m)
			}
			if err := whiteOut(filepath.Join(dir, name)); err != nil {
				return err
			}
		}
		if err := os.Remove(m); err != nil {
			return fmt.Errorf("remove whiteout marker: %w", err)
		}
	}
	return nil
}

// escapeOverlayXattrs renames every trusted.overlay.X xattr an image put
// on its files to trusted.overlay.overlay.X, overlayfs's own escape (Linux
// 6.7+): overlayfs then shows it as trusted.overlay.X, as the image has
// it, instead of obeying it as a redirect, an opaque or whiteout mark, or
// metacopy. user.overlay.* needs no escape: overlayfs reads it only when
// mounted with userxattr, which the oracle's mount is not.
func escapeOverlayXattrs(root string) error {
	return filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		xs, err := readXattrs(p)
		if err != nil {
			return err
		}
		var names []string
		for name := range xs {
			if strings.HasPrefix(name, overlayXattrs) {
				names = append(names, name)
			}
		}
		// Longest first, so that an escaped name the image already has
		// moves on before the shorter one takes its place.
		sort.Slice(names, func(i, j int) bool { return len(names[i]) > len(names[j]) })
		for _, name := range names {
			rest := strings.TrimPrefix(name, overlayXattrs)
			if err := unix.Lsetxattr(p, overlayXattrs+"overlay."+rest, []byte(xs[name]), 0); err != nil {
				return fmt.Errorf("escape xattr %s of %s: %w", name, p, err)
			}
			if err := unix.Lremovexattr(p, name); err != nil {
				return fmt.Errorf("escape xattr %s of %s: %w", name, p, err)
			}
		}
		return nil
	})
}

func whiteOut(target string) error {
	var st unix.Stat_t
	err := unix.Lstat(target, &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		if err := unix.Mknod(target, unix.S_IFCHR, 0); err != nil {
			return fmt.Errorf("whiteout %s: %w", target, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("whiteout %s: %w", target, err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		if err := unix.Lsetxattr(target, opaqueXattr, []byte("y"), 0); err != nil {
			return fmt.Errorf("mark %s opaque: %w", target, err)
		}
	}
	return nil
}

// inheritDirAttrs gives the implied directory dir the owner, mode and
// xattrs of the directory at rel in the merged view of lowerDirs, or 0755
// and 0:0 if that view has none there, and returns the mtime to set once
// all children are in place.
func inheritDirAttrs(dir, rel string, lowerDirs []string) (unix.Timespec, error) {
	src, err := mergedDir(lowerDirs, rel)
	if err != nil {
		return unix.Timespec{}, err
	}
	var st unix.Stat_t
	if src == "" {
		st.Mode = 0o755
	} else if err := unix.Lstat(src, &st); err != nil {
		return unix.Timespec{}, err
	}
	if err := unix.Lchown(dir, int(st.Uid), int(st.Gid)); err != nil {
		return unix.Timespec{}, err
	}
	if err := unix.Chmod(dir, st.Mode&0o7777); err != nil {
		return unix.Timespec{}, err
	}
	if src != "" {
		xs, err := readXattrs(src)
		if err != nil {
			return unix.Timespec{}, err
		}
		for k, v := range xs {
			if strings.HasPrefix(k, overlayXattrs) {
				continue
			}
			if err := unix.Lsetxattr(dir, k, []byte(v), 0); err != nil {
				return unix.Timespec{}, fmt.Errorf("set xattr %s: %w", k, err)
			}
		}
	}
	return st.Mtim, nil
}

// mergedDir returns the host path of the directory that the overlay of
// lowerDirs (lowest first) shows at rel, or "" if it shows none: nothing
// there, a non-directory, or a whiteout, an opaque directory or a
// non-directory above it.
func mergedDir(lowerDirs []string, rel string) (string, error) {
	var parts []string
	if rel != "." {
		parts = strings.Split(rel, "/")
	}
layers:
	for i := len(lowerDirs) - 1; i >= 0; i-- {
		p := lowerDirs[i]
		opaque, err := isOpaque(p)
		if err != nil {
			return "", err
		}
		for _, part := range parts {
			p = filepath.Join(p, part)
			var st unix.Stat_t
			err := unix.Lstat(p, &st)
			if errors.Is(err, unix.ENOENT) {
				if opaque {
					return "", nil
				}
				continue layers
			}
			if err != nil {
				return "", err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return "", nil
			}
			if o, err := isOpaque(p); err != nil {
				return "", err
			} else if o {
				opaque = true
			}
		}
		return p, nil
	}
	return "", nil
}

func isOpaque(dir string) (bool, error) {
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(dir, opaqueXattr, buf)
	if errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s of %s: %w", opaqueXattr, dir, err)
	}
	return string(buf[:n]) == "y", nil
}
