package procstat

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Mountpoint string
	FSType     string
	// Source is the mount's source as the filesystem took it: a device,
	// a file, or any name (FUSE and overlayfs keep what they were given).
	Source string
	// Major and Minor are the mount's device.
	Major, Minor uint32
	// User is the uid a FUSE mount was made for (its user_id option),
	// the one user other than root that may unmount it; -1 for none.
	User int
	// DataDirs are an overlayfs mount's data-only layers (its datadir+
	// options), in order.
	DataDirs []string
}

// Mounts lists every mount of this process's namespace, in the kernel's
// order, from /proc/self/mountinfo; it touches no mount.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	defer f.Close()
	var out []Mount
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
		var major, minor uint32
		if _, err := fmt.Sscanf(left[2], "%d:%d", &major, &minor); err != nil {
			continue
		}
		user := -1
		var dataDirs []string
		if len(right) > 2 {
			// overlayfs escapes a comma in a path, so a comma always
			// parts two options.
			for _, o := range strings.Split(right[2], ",") {
				if v, ok := strings.CutPrefix(o, "user_id="); ok {
					if n, err := strconv.Atoi(v); err == nil {
						user = n
					}
				}
				if v, ok := strings.CutPrefix(o, "datadir+="); ok {
					dataDirs = append(dataDirs, unescape(v))
				}
			}
		}
		out = append(out, Mount{Mountpoint: unescape(left[4]), FSType: right[0], Source: unescape(right[1]), Major: major, Minor: minor, User: user, DataDirs: dataDirs})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	return out, nil
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
