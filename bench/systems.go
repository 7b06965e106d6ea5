package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"golang.org/x/sys/unix"
)

// nobody is the unprivileged user of the no-passthrough cases.
const nobody = 65534

const fuseSuperMagic = 0x65735546

// bench is one run of the program: where things are, and what it asks.
type bench struct {
	bin    string // the layerfs binary, copied where nobody can run it
	cache  string
	work   string // scratch: mountpoints, bundles, images
	out    string
	runs   int
	quick  bool
	corpus *corpus
	// profile, when set, is the path prefix the next layerfs server
	// writes its CPU and heap profiles to.
	profile string
	// stats, when set, is the file the next layerfs server writes its
	// FUSE request counts to.
	stats  string
	shapes map[string]shape
	// imports counts the import runs, each of which writes a directory
	// of its own (importRun).
	imports int
}

// layerfs runs the binary against store root and returns its stdout.
func (b *bench) layerfs(root string, args ...string) (string, error) {
	return b.layerfsAs(false, root, args...)
}

func (b *bench) layerfsAs(unpriv bool, root string, args ...string) (string, error) {
	// Commands of no store (umount) are given none: an empty --root is
	// refused.
	argv := []string{b.bin}
	if root != "" {
		argv = append(argv, "--root", root)
	}
	argv = append(argv, args...)
	if unpriv {
		argv = asNobody(argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = os.Environ()
	if b.profile != "" {
		cmd.Env = append(cmd.Env, "LAYERFS_CPUPROFILE="+b.profile+"-cpu.pprof", "LAYERFS_MEMPROFILE="+b.profile+"-heap.pprof")
	}
	if b.stats != "" {
		cmd.Env = append(cmd.Env, statsEnv+"="+b.stats)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("layerfs %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func asNobody(argv ...string) []string {
	id := strconv.Itoa(nobody)
	return append([]string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups", "--"}, argv...)
}

// run runs a command, failing with its stderr.
func run(argv ...string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return nil
}

// drained runs a command whose stdout is read to the end here, so that
// nothing can short-cut writing it (GNU tar skips reading files it would
// write to /dev/null), and returns the lines it wrote.
func drained(argv ...string) (int, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("%s: %w", argv[0], err)
	}
	lines := 0
	buf := make([]byte, 1<<20)
	for {
		n, rerr := out.Read(buf)
		lines += bytes.Count(buf[:n], []byte{'\n'})
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			cmd.Wait()
			return 0, rerr
		}
	}
	if err := cmd.Wait(); err != nil {
		return 0, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(errb.String()))
	}
	return lines, nil
}

// dropCaches writes back and drops the page, dentry and inode caches, so
// the next case reads from disk and every FUSE lookup reaches its server.
func dropCaches() error {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// mountpoint makes a fresh empty directory to mount on.
func (b *bench) mountpoint(name string) (string, error) {
	mp := filepath.Join(b.work, "mnt", name)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", err
	}
	return mp, os.Chown(mp, nobody, nobody)
}

// mounted is one mounted view; server is the PID serving it, if any.
type mounted struct {
	dir     string
	server  int
	umount  func() error
	elapsed time.Duration // from starting the mount until it answered
}

// system is one way of showing an image's merged root.
type system struct {
	name  string
	mount func(b *bench, img *image, mp string) (*mounted, error)
}

var (
	layerfsRoot = system{"layerfs", func(b *bench, img *image, mp string) (*mounted, error) {
		return b.mountLayerfs(b.corpus.store, img.name, mp, false)
	}}
	layerfsNobody = system{"layerfs unprivileged", func(b *bench, img *image, mp string) (*mounted, error) {
		return b.mountLayerfs(b.corpus.nobodyStore, img.name, mp, true)
	}}
	kernelOverlay = system{"kernel overlayfs", func(b *bench, img *image, mp string) (*mounted, error) {
		start := time.Now()
		umount, err := oracle.Mount(img.unpacked, mp)
		if err != nil {
			return nil, err
		}
		return &mounted{dir: mp, umount: umount, elapsed: time.Since(start)}, nil
	}}
	fuseOverlay = system{"fuse-overlayfs", mountFuseOverlayfs}
)

func (b *bench) mountLayerfs(store, target, mp string, unpriv bool) (*mounted, error) {
	start := time.Now()
	if _, err := b.layerfsAs(unpriv, store, "mount", "--daemon", target, mp); err != nil {
		return nil, err
	}
	m := &mounted{dir: mp, elapsed: time.Since(start)}
	pid, err := serverPID(b.bin, mp)
	if err != nil {
		return nil, errors.Join(err, b.unmountLayerfs(mp, unpriv, 0))
	}
	m.server = pid
	m.umount = func() error { return b.unmountLayerfs(mp, unpriv, pid) }
	return m, nil
}

// unmountLayerfs unmounts and waits for the server to exit, so that it
// has written its profiles and its memory is free for the next case.
func (b *bench) unmountLayerfs(mp string, unpriv bool, pid int) error {
	if _, err := b.layerfsAs(unpriv, "", "umount", mp); err != nil {
		return err
	}
	if pid == 0 {
		return nil
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			return nil
		}
	}
	return fmt.Errorf("layerfs server %d still running after unmounting %s", pid, mp)
}

// serverPID finds the layerfs server of mountpoint mp: the process of bin
// whose command line is a mount ending in mp.
func serverPID(bin, mp string) (int, error) {
	procs, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		return 0, err
	}
	for _, p := range procs {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
		if len(args) < 3 || args[0] != bin || args[len(args)-1] != mp || !contains(args, "mount") {
			continue
		}
		return strconv.Atoi(filepath.Base(filepath.Dir(p)))
	}
	return 0, fmt.Errorf("no layerfs server for %s", mp)
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// mountFuseOverlayfs stacks the oracle's unpacked layers with
// fuse-overlayfs, which reads them in the same format kernel overlayfs
// does. It forks into the background once the mount is set up.
func mountFuseOverlayfs(b *bench, img *image, mp string) (*mounted, error) {
	lower := make([]string, 0, len(img.unpacked))
	for i := len(img.unpacked) - 1; i >= 0; i-- {
		lower = append(lower, img.unpacked[i])
	}
	start := time.Now()
	if err := run("fuse-overlayfs", "-o", "lowerdir="+strings.Join(lower, ":"), mp); err != nil {
		return nil, err
	}
	if err := waitFuse(mp); err != nil {
		return nil, errors.Join(err, unix.Unmount(mp, 0))
	}
	return &mounted{dir: mp, elapsed: time.Since(start), umount: func() error {
		if err := unix.Unmount(mp, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
		return nil
	}}, nil
}

func waitFuse(mp string) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		var st unix.Statfs_t
		if unix.Statfs(mp, &st) == nil && st.Type == fuseSuperMagic {
			return nil
		}
	}
	return fmt.Errorf("%s: no FUSE mount appeared", mp)
}
