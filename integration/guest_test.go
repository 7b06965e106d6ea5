package integration

import (
	"bufio"
	"bytes"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// A guest is a real VM under qemu's software emulation: Debian's kernel,
// and an initramfs of busybox-static, that kernel's modules and
// guestxattrs (busybox reads no xattrs) whose init mounts a file system
// at /mnt, walks it and reports on a second serial port, which the
// console's messages cannot garble.

// guestDoneMarker ends the guest's report; qemu may hang after it, at
// poweroff, restoring the vhost-user rings, so it is killed once seen.
const guestDoneMarker = "LAYERFS-GUEST-DONE"

// guestKernel is Debian's linux-image-amd64 kernel and its modules.
type guestKernel struct {
	image   string
	modules string // /lib/modules/VERSION
}

// debianKernel finds the newest installed Debian kernel that has its
// modules; the host's own kernel need not be one.
func debianKernel(t testing.TB) guestKernel {
	t.Helper()
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	sort.Strings(images)
	for i := len(images) - 1; i >= 0; i-- {
		version := strings.TrimPrefix(filepath.Base(images[i]), "vmlinuz-")
		mods := filepath.Join("/lib/modules", version)
		if _, err := os.Stat(filepath.Join(mods, "modules.dep")); err == nil {
			return guestKernel{image: images[i], modules: mods}
		}
	}
	testimage.Unavailable(t, "no kernel with modules in /boot and /lib/modules: install linux-image-amd64")
	return guestKernel{}
}

// modName is a module's name as modprobe spells it.
func modName(path string) string {
	base := filepath.Base(path)
	base = base[:strings.Index(base, ".ko")]
	return strings.ReplaceAll(base, "-", "_")
}

// moduleOrder lists the module files that load names, dependencies
// first, leaving out modules built into the kernel.
func (k guestKernel) moduleOrder(names ...string) ([]string, error) {
	dep, err := os.ReadFile(filepath.Join(k.modules, "modules.dep"))
	if err != nil {
		return nil, err
	}
	type mod struct {
		path string
		deps []string
	}
	mods := make(map[string]mod)
	for _, line := range strings.Split(string(dep), "\n") {
		path, deps, ok := strings.Cut(line, ":")
		if ok {
			mods[modName(path)] = mod{path: path, deps: strings.Fields(deps)}
		}
	}
	builtin := make(map[string]bool)
	if b, err := os.ReadFile(filepath.Join(k.modules, "modules.builtin")); err == nil {
		for _, p := range strings.Fields(string(b)) {
			builtin[modName(p)] = true
		}
	}
	var order []string
	seen := make(map[string]bool)
	var visit func(name string) error
	visit = func(name string) error {
		if seen[name] || builtin[name] {
			return nil
		}
		seen[name] = true
		m, ok := mods[name]
		if !ok {
			return fmt.Errorf("module %s: not in %s/modules.dep", name, k.modules)
		}
		for _, d := range m.deps {
			if err := visit(modName(d)); err != nil {
				return err
			}
		}
		order = append(order, filepath.Join(k.modules, m.path))
		return nil
	}
	for _, n := range names {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// readModule returns a module file's bytes, decompressed: busybox's
// insmod takes plain modules only.
func readModule(t testing.TB, path string) []byte {
	t.Helper()
	tool := map[string]string{".xz": "xz", ".zst": "zstd", ".gz": "gzip"}[filepath.Ext(path)]
	if tool == "" {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return testimage.RunTool(t, tool, "-dc", path)
}

// cpioEntry is one file of a newc archive, the format the kernel unpacks
// an initramfs from.
type cpioEntry struct {
	name string
	mode uint32
	data []byte
	rdev [2]uint32
}

func writeNewc(w io.Writer, entries []cpioEntry) error {
	bw := bufio.NewWriter(w)
	pad := func(n int) { bw.Write(make([]byte, (4-n%4)%4)) }
	for i, e := range append(entries, cpioEntry{name: "TRAILER!!!"}) {
		// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
		// devminor, rdevmajor, rdevminor, namesize, check
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			i+1, e.mode, 0, 0, 1, 0, len(e.data), 0, 0, e.rdev[0], e.rdev[1], len(e.name)+1, 0)
		bw.WriteString(hdr)
		bw.WriteString(e.name)
		bw.WriteByte(0)
		pad(len(hdr) + len(e.name) + 1)
		bw.Write(e.data)
		pad(len(e.data))
	}
	return bw.Flush()
}

// guestSpec says what the guest mounts at /mnt: a virtio-fs tag served
// on socket, or a disk image attached as a virtio block device.
type guestSpec struct {
	socket, tag string
	disk        guestDisk
	// writes are shell commands the guest runs after the walk, each
	// reported with its status and what it printed.
	writes  []string
	timeout time.Duration
}

// guestDisk is a file system image the guest mounts read-only from its
// first virtio block device.
type guestDisk struct {
	image  string
	fsType string // ext4 or erofs, as mount -t names it
}

// initScript is the guest's /init.
func (g guestSpec) initScript(modules []string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod /lib/modules/%s.ko || echo 'guest: insmod %s failed'\n", modName(m), modName(m))
	}
	mount := "mount -t virtiofs " + g.tag + " /mnt"
	if g.disk.image != "" {
		mount = "mount -t " + g.disk.fsType + " -o ro /dev/vda /mnt"
	}
	fmt.Fprintf(&b, `stty -F /dev/ttyS1 raw -echo
exec 3>/dev/ttyS1
up() { cut -d' ' -f1 /proc/uptime; }
echo "T|boot|$(up)" >&3
mounted=0
for i in $(seq 20); do
	if %s; then mounted=1; break; fi
	sleep 0.5
done
if [ $mounted = 1 ]; then
	cd /mnt
	t0=$(up)
	find . -exec stat -c 'S|%%f|%%u|%%g|%%s|%%Y|%%y|%%h|%%i|%%t|%%T|%%n|%%N' {} + >&3
	guestxattrs >&3 || echo "M|guestxattrs failed: $?" >&3
	t1=$(up)
	find . -type f -exec sha256sum {} + | sed 's/^/H|/' >&3
	echo "T|walk|$t0|$t1|$(up)" >&3
	cd /
`, mount)
	// Each with no terminal on stdin: busybox rm asks before removing a
	// file it may not write, which on a read-only mount is every file.
	for _, w := range g.writes {
		fmt.Fprintf(&b, "\tout=$(%s </dev/null 2>&1); echo \"W|$?|%s|$out\" >&3\n", w, w)
	}
	fmt.Fprintf(&b, `else
	echo "M|mount failed" >&3
fi
echo %s >&3
poweroff -f
`, guestDoneMarker)
	return b.String()
}

// initramfs writes the guest's initramfs and returns its path.
func (g guestSpec) initramfs(t testing.TB, k guestKernel) string {
	t.Helper()
	bb := testimage.RequireTool(t, "busybox")
	if f, err := elf.Open(bb); err != nil {
		t.Fatalf("busybox: %v", err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatalf("%s is not static: install busybox-static", bb)
			}
		}
		f.Close()
	}
	want := []string{"virtio_pci", "virtiofs"}
	if g.disk.image != "" {
		// ext4, and erofs through libcrc32c, ask for crc32c by a soft
		// dependency, which modules.dep leaves out.
		want = []string{"virtio_pci", "virtio_blk", "crc32c_generic", g.disk.fsType}
	}
	modules, err := k.moduleOrder(want...)
	if err != nil {
		t.Fatal(err)
	}
	bbData, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	entries := []cpioEntry{{name: "bin", mode: unix.S_IFDIR | 0o755}}
	for _, d := range []string{"dev", "proc", "sys", "mnt", "lib", "lib/modules"} {
		entries = append(entries, cpioEntry{name: d, mode: unix.S_IFDIR | 0o755})
	}
	xattrsBin := filepath.Join(t.TempDir(), "guestxattrs")
	build := exec.Command("go", "build", "-o", xattrsBin, "../internal/cmd/guestxattrs")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build guestxattrs: %v\n%s", err, out)
	}
	xattrsData, err := os.ReadFile(xattrsBin)
	if err != nil {
		t.Fatal(err)
	}
	entries = append(entries,
		cpioEntry{name: "dev/console", mode: unix.S_IFCHR | 0o600, rdev: [2]uint32{5, 1}},
		cpioEntry{name: "bin/busybox", mode: unix.S_IFREG | 0o755, data: bbData},
		cpioEntry{name: "bin/guestxattrs", mode: unix.S_IFREG | 0o755, data: xattrsData},
		cpioEntry{name: "init", mode: unix.S_IFREG | 0o755, data: []byte(g.initScript(modules))},
	)
	for _, m := range modules {
		entries = append(entries, cpioEntry{name: "lib/modules/" + modName(m) + ".ko", mode: unix.S_IFREG | 0o644, data: readModule(t, m)})
	}
	var buf bytes.Buffer
	if err := writeNewc(&buf, entries); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "initramfs.cpio")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// guestResult is what the guest reported.
