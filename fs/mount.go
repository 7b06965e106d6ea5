package fs

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/layerfs/layerfs/internal/kernelpath"
	"github.com/layerfs/layerfs/internal/procstat"
	"github.com/layerfs/layerfs/store"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// FSType is the name a layerfs mount shows in /proc/mounts, after "fuse.".
const FSType = "layerfs"

// MountOptions lift the mount's safe defaults.
type MountOptions struct {
	// Source is what /proc/mounts shows as the mount's source: the target.
	Source     string
	AllowOther bool
	Dev        bool
	Suid       bool
	Debug      bool
}

// CheckMountpoint refuses a mountpoint that is missing, not a directory
// or already a mountpoint, and a machine without FUSE.
func CheckMountpoint(mp string) error {
	if err := CheckMountpointDir(mp); err != nil {
		return err
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no FUSE: %w", err)
	}
	return nil
}

// CheckMountpointDir refuses a mountpoint that is missing, not a
// directory or already a mountpoint.
func CheckMountpointDir(mp string) error {
	st, err := os.Stat(mp)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s: not a directory", mp)
	}
	m, found, err := FindMount(mp)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	if found && (m.FSType == "fuse."+FSType || isKernelMount(m)) {
		// Also one whose server died: nothing else removes it.
		return fmt.Errorf("mountpoint %s: already a mountpoint (%s); \"layerfs umount %s\" removes it", mp, m.FSType, mp)
	}
	if found {
		return fmt.Errorf("mountpoint %s: already a mountpoint (%s)", mp, m.FSType)
	}
	return nil
}

// ResolveMountpoint is mountpoint as the kernel resolves it, absolute
// with every symlink followed, as mount(8) has it: what a mount there
// shows in the kernel's table, so what its record and umount must name
// too. The caller checks the directory it names (CheckMountpointDir),
// not the path it was given. Resolving asks nothing of the FUSE server
// of a mount already there, which may hang (umount resolves too).
func ResolveMountpoint(mountpoint string) (string, error) {
	resolved, err := kernelpath.Resolve(mountpoint)
	if err != nil {
		return "", fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	return resolved, nil
}

// openMountpoint opens the directory at mountpoint, a path resolved
// already (ResolveMountpoint), for the mount to be made on what the
// descriptor names rather than on the path walked again: a symlink on
// the path now was put there since it was resolved, as a directory the
// user controls swapped for a link to "/" would move a mount at its
// "etc" onto /etc, and is refused.
func openMountpoint(mountpoint string) (int, error) {
	fd, err := unix.Openat2(unix.AT_FDCWD, mountpoint, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS,
	})
	if errors.Is(err, unix.ELOOP) {
		return -1, fmt.Errorf("mountpoint %s: a symlink is on its path now, which was not when it was resolved: refusing to mount through it", mountpoint)
	}
	if err != nil {
		return -1, fmt.Errorf("mountpoint %s: %w", mountpoint, err)
	}
	return fd, nil
}

// Served is a mount's running server.
type Served interface {
	// Wait returns once the mount is gone.
	Wait()
	// Unmount detaches the mount and waits for its server to end.
	Unmount() error
}

