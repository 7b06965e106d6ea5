// Package procstat reads what /proc says of a process: what the benchmarks
// and the soak test measure of a running layerfs server, and whether a
// recorded server is still the process it was.
package procstat

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// RSS is a process's resident set in bytes, from /proc/PID/status.
func RSS(pid int) (int64, error) { return statusBytes(pid, "VmRSS") }

// AnonRSS is the part of a process's resident set that is its own memory
// (RssAnon): RSS less the file pages it maps, which are page cache.
func AnonRSS(pid int) (int64, error) { return statusBytes(pid, "RssAnon") }

func statusBytes(pid int, field string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s of pid %d: %w", field, pid, err)
			}
			return kb << 10, nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no %s for pid %d", field, pid)
}

// StartTime is when a process started, in clock ticks since boot: with
// the pid, it names one process, where a pid alone may be reused.
func StartTime(pid int) (uint64, error) {
	_, start, err := stat(pid)
	return start, err
}

// Running reports whether the process pid that started at start is still
// there; a zombie, which serves nothing, counts as gone.
func Running(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	state, got, err := stat(pid)
	return err == nil && got == start && state != 'Z' && state != 'X'
}

// stat reads a process's state and start time from /proc/PID/stat.
func stat(pid int) (state byte, start uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name, in parentheses, may hold spaces and parentheses;
	// the fields after its last ')' start at the state, field 3.
	const startField = 22 - 3
	i := strings.LastIndexByte(string(data), ')')
	fields := strings.Fields(string(data[i+1:]))
	if i < 0 || len(fields) <= startField || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	start, err = strconv.ParseUint(fields[startField], 10, 64)
	return fields[0][0], start, err
}
