// Command hungfuse mounts a FUSE filesystem typed like a layerfs mount
// whose server stops answering: the tests' stand-in for a hung mount of
// someone else's. It prints "ready" once mounted, then leaves every
// statfs and getattr unanswered until it is killed or its connection is
// aborted.
//
//	hungfuse MOUNTPOINT
package main

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	layerfs "github.com/layerfs/layerfs/fs"
)

// root answers until hung is set, then never.
type root struct {
	gofs.Inode
	hung atomic.Bool
}

func (n *root) wait() {
	if n.hung.Load() {
		select {}
	}
}

func (n *root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	n.wait()
	return 0
}

func (n *root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.wait()
	out.Mode = syscall.S_IFDIR | 0o755
	return 0
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: hungfuse MOUNTPOINT")
		os.Exit(2)
	}
	n := &root{}
	srv, err := gofs.Mount(os.Args[1], n, &gofs.Options{MountOptions: fuse.MountOptions{
		Name: layerfs.FSType, FsName: "hung", DirectMount: os.Geteuid() == 0,
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "hungfuse:", err)
		os.Exit(1)
	}
	n.hung.Store(true)
	fmt.Println("ready")
	srv.Wait()
}
