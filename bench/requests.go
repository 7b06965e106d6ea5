package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"golang.org/x/sys/unix"
)

// statsEnv is the variable a layerfs server writes its FUSE request
// counts under (fs.StatsEnv; the bench runs the binary, not the package).
const statsEnv = "LAYERFS_FUSE_STATS"

// need is how a case lists the view, which sets the fewest listing
// requests a kernel can do with.
type need int

const (
	// needNames lists every directory, stating nothing (ls -f): READDIR.
	needNames need = iota
	// needStat lists and stats every entry (find, a warm run aside): one
	// READDIRPLUS per directory and per 128 KiB of its entries.
	needStat
	// needContent also reads every symlink once (tar, mkfs, rsync): a
	// READLINK each. What else it asks is its tool's calls.
	needContent
)

// shape is what a merged view holds, as kernel overlayfs shows it.
type shape struct {
	entries, dirs, symlinks int
	nameBytes               int
	// nonEmptyNames are the names of non-empty regular files, each of a
	// hardlinked file's names; files are the regular files, empty ones
	// too, each once whatever its names.
	nonEmptyNames, files int
	// further are the names of regular files beyond each one's first.
	further int
	// xattrNames are the xattrs of every entry, counted for each of a
	// file's names; firstXattrNames and firstWithXattrs, for its first
	// name only. caps and firstCaps count security.capability alone: the
	// kernel answers a getxattr of it itself, from the two it asks the
	// file system (size, then value), to convert the capability.
	xattrNames, firstXattrNames, firstWithXattrs int
	caps, firstCaps                              int
}

// xattrs tells whether any entry has an xattr: a view without any answers
// the first GETXATTR with ENOSYS, after which the kernel asks no more.
func (s shape) xattrs() bool { return s.xattrNames > 0 }

// getxattrs is what a tool's lgetxattr of each of names xattrs, caps of
// them security.capability, costs, called times each: nothing in a view
// without xattrs.
func (s shape) getxattrs(names, caps, times int) int {
	if !s.xattrs() {
		return 0
	}
	return times * (names + caps)
}

// The requests a tool's own calls cost on every run, cold or warm: the
// kernel caches no open and no xattr answer for FUSE, so each open of a
// file is an OPEN and a RELEASE, and each xattr call a round trip. Each
// is what strace shows the tool calling on kernel overlayfs.

// tarCalls: GNU tar opens every name of a non-empty regular file, a
// hardlink's too; without --xattrs it asks for none.
func tarCalls(s shape) int { return 2 * s.nonEmptyNames }

// mkfsCalls: mkfs.ext4 -d opens each regular file once, empty ones too;
// for every entry but a file's further names it calls llistxattr with no
// buffer, and once more with one when there are xattrs, then lgetxattr
// for each one's size and again for its value.
func mkfsCalls(s shape) int {
	return 2*s.files + s.entries - s.further + s.firstWithXattrs + s.getxattrs(s.firstXattrNames, s.firstCaps, 2)
}

// rsyncCalls: the sender of rsync -aHAX opens each regular file once,
// empty ones too; for every name it calls getxattr of
// system.posix_acl_access (not of a symlink) and, for a directory, of
// system.posix_acl_default, llistxattr once, and lgetxattr twice for each
// xattr.
func rsyncCalls(s shape) int {
	return 2*s.files + s.entries + s.getxattrs(s.entries-s.symlinks+s.dirs, 0, 1) + s.getxattrs(s.xattrNames, s.caps, 2)
}

// direntplusBytes and direntBytes are the bytes of a READDIRPLUS and of a
// READDIR entry beside its name: fuse_direntplus (entry_out 128 + dirent
// 24) and fuse_dirent, names padded to 8. listingBytes is the most of a
// listing one reply carries: the kernel asks for as much as the reader's
// getdents buffer holds, up to its largest request (128 KiB, the mount's
// max_pages).
const (
	direntplusBytes = 152
	direntBytes     = 24
	listingBytes    = 128 << 10
)