// Mount serves tree at mountpoint, read-only, nosuid and nodev unless
// asked, with default_permissions always so the image's modes are
// enforced. It returns once the kernel answers on the mount. mountpoint
// is resolved already (ResolveMountpoint): run by root, a symlink on its
// path by the time of the mount is refused.
func Mount(tree *Tree, mountpoint string, o MountOptions) (Served, error) {
	opts := tree.mountOptions()
	opts.FsName = MountSource(o.Source)
	opts.Name = FSType
	opts.AllowOther = o.AllowOther
	opts.Debug = o.Debug
	opts.MaxReadAhead = 1 << 20
	opts.Options = []string{"ro", "default_permissions"}
	flags := uintptr(unix.MS_RDONLY)
	if !o.Suid {
		opts.Options = append(opts.Options, "nosuid")
		flags |= unix.MS_NOSUID
	}
	if !o.Dev {
		opts.Options = append(opts.Options, "nodev")
		flags |= unix.MS_NODEV
	}
	s := newServer(tree)
	raw := withStats(s)
	if os.Geteuid() == 0 {
		abs, err := filepath.Abs(mountpoint)
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
		}
		d, err := mountDevice(raw, abs, opts, flags)
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
		}
		s.device.Store(backingFiles(d))
		go d.Serve()
		// As go-fuse's server does before it returns: a request answered
		// through the mount, which also leaves the root's attributes
		// cached for the first walk.
		if err := unix.Stat(abs, new(unix.Stat_t)); err != nil {
			return nil, errors.Join(fmt.Errorf("mount %s: not answering: %w", mountpoint, err), d.Unmount())
		}
		return d, nil
	}
	if o.AllowOther && !userAllowOther() {
		// fusermount3 would refuse with its reason on stderr, which a
		// --daemon mount's error leaves out.
		return nil, fmt.Errorf("mount %s: --allow-other: fusermount3 allows allow_other only if user_allow_other is set in %s", mountpoint, fuseConf)
	}
	if err := unix.Access(mountpoint, unix.W_OK); err != nil {
		// fusermount3 checks this too, as access(2) does with the real
		// uid, but its refusal says neither who is refused nor why
		// writing is asked for.
		return nil, fmt.Errorf("mount %s: you (uid %d) have no write access to the mountpoint, which fusermount3 requires of a user other than root: %w", mountpoint, os.Getuid(), err)
	}
	var srv *fuse.Server
	said, err := catchStderr(func() (err error) {
		srv, err = fuse.NewServer(raw, mountpoint, &opts)
		return err
	})
	switch {
	case err != nil && said != "":
		// go-fuse's own error then gives only fusermount3's wait status.
		return nil, fmt.Errorf("mount %s: %s", mountpoint, said)
	case err != nil:
		return nil, fmt.Errorf("mount %s: %w", mountpoint, trimmedError{err})
	case said != "":
		logrus.Warnf("mount %s: %s", mountpoint, said)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	return srv, nil
}

// trimmedError is err without the newline go-fuse ends some of its errors
// with, which would break layerfs's one-line error, still wrapping err.
type trimmedError struct{ err error }

func (e trimmedError) Error() string { return strings.TrimSpace(e.err.Error()) }
func (e trimmedError) Unwrap() error { return e.err }

// catchStderr runs mount with os.Stderr a pipe, and returns what was
// written to it, on one line. go-fuse hands os.Stderr to fusermount3,
// whose reason for a refusal would otherwise go out apart from the error,
// on a line of its own, and from a --daemon server only to its log.
// Nothing else of ours writes to os.Stderr meanwhile: logrus keeps the
// file it was given.
func catchStderr(mount func() error) (said string, err error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	read := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		read <- b
	}()
	stderr := os.Stderr
	os.Stderr = w
	err = mount()
	os.Stderr = stderr
	w.Close()
	lines := strings.Split(strings.TrimSpace(string(<-read)), "\n")
	return strings.Join(lines, "; "), err
}

const fuseConf = "/etc/fuse.conf"

// userAllowOther reports whether fuse.conf lets users mount with
// allow_other, as fusermount3 reads it: a line user_allow_other, comments
// after #.
func userAllowOther() bool {
	data, err := os.ReadFile(fuseConf)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		line, _, _ = strings.Cut(line, "#")
		if strings.TrimSpace(line) == "user_allow_other" {
			return true
		}
	}
	return false
}

// ErrBusy is returned when a mount cannot go because files are open in it.
var ErrBusy = errors.New("mount is busy: files or directories in it are still in use")

// probeWait is how long a mount's server has to answer a statfs before it
// counts as unresponsive.
const probeWait = 3 * time.Second

