// Package fscontext reads what the kernel says about a file system
// context of the new mount API (fsopen(2)): why it refused a parameter,
// in words far clearer than the errno.
package fscontext

import (
	"strings"

	"golang.org/x/sys/unix"
)

// Messages returns the messages the kernel queued on the file system
// context fd, each without its severity letter ("e ", "w ", "i "), as
// " (MESSAGE; MESSAGE)", ready to follow an error; "" when there are
// none. Reading them takes them from the queue.
func Messages(fd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil || n <= 0 {
			break
		}
		line := strings.TrimSpace(string(buf[:n]))
		if _, msg, ok := strings.Cut(line, " "); ok {
			msgs = append(msgs, msg)
		}
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (" + strings.Join(msgs, "; ") + ")"
}