// minimum is the fewest requests per entry the kernel needs for a case
// over a view of this shape, every answer cached for the mount's life.
// Cold: a directory is read in replies of up to listingBytes, and its end is one more
// request, empty, since a reply cannot say it is the last. Warm: nothing
// but what the kernel never caches: the tool's opens and xattr calls.
func (s shape) minimum(k *counted) float64 {
	if s.entries == 0 {
		return 0
	}
	reqs := 0
	if k.calls != nil {
		reqs += k.calls(s)
	}
	if !k.warm {
		per := direntplusBytes
		if k.need == needNames {
			per = direntBytes
		}
		avgName := s.nameBytes / s.entries
		reqs += s.entries*(per+(avgName+7)/8*8)/listingBytes + 2*s.dirs
		if k.need == needContent {
			reqs += s.symlinks
		}
	}
	return float64(reqs) / float64(s.entries)
}

// shapeOf walks img's merged view on kernel overlayfs, once per run.
func (b *bench) shapeOf(img *image) (shape, error) {
	if s, ok := b.shapes[img.name]; ok {
		return s, nil
	}
	mp, err := b.mountpoint("shape")
	if err != nil {
		return shape{}, err
	}
	umount, err := oracle.Mount(img.unpacked, mp)
	if err != nil {
		return shape{}, err
	}
	var s shape
	seen := map[uint64]bool{}
	err = filepath.WalkDir(mp, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == mp {
			return err
		}
		s.entries++
		s.nameBytes += len(d.Name())
		names, caps, err := xattrCount(p)
		if err != nil {
			return err
		}
		s.xattrNames += names
		s.caps += caps
		first := true
		switch {
		case d.IsDir():
			s.dirs++
		case d.Type()&fs.ModeSymlink != 0:
			s.symlinks++
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			if info.Size() > 0 {
				s.nonEmptyNames++
			}
			ino := info.Sys().(*syscall.Stat_t).Ino
			first = !seen[ino]
			seen[ino] = true
			if first {
				s.files++
			} else {
				s.further++
			}
		}
		if first && names > 0 {
			s.firstXattrNames += names
			s.firstCaps += caps
			s.firstWithXattrs++
		}
		return nil
	})
	if uerr := umount(); err == nil {
		err = uerr
	}
	if err != nil {
		return shape{}, fmt.Errorf("walk %s: %w", img.name, err)
	}
	if b.shapes == nil {
		b.shapes = map[string]shape{}
	}
	b.shapes[img.name] = s
	return s, nil
}

// requestRow is what one run of a case cost in FUSE requests.
type requestRow struct {
	c      benchCase
	shape  shape
	counts map[string]uint64
	// gap is the case's layerfs median less kernel overlayfs's, in
	// seconds: what the round trips are set beside.
	gap float64
}

// counted is how a case's FUSE requests are counted: body run on a
// fresh layerfs mount of img, cold or after a warm-up run.
type counted struct {
	img  *image
	need need
	warm bool
	body func(dir string) error
	// calls are the requests the tool's own opens and xattr calls cost
	// over a view of a shape (tarCalls, mkfsCalls, rsyncCalls); nil for
	// a tool that only lists.
	calls func(shape) int
}

// countRequests runs c's body once on a layerfs mount whose server counts
// requests. Warm, the counts the server dumps on SIGUSR1 after the warm-up
// are taken off the total.
func (b *bench) countRequests(c benchCase) (requestRow, error) {
	k := c.counted
	s, err := b.shapeOf(k.img)
	if err != nil {
		return requestRow{}, err
	}
	stats := filepath.Join(b.work, "requests.json")
	os.Remove(stats)
	defer os.Remove(stats)
	b.stats = stats
	defer func() { b.stats = "" }()
	mp, err := b.mountpoint(layerfsRoot.name)
	if err != nil {
		return requestRow{}, err
	}
	m, err := layerfsRoot.mount(b, k.img, mp)
	if err != nil {
		return requestRow{}, err
	}
	var before map[string]uint64
	err = func() error {
		if !k.warm {
			return dropCaches()
		}
		if err := k.body(m.dir); err != nil {
			return err
		}
		if err := unix.Kill(m.server, unix.SIGUSR1); err != nil {
			return err
		}
		var err error
		before, err = readCounts(stats, 10*time.Second)
		return err
	}()
	if err == nil {
		err = k.body(m.dir)
	}
	if uerr := m.umount(); err == nil {
		err = uerr
	}
	if err != nil {
		return requestRow{}, fmt.Errorf("count requests of %s: %w", c.name, err)
	}
	after, err := readCounts(stats, 0)
	if err != nil {
		return requestRow{}, fmt.Errorf("count requests of %s: %w", c.name, err)
	}
	for op, v := range before {
		if after[op] -= v; after[op] == 0 {
			delete(after, op)
		}
	}
	return requestRow{c: c, shape: s, counts: after}, nil
}