// Unmount detaches the layerfs mount at mountpoint, and removes what the
// runtime directory holds of it. A mount whose server is gone or does not
// answer has its FUSE connection aborted first, so that the unmount, and
// every process waiting on the mount, return; its open files then answer
// ENOTCONN and the mount is detached lazily. A kernel mount goes with
// the EROFS mount beneath it, which only it held. No other mount is
// touched. mountpoint resolves as a mount's does (ResolveMountpoint).
func Unmount(mountpoint string) error {
	abs, resolveErr := ResolveMountpoint(mountpoint)
	if resolveErr != nil {
		// Looked for as given: a path this user cannot resolve may still
		// be in the kernel's table, and else is not a layerfs mount.
		var err error
		if abs, err = filepath.Abs(mountpoint); err != nil {
			return err
		}
	}
	m, found, err := FindMount(abs)
	if err != nil {
		return err
	}
	if found && isKernelMount(m) {
		if err := unmountKernel(abs); err != nil {
			return fmt.Errorf("unmount %s: %w", mountpoint, err)
		}
		return nil
	}
	if !found && errors.Is(resolveErr, unix.ENOENT) {
		return fmt.Errorf("%s: does not exist", mountpoint)
	}
	if !found || m.FSType != "fuse."+FSType {
		return fmt.Errorf("%s: not a layerfs mount", mountpoint)
	}
	if uid := os.Getuid(); uid != 0 && m.User >= 0 && m.User != uid {
		// fusermount3 would refuse too, saying the mount is not in
		// /etc/mtab, which is not why.
		return fmt.Errorf("unmount %s: the mount is uid %d's; only that user or root may unmount it", mountpoint, m.User)
	}
	aborted := false
	if state := probe(abs); state != StateServing {
		if err := AbortConnection(m); err != nil {
			return fmt.Errorf("unmount %s: its server is %s: %w", mountpoint, state, err)
		}
		aborted = true
	}
	if err := unmount(abs, aborted); err != nil {
		return fmt.Errorf("unmount %s: %w", mountpoint, err)
	}
	removeState(abs, true)
	return nil
}

// FindMount returns the mount at mountpoint in the kernel's table (the
// top one, when several are stacked there), touching no mount.
func FindMount(mountpoint string) (m MountInfo, found bool, err error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return m, false, err
	}
	all, err := MountTable()
	if err != nil {
		return m, false, err
	}
	for _, c := range all {
		if c.Mountpoint == abs {
			m, found = c, true
		}
	}
	return m, found, nil
}