type guestResult struct {
	tree oracle.Tree
	// writes maps each of guestSpec.writes to its exit status and output.
	writes map[string]string
	// boot is the guest's uptime when init starts; stat is how long the
	// walk took, and hash the reading and hashing of every byte after,
	// by the guest's clock.
	boot, stat, hash time.Duration
	// wall is the time from starting qemu to the marker.
	wall time.Duration
}

// runGuest boots the guest and returns its report, failing t with the
// console's output when the guest does not finish in time.
func runGuest(t testing.TB, k guestKernel, g guestSpec) guestResult {
	t.Helper()
	qemu := testimage.RequireTool(t, "qemu-system-x86_64")
	initrd := g.initramfs(t, k)
	dir := t.TempDir()
	consoleLog, reportLog := filepath.Join(dir, "console.log"), filepath.Join(dir, "report.log")
	args := []string{
		"-accel", "tcg", "-m", "512M", "-nodefaults", "-no-reboot",
		"-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem",
		"-kernel", k.image, "-initrd", initrd,
		// Under emulation on a busy host the kernel may find the timer
		// too slow to trust and panic: no_timer_check skips that test.
		"-append", "console=ttyS0 quiet panic=-1 no_timer_check",
		"-display", "none", "-monitor", "none",
		"-serial", "file:" + consoleLog, "-serial", "file:" + reportLog,
	}
	if g.disk.image != "" {
		args = append(args, "-drive", "file="+g.disk.image+",format=raw,if=virtio,readonly=on")
	} else {
		args = append(args, "-chardev", "socket,id=fs0,path="+g.socket,
			"-device", "vhost-user-fs-pci,queue-size=1024,chardev=fs0,tag="+g.tag)
	}
	cmd := exec.Command(qemu, args...)
	var qemuOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-exited
	}()
	deadline := time.After(g.timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	fail := func(why string) {
		console, _ := os.ReadFile(consoleLog)
		report, _ := os.ReadFile(reportLog)
		t.Fatalf("guest: %s\nqemu: %s\nconsole:\n%s\nreport (tail):\n%s", why, qemuOut.String(), tail(console, 4000), tail(report, 2000))
	}
	for {
		gone := false
		var exitErr error
		select {
		case exitErr = <-exited:
			exited <- exitErr
			gone = true
		case <-deadline:
			fail(fmt.Sprintf("no marker after %v", g.timeout))
		case <-tick.C:
		}
		report, _ := os.ReadFile(reportLog)
		if bytes.Contains(report, []byte(guestDoneMarker)) {
			res, err := parseReport(report)
			if err != nil {
				fail(err.Error())
			}
			res.wall = time.Since(start)
			return res
		}
		if gone {
			fail(fmt.Sprintf("qemu exited before the marker: %v", exitErr))
		}
	}
}