// readCounts reads a server's request counts, waiting up to wait for it to
// write them, and removes the file.
func readCounts(path string, wait time.Duration) (map[string]uint64, error) {
	deadline := time.Now().Add(wait)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			var counts map[string]uint64
			if err := json.Unmarshal(data, &counts); err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			return counts, os.Remove(path)
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// xattrCount counts the xattrs of the entry at p, and which of them are
// security.capability.
func xattrCount(p string) (names, caps int, err error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return 0, 0, err
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil {
		return 0, 0, fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	for _, name := range strings.Split(strings.TrimSuffix(string(buf[:size]), "\x00"), "\x00") {
		names++
		if name == "security.capability" {
			caps++
		}
	}
	return names, caps, nil
}

func (r requestRow) total() uint64 {
	var t uint64
	for _, v := range r.counts {
		t += v
	}
	return t
}

func (r requestRow) cells(rt roundTrip) []string {
	e := float64(r.shape.entries)
	ops := make([]string, 0, len(r.counts))
	for op := range r.counts {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	parts := make([]string, len(ops))
	for i, op := range ops {
		parts[i] = fmt.Sprintf("%s %.2f", op, float64(r.counts[op])/e)
	}
	return []string{r.c.name, fmt.Sprint(r.shape.entries), fmt.Sprintf("%.2f", float64(r.total())/e),
		fmt.Sprintf("%.2f", r.shape.minimum(r.c.counted)), figure(rt.cost(r.total()), "s"), figure(r.gap, "s"),
		strings.Join(parts, ", ")}
}

var requestHeader = []string{"case", "entries", "requests/entry", "kernel minimum/entry", "their round trips", "gap to kernel overlayfs", "by opcode, per entry"}

func requestTable(w io.Writer, rows []requestRow, rt roundTrip) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nFUSE requests the layerfs server answered in one run, per entry of the view; their round trips at the cost below beside the case's gap:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(requestHeader, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r.cells(rt), "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w, rt.line())
}

func requestMarkdown(sb *strings.Builder, rows []requestRow, rt roundTrip) {
	if len(rows) == 0 {
		return
	}
	sb.WriteString("\nFUSE requests the layerfs server answered in one run, per entry of the view. The minimum is what a kernel that caches every answer for the mount's life needs: a READDIRPLUS per 128 KiB of a directory's entries (READDIR for `ls -f`) and an empty one for its end, a READLINK per symlink, and what the kernel caches none of for FUSE: an OPEN and a RELEASE per open of a file by the tool (reads pass through) and each of its xattr calls (a getxattr only when the view has xattrs), counted from the tool's system calls as strace shows them; warm, the opens and xattr calls only. Their round trips are the requests times what one costs beyond the same call on kernel overlayfs (below), beside the gap between the case's medians on layerfs and on kernel overlayfs: where the two are close, the gap is the round trips.\n\n")
	sb.WriteString("| " + strings.Join(requestHeader, " | ") + " |\n")
	sb.WriteString(strings.Repeat("| --- ", len(requestHeader)) + "|\n")
	for _, r := range rows {
		sb.WriteString("| " + strings.Join(r.cells(rt), " | ") + " |\n")
	}
	sb.WriteString("\n" + rt.line() + "\n")
}