// unmount unmounts abs, detaching it lazily when lazy and it is busy.
func unmount(abs string, lazy bool) error {
	if os.Geteuid() == 0 {
		err := unix.Unmount(abs, 0)
		if errors.Is(err, unix.EBUSY) && lazy {
			err = unix.Unmount(abs, unix.MNT_DETACH)
		}
		if errors.Is(err, unix.EBUSY) {
			return ErrBusy
		}
		return err
	}
	out, err := exec.Command("fusermount3", "-u", abs).CombinedOutput()
	if err != nil && strings.Contains(string(out), "busy") && lazy {
		out, err = exec.Command("fusermount3", "-u", "-z", abs).CombinedOutput()
	}
	if err != nil {
		if strings.Contains(string(out), "busy") {
			return ErrBusy
		}
		return fmt.Errorf("fusermount3 -u failed (%w): %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// fusectl is where the kernel's FUSE control filesystem is mounted.
const fusectl = "/sys/fs/fuse/connections"

// AbortConnection aborts the FUSE connection of mount m, as writing to
// its abort file in the FUSE control filesystem does: every request
// waiting on the server fails, and the mount answers ENOTCONN. The
// connection is the one numbered by the minor of the mount's device. The
// control filesystem is mounted first when it is not (root only).
func AbortConnection(m MountInfo) error {
	if m.Major != 0 {
		return fmt.Errorf("%s: device %d:%d is not a FUSE connection", m.Mountpoint, m.Major, m.Minor)
	}
	abort := filepath.Join(fusectl, strconv.FormatUint(uint64(m.Minor), 10), "abort")
	if _, err := os.Stat(abort); errors.Is(err, os.ErrNotExist) && os.Geteuid() == 0 {
		if err := unix.Mount("fusectl", fusectl, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount the FUSE control filesystem at %s: %w", fusectl, err)
		}
	}
	f, err := os.OpenFile(abort, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("abort the FUSE connection of %s: %w", m.Mountpoint, err)
	}
	_, err = f.WriteString("1")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("abort the FUSE connection of %s: %w", m.Mountpoint, err)
	}
	return nil
}

// MountState is how a mount's server is doing.
type MountState string

const (
	// StateServing is a mount whose server is running, or answers.
	StateServing MountState = "serving"
	// StateDead is a mount whose server is gone: it answers ENOTCONN
	// until layerfs umount removes it.
	StateDead MountState = "dead"
	// StateUnresponsive is a mount whose server did not answer a statfs
	// in time: stuck, or very busy.
	StateUnresponsive MountState = "unresponsive"
	// StateUnknown is a mount of a server this user did not start.
	StateUnknown MountState = "unknown"
	// StateMounted is a kernel mount: there is no server, the kernel
	// serves it for as long as it is mounted.
	StateMounted MountState = "mounted"
)

// MountType is what serves a layerfs mount.
type MountType string

const (
	// TypeFUSE is a mount served by a layerfs process over FUSE.
	TypeFUSE MountType = "fuse"
	// TypeKernel is a mount --kernel: overlayfs over a metadata-only
	// EROFS image and the store's objects.
	TypeKernel MountType = "kernel"
)

// MountInfo is one mount of /proc/self/mountinfo; for layerfs mounts,
// with what is known of its server.
type MountInfo struct {
	Mountpoint string `json:"mountpoint"`
	// Target is the mount's source in the kernel's table: what the
	// server serves, as it was named.
	Target string `json:"target"`
	FSType string `json:"-"`
	// Major and Minor are the mount's device; a FUSE mount's minor
	// numbers its connection.
	Major uint32 `json:"-"`
	Minor uint32 `json:"-"`
	// User is the uid a FUSE mount was made for, who may unmount it
	// besides root; -1 for none.
	User int `json:"-"`
	// dataDirs are a kernel mount's data-only layers: the links
	// directories of its store.
	dataDirs []string
	// Store is the root of the store the mount reads: a FUSE mount's as
	// this user's runtime directory records it, a kernel mount's as its
	// data-only layers tell; "" when neither does.
	Store string     `json:"store,omitempty"`
	Type  MountType  `json:"type,omitempty"`
	State MountState `json:"state,omitempty"`
	// PID is the running server's, when this user's runtime directory
	// records it; 0 otherwise.
	PID int `json:"pid,omitempty"`
	// Log is the log file of a --daemon server of this user.
	Log string `json:"log,omitempty"`
}

// Mounts lists the layerfs mounts, FUSE and kernel, with the state of the
// FUSE mounts' servers as this user's runtime directory records them: by
// the server's process alone, never touching a mount. A statfs of a hung FUSE mount cannot be
// given up on: once its server has read the request, the caller waits
// uninterruptibly, and even a killed process stays until the answer, so
// a mount no record names is listed with an unknown state.
func Mounts() ([]MountInfo, error) {
	all, err := MountTable()
	if err != nil {
		return nil, err
	}
	var out []MountInfo
	for _, m := range all {
		if isKernelMount(m) {
			m.Type, m.State = TypeKernel, StateMounted
			m.Target = strings.TrimPrefix(m.Target, KernelSourcePrefix)
			m.Store = store.RootOfLinks(m.dataDirs)
			out = append(out, m)
			continue
		}
		if m.FSType != "fuse."+FSType {
			continue
		}
		m.Type, m.State = TypeFUSE, StateUnknown
		if rec, ok := readRecord(m.Mountpoint); ok {
			m.State, m.Log, m.Store = StateDead, rec.Log, rec.Store
			if rec.running() {
				m.State, m.PID = StateServing, rec.PID
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// probe asks mountpoint's server for a statfs, giving up after probeWait.
// The goroutine doing it is then left waiting, and the caller must abort
// the mount's connection to free it (see Mounts).
func probe(mountpoint string) MountState {
	done := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		done <- unix.Statfs(mountpoint, &st)
	}()
	select {
	case err := <-done:
		if errors.Is(err, unix.ENOTCONN) {
			return StateDead
		}
		return StateServing
	case <-time.After(probeWait):
		return StateUnresponsive
	}
}

// MountTable lists every mount of this process's namespace, in the
// kernel's order, from /proc/self/mountinfo; it touches no mount.
func MountTable() ([]MountInfo, error) {
	all, err := procstat.Mounts()
	if err != nil {
		return nil, err
	}
	out := make([]MountInfo, len(all))
	for i, m := range all {
		out[i] = MountInfo{Mountpoint: m.Mountpoint, FSType: m.FSType, Target: m.Source, Major: m.Major, Minor: m.Minor, User: m.User, dataDirs: m.DataDirs}
	}
	return out, nil
}
