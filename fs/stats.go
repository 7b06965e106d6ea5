package fs

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
)

// StatsEnv names the file a mount's server writes, when it ends and on
// SIGUSR1, how many FUSE requests of each kind it has answered, as a JSON
// object by opcode: the evidence of where a walk's time goes, which make
// bench prints per entry. Unset, nothing is counted.
const StatsEnv = "LAYERFS_FUSE_STATS"

// The requests a read-only view can be sent; the kernel sends no others
// to a mount that refuses every change.
var statOps = [...]string{
	"LOOKUP", "FORGET", "GETATTR", "READLINK", "ACCESS", "GETXATTR", "LISTXATTR",
	"OPEN", "READ", "RELEASE", "FLUSH", "LSEEK",
	"OPENDIR", "READDIR", "READDIRPLUS", "RELEASEDIR", "STATFS", "STATX",
}

const (
	opLookup = iota
	opForget
	opGetattr
	opReadlink
	opAccess
	opGetxattr
	opListxattr
	opOpen
	opRead
	opRelease
	opFlush
	opLseek
	opOpendir
	opReaddir
	opReaddirplus
	opReleasedir
	opStatfs
	opStatx
)

// counting counts the requests it passes on to a file system, and writes
// the counts to path when the server ends.
type counting struct {
	fuse.RawFileSystem
	path string
	n    [len(statOps)]atomic.Uint64
}

// withStats wraps fs in a counter when StatsEnv asks for one.
func withStats(fs fuse.RawFileSystem) fuse.RawFileSystem {
	path := os.Getenv(StatsEnv)
	if path == "" {
		return fs
	}
	c := &counting{RawFileSystem: fs, path: path}
	dump := make(chan os.Signal, 1)
	signal.Notify(dump, syscall.SIGUSR1)
	go func() {
		for range dump {
			c.write()
		}
	}()
	return c
}

// Counts are the requests answered so far, by opcode; kinds never sent
// are left out.
func (c *counting) Counts() map[string]uint64 {
	m := map[string]uint64{}
	for i := range c.n {
		if v := c.n[i].Load(); v > 0 {
			m[statOps[i]] = v
		}
	}
	return m
}

func (c *counting) OnUnmount() {
	c.RawFileSystem.OnUnmount()
	c.write()
}

// write replaces the file whole, through a temp file and a rename, so
// that whoever reads it after a SIGUSR1 never finds it half written.
func (c *counting) write() {
	data, err := json.Marshal(c.Counts())
	if err == nil {
		tmp := c.path + ".tmp"
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, c.path)
		}
	}
	if err != nil {
		logrus.Warn(fmt.Errorf("%s: write FUSE request counts: %w", StatsEnv, err))
	}
}

func (c *counting) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	c.n[opLookup].Add(1)
	return c.RawFileSystem.Lookup(cancel, h, name, out)
}

func (c *counting) Forget(nodeid, nlookup uint64) {
	c.n[opForget].Add(1)
	c.RawFileSystem.Forget(nodeid, nlookup)
}

func (c *counting) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	c.n[opGetattr].Add(1)
	return c.RawFileSystem.GetAttr(cancel, in, out)
}

func (c *counting) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	c.n[opReadlink].Add(1)
	return c.RawFileSystem.Readlink(cancel, h)
}

func (c *counting) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	c.n[opAccess].Add(1)
	return c.RawFileSystem.Access(cancel, in)
}

func (c *counting) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	c.n[opGetxattr].Add(1)
	return c.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (c *counting) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	c.n[opListxattr].Add(1)
	return c.RawFileSystem.ListXAttr(cancel, h, dest)
}

func (c *counting) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.n[opOpen].Add(1)
	return c.RawFileSystem.Open(cancel, in, out)
}

func (c *counting) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	c.n[opRead].Add(1)
	return c.RawFileSystem.Read(cancel, in, buf)
}

func (c *counting) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.n[opRelease].Add(1)
	c.RawFileSystem.Release(cancel, in)
}

func (c *counting) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	c.n[opFlush].Add(1)
	return c.RawFileSystem.Flush(cancel, in)
}

func (c *counting) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	c.n[opLseek].Add(1)
	return c.RawFileSystem.Lseek(cancel, in, out)
}

func (c *counting) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.n[opOpendir].Add(1)
	return c.RawFileSystem.OpenDir(cancel, in, out)
}

func (c *counting) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	c.n[opReaddir].Add(1)
	return c.RawFileSystem.ReadDir(cancel, in, out)
}

func (c *counting) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	c.n[opReaddirplus].Add(1)
	return c.RawFileSystem.ReadDirPlus(cancel, in, out)
}

func (c *counting) ReleaseDir(in *fuse.ReleaseIn) {
	c.n[opReleasedir].Add(1)
	c.RawFileSystem.ReleaseDir(in)
}

func (c *counting) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	c.n[opStatfs].Add(1)
	return c.RawFileSystem.StatFs(cancel, h, out)
}

func (c *counting) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	c.n[opStatx].Add(1)
	return c.RawFileSystem.Statx(cancel, in, out)
}