func tail(b []byte, n int) []byte {
	return b[max(0, len(b)-n):]
}

// parseReport reads the guest's report into the tree oracle.Walk makes
// of the same view.
func parseReport(report []byte) (guestResult, error) {
	res := guestResult{tree: make(oracle.Tree), writes: make(map[string]string)}
	inodes := make(map[uint64][]string)
	sums := make(map[string]string)
	xattrs := make(map[string]map[string]string)
	for _, line := range strings.Split(string(report), "\n") {
		line = strings.TrimRight(line, "\r")
		kind, rest, _ := strings.Cut(line, "|")
		switch kind {
		case "M":
			return res, fmt.Errorf("guest: %s", rest)
		case "T":
			f := strings.Split(rest, "|")
			secs := func(s string) time.Duration {
				v, _ := strconv.ParseFloat(s, 64)
				return time.Duration(v * float64(time.Second))
			}
			if f[0] == "boot" {
				res.boot = secs(f[1])
			} else if len(f) == 4 {
				res.stat, res.hash = secs(f[2])-secs(f[1]), secs(f[3])-secs(f[2])
			}
		case "W":
			status, rest, _ := strings.Cut(rest, "|")
			cmd, out, _ := strings.Cut(rest, "|")
			res.writes[cmd] = status + " " + out
		case "X":
			f := strings.SplitN(rest, "|", 3)
			if len(f) != 3 {
				return res, fmt.Errorf("report: bad xattr line %q", line)
			}
			value, err := hex.DecodeString(f[2])
			if err != nil {
				return res, fmt.Errorf("report: %q: %w", line, err)
			}
			if xattrs[f[0]] == nil {
				xattrs[f[0]] = make(map[string]string)
			}
			xattrs[f[0]][f[1]] = string(value)
		case "H":
			sum, p, ok := strings.Cut(rest, "  ")
			if !ok {
				return res, fmt.Errorf("report: bad hash line %q", line)
			}
			sums[relPath(p)] = sum
		case "S":
			p, ino, e, err := parseStat(rest)
			if err != nil {
				return res, fmt.Errorf("report: %q: %w", line, err)
			}
			res.tree[p] = e
			if e.Type != oracle.TypeDir {
				inodes[ino] = append(inodes[ino], p)
			}
		}
	}
	for _, ps := range inodes {
		sort.Strings(ps)
		for _, p := range ps {
			e := res.tree[p]
			e.HardlinkID = ps[0]
			res.tree[p] = e
		}
	}
	for p, e := range res.tree {
		if e.Type == oracle.TypeReg {
			e.SHA256 = sums[p]
		}
		e.Xattrs = xattrs[p]
		res.tree[p] = e
	}
	return res, nil
}

