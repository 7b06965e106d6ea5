package fs

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/virtiofs"
)

// ServeVirtiofs serves tree to a VM over the vhost-user socket at socket,
// one guest at a time, for as long as the process runs: go-fuse's server
// cannot be stopped, so the caller ends the process and calls
// RemoveSocket. It returns once the socket accepts connections. A stale
// socket (nobody listening) is replaced; anything else at the path is
// refused. debug logs every FUSE request through the std log package,
// which go-fuse's vhost-user server also logs to.
func ServeVirtiofs(tree *Tree, socket string, debug bool) error {
	if err := claimSocket(socket); err != nil {
		return err
	}
	opts := tree.mountOptions()
	opts.Debug = debug
	// The guest's reads are at most MaxWrite long, as go-fuse tells the
	// kernel its page limit from it.
	opts.MaxWrite = 1 << 20
	go virtiofs.ServeFS(socket, newServer(tree), &opts)
	// ServeFS listens before anything else. The probe is a guest that
	// hangs up at once, which ServeFS takes in its stride.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("unix", socket); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("virtio-fs socket %s: server did not start listening", socket)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// claimSocket makes sure ServeFS can listen at socket, since it exits
// the process when it cannot: it binds the path once itself and lets go.
func claimSocket(socket string) error {
	st, err := os.Lstat(socket)
	switch {
	case err == nil && st.Mode()&os.ModeSocket == 0:
		return fmt.Errorf("virtio-fs socket %s: exists and is not a socket", socket)
	case err == nil:
		c, derr := net.Dial("unix", socket)
		if derr == nil {
			c.Close()
			return fmt.Errorf("virtio-fs socket %s: already served", socket)
		}
		if !errors.Is(derr, syscall.ECONNREFUSED) {
			return fmt.Errorf("virtio-fs socket %s: %w", socket, derr)
		}
		if err := os.Remove(socket); err != nil {
			return fmt.Errorf("virtio-fs socket %s: remove stale socket: %w", socket, err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("virtio-fs socket %s: %w", socket, err)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return fmt.Errorf("virtio-fs socket %s: %w", socket, err)
	}
	// Closing a listener made by ListenUnix removes its path.
	return l.Close()
}

// RemoveSocket removes a socket that ServeVirtiofs listened on.
func RemoveSocket(socket string) error {
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove virtio-fs socket %s: %w", socket, err)
	}
	return nil
}

// readOnlyFS refuses every change with EROFS. A guest mounts virtio-fs
// with no read-only flag of ours, so its writes reach the server, where
// go-fuse would answer most of them ENOTSUP: the guest should be told
// the file system is read-only, as on the host mount.
type readOnlyFS struct {
	fuse.RawFileSystem
}

func (readOnlyFS) SetAttr(<-chan struct{}, *fuse.SetAttrIn, *fuse.AttrOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Mknod(<-chan struct{}, *fuse.MknodIn, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Mkdir(<-chan struct{}, *fuse.MkdirIn, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Unlink(<-chan struct{}, *fuse.InHeader, string) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Rmdir(<-chan struct{}, *fuse.InHeader, string) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Rename(<-chan struct{}, *fuse.RenameIn, string, string) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Link(<-chan struct{}, *fuse.LinkIn, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Symlink(<-chan struct{}, *fuse.InHeader, string, string, *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) SetXAttr(<-chan struct{}, *fuse.SetXAttrIn, string, []byte) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) RemoveXAttr(<-chan struct{}, *fuse.InHeader, string) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Create(<-chan struct{}, *fuse.CreateIn, string, *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Tmpfile(<-chan struct{}, *fuse.CreateIn, *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}

func (readOnlyFS) Write(<-chan struct{}, *fuse.WriteIn, []byte) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}

func (readOnlyFS) Writev(<-chan struct{}, *fuse.WriteIn, [][]byte) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}

func (readOnlyFS) CopyFileRange(<-chan struct{}, *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}

func (readOnlyFS) Fallocate(<-chan struct{}, *fuse.FallocateIn) fuse.Status {
	return fuse.EROFS
}
