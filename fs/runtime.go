package fs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/layerfs/layerfs/internal/procstat"
	"golang.org/x/sys/unix"
)

// RuntimeDirPath is the private directory holding the records of this
// user's mount servers and their logs: /run/layerfs for root, else
// $XDG_RUNTIME_DIR/layerfs, else /run/user/UID/layerfs when the system
// made that directory for the user, else $TMPDIR/layerfs-UID (as podman
// falls back). Nothing of it is ever at a name another user can choose
// the target of: the directory is checked before every use.
func RuntimeDirPath() string {
	uid := os.Geteuid()
	if uid == 0 {
		return "/run/layerfs"
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" {
		return filepath.Join(x, "layerfs")
	}
	userRun := fmt.Sprintf("/run/user/%d", uid)
	if st, err := os.Lstat(userRun); err == nil && st.IsDir() && ownedBy(st, uid) {
		return filepath.Join(userRun, "layerfs")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("layerfs-%d", uid))
}

func ownedBy(st os.FileInfo, uid int) bool {
	sys, ok := st.Sys().(*unix.Stat_t)
	return ok && int(sys.Uid) == uid
}

// runtimeDir is the opened runtime directory; files in it are reached
// only through its descriptor, so a name in it cannot be redirected.
type runtimeDir struct {
	path string
	fd   int
}

// openRuntimeDir opens the runtime directory, creating it 0700 when
// missing, and refuses one that is a symlink, not a directory, not the
// user's own or open to others.
func openRuntimeDir(create bool) (*runtimeDir, error) {
	p := RuntimeDirPath()
	if create {
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("runtime directory %s: %w", p, err)
		}
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
			return nil, fmt.Errorf("runtime directory %s: not a directory (a symlink or a file): refusing to use it", p)
		}
		return nil, fmt.Errorf("runtime directory %s: %w", p, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("runtime directory %s: %w", p, err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&0o077 != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("runtime directory %s: owned by uid %d with mode %04o, want uid %d and mode 0700: refusing to use it",
			p, st.Uid, st.Mode&0o7777, os.Geteuid())
	}
	return &runtimeDir{path: p, fd: fd}, nil
}

func (d *runtimeDir) Close() { unix.Close(d.fd) }

// createFile makes a new file name in the directory, replacing a stale
// one of an earlier server: the directory is the user's alone.
func (d *runtimeDir) createFile(name string) (*os.File, error) {
	if err := unix.Unlinkat(d.fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("%s: %w", filepath.Join(d.path, name), err)
	}
	fd, err := unix.Openat(d.fd, name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(d.path, name), err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(d.path, name)), nil
}

func (d *runtimeDir) readFile(name string) ([]byte, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, 1<<20))
}

func (d *runtimeDir) remove(name string) {
	_ = unix.Unlinkat(d.fd, name, 0)
}

// ServerRecord is what a mount server records of itself in the runtime
// directory, for mounts and umount to find it from the mountpoint alone.
type ServerRecord struct {
	Mountpoint string `json:"mountpoint"`
	Target     string `json:"target"`
	// Store is the root of the store served, for mounts to tell.
	Store string `json:"store,omitempty"`
	PID   int    `json:"pid"`
	// Start is the process's start time, so that a reused pid is not
	// taken for the server.
	Start uint64 `json:"start"`
	// Log is the server's log file, for a --daemon server.
	Log string `json:"log,omitempty"`
}

// stateName is the base name of mountpoint's files in the runtime
// directory: a hash, as a path holds characters and lengths a file name
// cannot.
func stateName(mountpoint string) string {
	abs, _ := filepath.Abs(mountpoint)
	sum := sha256.Sum256([]byte(abs))
	return "mount-" + hex.EncodeToString(sum[:12])
}

// LogPath is where a --daemon server of mountpoint writes its log.
func LogPath(mountpoint string) string {
	return filepath.Join(RuntimeDirPath(), stateName(mountpoint)+".log")
}

// CreateLog creates the log file of a --daemon server of mountpoint.
func CreateLog(mountpoint string) (*os.File, error) {
	d, err := openRuntimeDir(true)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.createFile(stateName(mountpoint) + ".log")
}

// Record writes this process's record as the server of mountpoint,
// serving target of the store at storeRoot; the returned function
// removes it, and the log when withLog is set.
func Record(mountpoint, target, storeRoot string, withLog bool) (remove func(), err error) {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, err
	}
	start, err := procstat.StartTime(os.Getpid())
	if err != nil {
		return nil, fmt.Errorf("record server: %w", err)
	}
	rec := ServerRecord{Mountpoint: abs, Target: target, Store: storeRoot, PID: os.Getpid(), Start: start}
	if withLog {
		rec.Log = LogPath(abs)
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	d, err := openRuntimeDir(true)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	name := stateName(abs)
	// Written aside and renamed, so a reader never sees half a record.
	tmp := "." + name + "." + strconv.Itoa(os.Getpid())
	f, err := d.createFile(tmp)
	if err != nil {
		return nil, fmt.Errorf("record server: %w", err)
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = unix.Renameat(d.fd, tmp, d.fd, name+".json")
	}
	if err != nil {
		d.remove(tmp)
		return nil, fmt.Errorf("record server: %w", err)
	}
	return func() { removeState(abs, withLog) }, nil
}

// RemoveState removes what the runtime directory holds of mountpoint: its
// server's record and log.
func RemoveState(mountpoint string) {
	abs, err := filepath.Abs(mountpoint)
	if err == nil {
		removeState(abs, true)
	}
}

// removeState removes mountpoint's record, and its log when withLog.
func removeState(mountpoint string, withLog bool) {
	d, err := openRuntimeDir(false)
	if err != nil {
		return
	}
	defer d.Close()
	d.remove(stateName(mountpoint) + ".json")
	if withLog {
		d.remove(stateName(mountpoint) + ".log")
	}
}

// readRecord is the record of mountpoint's server, if this user has one.
func readRecord(mountpoint string) (ServerRecord, bool) {
	var rec ServerRecord
	d, err := openRuntimeDir(false)
	if err != nil {
		return rec, false
	}
	defer d.Close()
	data, err := d.readFile(stateName(mountpoint) + ".json")
	if err != nil || json.Unmarshal(data, &rec) != nil || rec.Mountpoint != mountpoint {
		return ServerRecord{}, false
	}
	return rec, true
}

// running reports whether the recorded server is still the process it was.
func (r ServerRecord) running() bool { return procstat.Running(r.PID, r.Start) }