func relPath(p string) string {
	if p == "." {
		return p
	}
	return strings.TrimPrefix(p, "./")
}

// numbers parses numbers, keeping the first error.
type numbers struct{ err error }

func (n *numbers) parse(s string, base int) uint64 {
	v, err := strconv.ParseUint(s, base, 64)
	if err != nil && n.err == nil {
		n.err = fmt.Errorf("%q: %w", s, err)
	}
	return v
}

// parseStat reads one line of stat -c
// '%f|%u|%g|%s|%Y|%y|%h|%i|%t|%T|%n|%N' (hex mode, uid, gid, size,
// mtime seconds, mtime readable with nanoseconds, links, inode, device
// major and minor in hex, name, quoted name with link target).
func parseStat(s string) (string, uint64, oracle.Entry, error) {
	f := strings.SplitN(s, "|", 11)
	if len(f) != 11 {
		return "", 0, oracle.Entry{}, fmt.Errorf("want 12 fields")
	}
	var n numbers
	// %n and %N: the names in the images tested hold no "|".
	name, quoted, _ := strings.Cut(f[10], "|")
	mode := uint32(n.parse(f[0], 16))
	e := oracle.Entry{
		Mode:  mode & 0o7777,
		UID:   uint32(n.parse(f[1], 10)),
		GID:   uint32(n.parse(f[2], 10)),
		Mtime: oracle.Timespec{Sec: int64(n.parse(f[4], 10))},
		Nlink: n.parse(f[6], 10),
	}
	// %y is "2006-01-02 15:04:05.999999999 +0000".
	if clock := strings.Fields(f[5]); len(clock) == 3 {
		if _, frac, ok := strings.Cut(clock[1], "."); ok {
			e.Mtime.Nsec = int64(n.parse(frac, 10))
		}
	}
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type, e.Nlink = oracle.TypeDir, 0
	case unix.S_IFREG:
		e.Type, e.Size = oracle.TypeReg, int64(n.parse(f[3], 10))
	case unix.S_IFLNK:
		e.Type, e.Size = oracle.TypeSymlink, int64(n.parse(f[3], 10))
		// busybox prints 'name' -> 'target'
		_, target, ok := strings.Cut(quoted, "' -> '")
		if !ok {
			return "", 0, e, fmt.Errorf("no link target in %q", quoted)
		}
		e.Link = strings.TrimSuffix(target, "'")
	case unix.S_IFCHR, unix.S_IFBLK:
		e.Type = oracle.TypeChar
		if mode&unix.S_IFMT == unix.S_IFBLK {
			e.Type = oracle.TypeBlock
		}
		e.DevMajor, e.DevMinor = uint32(n.parse(f[8], 16)), uint32(n.parse(f[9], 16))
	case unix.S_IFIFO:
		e.Type = oracle.TypeFIFO
	case unix.S_IFSOCK:
		e.Type = oracle.TypeSocket
	}
	ino := n.parse(f[7], 10)
	return relPath(name), ino, e, n.err
}

// checkGuestSees fails t unless what the guest reported equals the host's
// layerfs mount of target from store root, entry by entry, xattrs
// included, and each of guestWrites failed with Read-only file system.
func checkGuestSees(t *testing.T, res guestResult, root, target string) {
	t.Helper()
	t.Logf("guest: init after %v of uptime, walk %v, hash %v; %v from qemu start to report", res.boot, res.stat, res.hash, res.wall)
	want, err := oracle.Walk(mountDaemon(t, root, target))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.tree) < 10 {
		t.Fatalf("guest listed %d entries", len(res.tree))
	}
	for _, d := range oracle.Diff(want, res.tree) {
		t.Errorf("guest differs from the host mount (want host, got guest): %s", d)
	}
	for _, w := range guestWrites {
		got, ok := res.writes[w]
		switch {
		case !ok:
			t.Errorf("guest %q: not reported", w)
		case strings.HasPrefix(got, "0 ") || !strings.Contains(got, "Read-only file system"):
			t.Errorf("guest %q: got %q, want a failure with Read-only file system", w, got)
		}
	}
}
