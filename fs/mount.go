package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
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
// or already a mountpoint.
func CheckMountpoint(mp string) error {
	st, err := os.Stat(mp)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("mountpoint %s: not a directory", mp)
	}
	abs, err := filepath.Abs(mp)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	mounts, err := readMountinfo()
	if err != nil {
		return err
	}
	for _, m := range mounts {
		if m.Mountpoint == abs {
			return fmt.Errorf("mountpoint %s: already a mountpoint (%s)", mp, m.FSType)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Errorf("no FUSE: %w", err)
	}
	return nil
}

// Mount serves tree at mountpoint, read-only, nosuid and nodev unless
// asked, with default_permissions always so the image's modes are
// enforced. It returns once the kernel answers on the mount.
func Mount(tree *Tree, mountpoint string, o MountOptions) (*fuse.Server, error) {
	opts := tree.Options()
	opts.FsName = o.Source
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
	if os.Geteuid() == 0 {
		opts.DirectMount = true
		opts.DirectMountStrict = true
		opts.DirectMountFlags = flags
	} else if o.AllowOther && !userAllowOther() {
		// fusermount3 would refuse with its reason on stderr, which a
		// --daemon mount's error leaves out.
		return nil, fmt.Errorf("mount %s: --allow-other: fusermount3 allows allow_other only if user_allow_other is set in %s", mountpoint, fuseConf)
	}
	srv, err := gofs.Mount(mountpoint, tree.Root(), opts)
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", mountpoint, err)
	}
	return srv, nil
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

// Unmount detaches a layerfs mount, including one whose server died.
func Unmount(mountpoint string) error {
	abs, err := filepath.Abs(mountpoint)
	if err != nil {
		return err
	}
	mounts, err := Mounts()
	if err != nil {
		return err
	}
	found := false
	for _, m := range mounts {
		found = found || m.Mountpoint == abs
	}
	if !found {
		return fmt.Errorf("%s: not a layerfs mount", mountpoint)
	}
	if os.Geteuid() == 0 {
		err = unix.Unmount(abs, 0)
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%s: %w", mountpoint, ErrBusy)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", mountpoint, err)
		}
		return nil
	}
	out, err := exec.Command("fusermount3", "-u", abs).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "busy") {
			return fmt.Errorf("%s: %w", mountpoint, ErrBusy)
		}
		return fmt.Errorf("unmount %s: %v: %s", mountpoint, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// MountInfo is one mount of /proc/self/mountinfo.
type MountInfo struct {
	Mountpoint string
	Source     string
	FSType     string
	// Alive is false when the server is gone and the mount only errors.
	Alive bool
}

// Mounts lists the live layerfs mounts.
func Mounts() ([]MountInfo, error) {
	all, err := readMountinfo()
	if err != nil {
		return nil, err
	}
	var out []MountInfo
	for _, m := range all {
		if m.FSType == "fuse."+FSType {
			var st syscall.Statfs_t
			m.Alive = !errors.Is(syscall.Statfs(m.Mountpoint, &st), syscall.ENOTCONN)
			out = append(out, m)
		}
	}
	return out, nil
}

func readMountinfo() ([]MountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	defer f.Close()
	var out []MountInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superoptions
		before, after, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		left, right := strings.Fields(before), strings.Fields(after)
		if len(left) < 5 || len(right) < 2 {
			continue
		}
		out = append(out, MountInfo{Mountpoint: unescape(left[4]), FSType: right[0], Source: unescape(right[1])})
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes of space, tab, newline and
// backslash.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// StatePath is where the server of mountpoint keeps a file of the given
// kind ("pid", "log"): the user's runtime directory, named after the
// mountpoint, so that other commands find it from the mountpoint alone.
func StatePath(mountpoint, kind string) string {
	dir := os.Getenv("XDG_RUNTIME_DIR")
	if dir == "" || os.Geteuid() == 0 {
		dir = os.TempDir()
	}
	abs, _ := filepath.Abs(mountpoint)
	name := strings.ReplaceAll(strings.Trim(abs, "/"), "/", "_")
	return filepath.Join(dir, fmt.Sprintf("layerfs-%d-%s.%s", os.Geteuid(), name, kind))
}

// ServerPID is the process serving mountpoint, or 0 when unknown.
func ServerPID(mountpoint string) int {
	data, err := os.ReadFile(StatePath(mountpoint, "pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}
