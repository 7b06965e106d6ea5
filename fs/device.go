package fs

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// A root mount is served by deviceServer rather than by go-fuse's
// fuse.Server. go-fuse keeps a spare goroutine reading the FUSE device
// while another answers, and the kernel hands each request to the reader
// that has waited longest, so a walker's consecutive requests land on
// alternate threads; each hand-off costs 7-18 µs, a third of a round trip
// (docs/fuse.md). deviceServer reads a request, answers it and reads the
// next on one goroutine, as go-fuse's ProtocolServer lets it: the thread
// that wrote a reply is the one the next request finds. Mounting the
// device ourselves takes mount(2), which only root may call: other users'
// mounts go through fusermount3 and go-fuse's server.
type deviceServer struct {
	fd         int
	mountpoint string
	raw        fuse.RawFileSystem
	ps         *fuse.ProtocolServer
	// flags are the capabilities negotiated at INIT.
	flags uint64
	// in and out hold one request and its reply.
	in, out []byte
	done    chan struct{}
	// closeOnce closes the device once, by the loop's end or a failed
	// start, whichever comes first.
	closeOnce sync.Once
}

// FUSE ioctls on the device that register and drop a passthrough backing
// file (linux/fuse.h: _IOW(229, 1, struct fuse_backing_map), _IOW(229, 2,
// uint32_t)).
const (
	iocBackingOpen  = 0x4010e501
	iocBackingClose = 0x4004e502
)

// deviceMaxWrite is the largest request and reply payload the server
// takes and gives, go-fuse's default.
const deviceMaxWrite = 128 << 10

// mountDevice mounts a FUSE file system at mountpoint whose device it
// serves itself, answers INIT, and returns; Serve then answers the rest.
func mountDevice(raw fuse.RawFileSystem, mountpoint string, opts fuse.MountOptions, flags uintptr) (*deviceServer, error) {
	opts.MaxWrite = deviceMaxWrite
	dir, err := openMountpoint(mountpoint)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/fuse: %w", err)
	}
	data := []string{
		fmt.Sprintf("fd=%d", fd),
		fmt.Sprintf("rootmode=%o", st.Mode&unix.S_IFMT),
		fmt.Sprintf("user_id=%d", os.Geteuid()),
		fmt.Sprintf("group_id=%d", os.Getegid()),
		fmt.Sprintf("max_read=%d", opts.MaxWrite),
	}
	for _, o := range opts.Options {
		// The flags carry these; the kernel refuses them as strings.
		switch o {
		case "ro", "nosuid", "nodev":
		default:
			data = append(data, o)
		}
	}
	if opts.AllowOther {
		data = append(data, "allow_other")
	}
	if err := unix.Mount(opts.FsName, fmt.Sprintf("/proc/self/fd/%d", dir), "fuse."+opts.Name, flags, strings.Join(data, ",")); err != nil {
		unix.Close(fd)
		return nil, err
	}
	d := &deviceServer{
		fd:         fd,
		mountpoint: mountpoint,
		raw:        raw,
		ps:         fuse.NewProtocolServer(raw, &opts),
		in:         make([]byte, deviceMaxWrite+64<<10),
		out:        make([]byte, deviceMaxWrite+64<<10),
		done:       make(chan struct{}),
	}
	if err := d.init(); err != nil {
		d.closeDevice()
		if uerr := unix.Unmount(mountpoint, unix.MNT_DETACH); uerr != nil {
			logrus.Warnf("unmount %s after a failed start: %v", mountpoint, uerr)
		}
		return nil, fmt.Errorf("init: %w", err)
	}
	return d, nil
}

// init answers the kernel's first request, INIT, and keeps the
// capabilities it settles on.
func (d *deviceServer) init() error {
	n, err := d.read()
	if err != nil {
		return err
	}
	if n < int(unsafe.Sizeof(fuse.InHeader{})) {
		return fmt.Errorf("short request of %d bytes", n)
	}
	h := (*fuse.InHeader)(unsafe.Pointer(&d.in[0]))
	if h.Opcode != 26 { // FUSE_INIT
		return fmt.Errorf("first request has opcode %d, not INIT", h.Opcode)
	}
	m, err := d.answer(n)
	if err != nil {
		return err
	}
	const headerSize = int(unsafe.Sizeof(fuse.OutHeader{}))
	if m < headerSize+int(unsafe.Offsetof(fuse.InitOut{}.Flags2))+4 {
		return fmt.Errorf("INIT refused")
	}
	d.flags = (*fuse.InitOut)(unsafe.Pointer(&d.out[headerSize])).Flags64()
	return nil
}

// read reads one request into d.in, waiting for it.
func (d *deviceServer) read() (int, error) {
	for {
		n, err := unix.Read(d.fd, d.in)
		// EINTR: a signal; ENOENT: a request the kernel took back
		// (interrupted) before it was read.
		if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOENT) {
			continue
		}
		return n, err
	}
}

// answer handles the request of n bytes in d.in and writes its reply,
// returning the reply's size.
func (d *deviceServer) answer(n int) (int, error) {
	m, st := d.ps.HandleRequest([][]byte{d.in[:n]}, [][]byte{d.out})
	if !st.Ok() {
		return 0, fmt.Errorf("request of %d bytes: %v", n, st)
	}
	if m == 0 { // FORGET and the like take no reply
		return 0, nil
	}
	if _, err := unix.Write(d.fd, d.out[:m]); err != nil && !errors.Is(err, unix.ENOENT) {
		// ENOENT: the caller was interrupted and the kernel dropped
		// the request; nothing waits for this reply.
		return 0, fmt.Errorf("reply: %w", err)
	}
	return m, nil
}

// Serve answers requests until the mount goes.
func (d *deviceServer) Serve() {
	defer close(d.done)
	defer d.closeDevice()
	// The file system ends first, so nothing it does at its end meets a
	// closed device.
	defer d.raw.OnUnmount()
	for {
		n, err := d.read()
		if err != nil {
			if !errors.Is(err, unix.ENODEV) { // ENODEV: unmounted
				logrus.Errorf("read from the FUSE device of %s: %v", d.mountpoint, err)
			}
			return
		}
		if _, err := d.answer(n); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return
			}
			logrus.Warnf("FUSE server of %s: %v", d.mountpoint, err)
		}
	}
}

func (d *deviceServer) closeDevice() {
	d.closeOnce.Do(func() { unix.Close(d.fd) })
}

// Wait returns once the mount is gone and its last request answered.
func (d *deviceServer) Wait() { <-d.done }

// Unmount detaches the mount and waits for Serve to end.
func (d *deviceServer) Unmount() error {
	if err := unix.Unmount(d.mountpoint, 0); err != nil {
		return err
	}
	d.Wait()
	return nil
}

func (d *deviceServer) passthroughOffered() bool {
	return d.flags&fuse.CAP_PASSTHROUGH != 0
}

func (d *deviceServer) RegisterBackingFd(m *fuse.BackingMap) (int32, syscall.Errno) {
	id, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), iocBackingOpen, uintptr(unsafe.Pointer(m)))
	return int32(id), errno
}

func (d *deviceServer) UnregisterBackingFd(id int32) syscall.Errno {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), iocBackingClose, uintptr(unsafe.Pointer(&id)))
	return errno
}
