package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

const (
	// readyFdEnv names the descriptor a --daemon child reports readiness
	// on.
	readyFdEnv = "LAYERFS_READY_FD"
	// warnFdEnv names the stderr of the command waiting for a --daemon
	// child, where the child shows its warnings until it is ready, as a
	// foreground mount does: its own stderr is a log nobody watches.
	warnFdEnv = "LAYERFS_WARN_FD"
	// mountpointEnv gives a --daemon child the mountpoint its parent
	// resolved and checked, so that the child serves that very directory
	// rather than resolving the argument again.
	mountpointEnv = "LAYERFS_MOUNTPOINT"
)

func init() {
	commands = append(commands, mountCmd, umountCmd, mountsCmd)
}

type mountFlags struct {
	overlay, daemon, allowOther, dev, suid, debug, kernel bool
}

func mountCmd(g *globals) *cobra.Command {
	var f mountFlags
	cmd := &cobra.Command{
		Use:   "mount [flags] TARGET... MOUNTPOINT",
		Short: "Mount an image (merged view) or one layer (as built) read-only",
		Long: `Mount an image (merged view) or one layer (as built) read-only.

TARGET is an image name, a manifest digest, or layer digests (lowest
first, as arguments of their own or joined by commas, as the other
commands take them); a unique digest prefix of 12 or more hex digits is enough. One
layer digest shows that layer as built, whiteout markers as files.
MOUNTPOINT is resolved first, as mount(8) does: through a symlink, the
directory it names is mounted and listed.

--overlay shows the last layer digest in the form kernel overlayfs
stacks; the layers given before it resolve the directories it only
implies and the files it hardlinks into them, so that overlayfs over the
--overlay mounts of an image's layers, each given those beneath it, shows
exactly the merged view. The command serves in the foreground until
unmounted; SIGINT or SIGTERM unmounts it.

--kernel (root) mounts the view in the kernel instead, and returns at
once with no process left: overlayfs over a metadata-only EROFS image of
the view, built once and cached in the store, with each layer's links/
directory in the store (hardlinks to its objects) as the data-only
layers the image's files point into. layerfs umount unmounts it like
any other layerfs mount.`,
		Args:        cobra.MinimumNArgs(2),
		Annotations: map[string]string{handlesInterrupt: servesOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[len(args)-1] == "" {
				return usageError{cmd, errors.New("MOUNTPOINT is empty")}
			}
			if f.kernel {
				if err := kernelConflict(f); err != nil {
					return usageError{cmd, err}
				}
			}
			return runMount(cmd.Context(), g, f, args[:len(args)-1], args[len(args)-1])
		},
		// Targets, and the shell's own completion for the mountpoint
		// once no target matches.
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			targets, _ := completeTargets(g, 0)(cmd, args, toComplete)
			return targets, cobra.ShellCompDirectiveDefault
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.overlay, "overlay", false, "show the last layer in overlayfs format: whiteouts as 0/0 character devices, opaque directories marked")
	fl.BoolVar(&f.daemon, "daemon", false, "return once the mount answers, leaving the server running")
	fl.BoolVar(&f.allowOther, "allow-other", false, "let other users than the mount's owner in")
	fl.BoolVar(&f.dev, "dev", false, "honour device nodes (default nodev)")
	fl.BoolVar(&f.suid, "suid", false, "honour setuid and setgid bits (default nosuid)")
	fl.BoolVar(&f.debug, "fuse-debug", false, "log every FUSE request")
	fl.BoolVar(&f.kernel, "kernel", false, "mount in the kernel (root): overlayfs over a metadata-only EROFS image of the view, cached in the store, and each layer's links/ to its objects")
	return withViewPlatform(g, cmd)
}

func runMount(ctx context.Context, g *globals, f mountFlags, targets []string, mountpoint string) error {
	if f.kernel {
		defer startProfiles()()
		return runKernelMount(ctx, g, f, targets, mountpoint)
	}
	daemonChild := os.Getenv(readyFdEnv) != ""
	stopWarnings := func() {}
	if daemonChild {
		mountpoint = os.Getenv(mountpointEnv)
		stopWarnings = forwardWarnings()
	} else {
		var err error
		if mountpoint, err = layerfs.ResolveMountpoint(mountpoint); err != nil {
			return err
		}
	}
	if err := layerfs.CheckMountpoint(mountpoint); err != nil {
		return err
	}
	if f.daemon && !daemonChild {
		return daemonize(ctx, mountpoint)
	}
	// Caught from the start, so that a signal arriving while the mount is
	// being set up waits for the setup to finish, then unmounts: dying of
	// it there would leave go-fuse's poll-hack file of the mount open
	// across the process's exit, whose flush would wait forever on this
	// very process.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	defer startProfiles()()
	tree, t, storeRoot, closeView, err := openTree(ctx, g, targets, f.overlay, "mount", mountpoint)
	if err != nil {
		return err
	}
	defer closeView()
	removeRecord, err := layerfs.Record(mountpoint, t.String(), storeRoot, daemonChild)
	if err != nil {
		return err
	}
	defer removeRecord()
	srv, err := layerfs.Mount(tree, mountpoint, layerfs.MountOptions{
		Source: t.String(), AllowOther: f.allowOther, Dev: f.dev, Suid: f.suid, Debug: f.debug,
	})
	if err != nil {
		return err
	}
	logrus.WithFields(logrus.Fields{"target": t.String(), "mountpoint": mountpoint}).Info("mounted")
	stopWarnings()
	signalReady()
	go unmountOnSignal(srv, mountpoint, sig)
	srv.Wait()
	return nil
}

// openTree resolves targets and makes the node tree that serves them at
// servedAt (a mountpoint or socket), leased in the store so that rm and gc
// leave it alone; op names the command in errors. storeRoot is the
// store's root directory. closeView releases the view and its lease.
func openTree(ctx context.Context, g *globals, targets []string, overlay bool, op, servedAt string) (tree *layerfs.Tree, t store.Target, storeRoot string, closeView func(), err error) {
	// A server holds one small node per path the kernel keeps: its heap
	// is many small objects that live long, and the default GC target
	// would double it. Collect sooner unless the user chose.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
	s, err := g.open()
	if err != nil {
		return nil, t, "", nil, err
	}
	if t, err = resolveView(g, s, targets); err != nil {
		return nil, t, "", nil, err
	}
	if overlay && t.Manifest.Digest != "" {
		return nil, t, "", nil, fmt.Errorf("--overlay shows one layer, the last of layer digests given lowest first; %s is an image", t)
	}
	if err := s.Prepare(ctx, t); err != nil {
		return nil, t, "", nil, fmt.Errorf("%s %s: %w", op, t, err)
	}
	v, err := s.OpenView(t.Digests(), viewKind(t, overlay))
	if err != nil {
		return nil, t, "", nil, fmt.Errorf("%s %s: %w", op, t, err)
	}
	handles := s.OpenHandles(t.Digests())
	tree = layerfs.NewTree(v, handles.OpenObject)
	release, err := s.Lease(ctx, t, servedAt)
	release, err = unleasedIfReadOnly(op, t, "serves", release, err)
	if err != nil {
		handles.Close()
		v.Close()
		return nil, t, "", nil, fmt.Errorf("%s %s: %w", op, t, err)
	}
	return tree, t, s.Root(), func() { release(); handles.Close(); v.Close() }, nil
}

// unleasedIfReadOnly lets a view of a store this user may read but not
// write go on without its lease, with a warning: its owner's gc does not
// know of the view. what is what the view does with the store's files.
// A store on a full disk (or over its user's quota) is read as one that
// cannot be written: what is in it can still be read out, to another
// disk, before anything is removed to make room.
func unleasedIfReadOnly(op string, t store.Target, what string, release func(), err error) (func(), error) {
	if cannotWrite(err) {
		logrus.Warnf("%s %s: not leased, so gc may remove what it %s: %v", op, t, what, err)
		return func() {}, nil
	}
	return release, err
}

// cannotWrite tells whether err is the store refusing a write: not this
// user's to write, a read-only file system, a full disk or quota.
func cannotWrite(err error) bool {
	return errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EROFS) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// signalReady tells a waiting --daemon parent that the mount answers.
func signalReady() {
	fd := os.Getenv(readyFdEnv)
	if fd == "" {
		return
	}
	var n int
	fmt.Sscan(fd, &n)
	w := os.NewFile(uintptr(n), "ready")
	fmt.Fprintln(w, "ready")
	w.Close()
	os.Unsetenv(readyFdEnv)
}

// forwardWarnings has what this --daemon child logs at warning level or
// above shown on the descriptor warnFdEnv names too, until stopped. A
// logger of its own formats it for that descriptor, so a terminal shows
// what a foreground mount would.
func forwardWarnings() (stop func()) {
	fd, err := strconv.Atoi(os.Getenv(warnFdEnv))
	if err != nil {
		return func() {}
	}
	// Else fusermount3 would inherit it, and hold the parent's stderr
	// open.
	syscall.CloseOnExec(fd)
	out := os.NewFile(uintptr(fd), "stderr")
	h := &warningHook{to: logrus.New()}
	h.to.SetOutput(out)
	h.to.SetFormatter(logrus.StandardLogger().Formatter)
	logrus.AddHook(h)
	return func() {
		h.mu.Lock()
		h.to = nil
		h.mu.Unlock()
		out.Close()
	}
}

// warningHook logs entries of warning level or above again to another
// logger, until that is nil.
type warningHook struct {
	mu sync.Mutex
	to *logrus.Logger
}

func (h *warningHook) Levels() []logrus.Level { return logrus.AllLevels[:logrus.WarnLevel+1] }

func (h *warningHook) Fire(e *logrus.Entry) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.to != nil {
		h.to.WithFields(e.Data).WithTime(e.Time).Log(e.Level, e.Message)
	}
	return nil
}

// unmountOnSignal unmounts on SIGINT or SIGTERM. A busy mount stays
// served, and is retried, until the files open in it are closed.
func unmountOnSignal(srv layerfs.Served, mountpoint string, sig <-chan os.Signal) {
	<-sig
	for {
		err := srv.Unmount()
		if err == nil {
			return
		}
		logrus.WithField("mountpoint", mountpoint).Warnf("unmount: %v; still serving, retrying", err)
		select {
		case <-sig:
		case <-time.After(time.Second):
		}
	}
}

// daemonize runs this same command in a new session, serving the
// resolved mountpoint, and waits until it reports the mount ready, or
// fails. The server's log, which nobody reads on its stderr, goes to a
// file in the runtime directory, removed when the mount is unmounted (or
// here, when the server fails to start); its warnings until it is ready
// are shown on this command's stderr too. An interrupt (ctx done) before
// the mount is ready is passed on to the server as SIGTERM, which gives
// up its setup, or unmounts what it has mounted, and exits.
func daemonize(ctx context.Context, mountpoint string) error {
	logFile, err := layerfs.CreateLog(mountpoint)
	if err != nil {
		return fmt.Errorf("daemon log: %w", err)
	}
	defer logFile.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyFdEnv+"=3", warnFdEnv+"=4", mountpointEnv+"="+mountpoint)
	cmd.ExtraFiles = []*os.File{w, os.Stderr}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		layerfs.RemoveState(mountpoint)
		return fmt.Errorf("start server: %w", err)
	}
	w.Close()
	// released is set once the server is left to run: no signal is
	// passed on after that.
	var mu sync.Mutex
	released := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !released {
			cmd.Process.Signal(syscall.SIGTERM)
		}
	})
	defer stop()
	line, _ := bufio.NewReader(r).ReadString('\n')
	mu.Lock()
	if strings.TrimSpace(line) == "ready" && ctx.Err() == nil {
		released = true
		mu.Unlock()
		cmd.Process.Release()
		return nil
	}
	mu.Unlock()
	cmd.Wait()
	if err := ctx.Err(); err != nil {
		// The server was told to stop, and has.
		layerfs.RemoveState(mountpoint)
		return err
	}
	msg, _ := io.ReadAll(io.NewSectionReader(logFile, 0, 1<<20))
	layerfs.RemoveState(mountpoint)
	if text := strings.TrimSpace(string(msg)); text != "" {
		return errors.New(strings.TrimPrefix(lastLine(text), "layerfs: "))
	}
	return errors.New("server exited before the mount was ready")
}

func lastLine(s string) string {
	return s[strings.LastIndex(s, "\n")+1:]
}

func umountCmd(*globals) *cobra.Command {
	return &cobra.Command{
		Use:   "umount MOUNTPOINT",
		Short: "Unmount a layerfs mount, also one whose server died or hangs",
		Long: `Unmount a layerfs mount, also one whose server died or hangs.

A mount whose server is gone, or does not answer within seconds, has its
FUSE connection aborted first (as fusermount -u -z cannot), so that the
processes waiting on it get ENOTCONN; it is then detached, lazily when
files are still open in it. The server's record and log in the runtime
directory are removed. MOUNTPOINT is resolved as mount resolves it.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeMountpoints,
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] == "" {
				return usageError{cmd, errors.New("MOUNTPOINT is empty")}
			}
			return layerfs.Unmount(args[0])
		},
	}
}

func mountsCmd(*globals) *cobra.Command {
	var o output.Options
	cmd := &cobra.Command{
		Use:   "mounts",
		Short: "List layerfs mounts: mountpoint, target, store, server pid, state and type",
		Long: `List layerfs mounts: mountpoint, target, store, server pid, state and type.
Every layerfs mount of this mount namespace is listed, whichever store it
serves, as umount unmounts any of them: they are found in the kernel's
mount table, so --root changes nothing here. STORE is the root of the
store the mount reads, whose gc and rm know of the mount: a FUSE mount's
as its server recorded it (- for a server another user started), a
kernel mount's from its data-only layers.

TYPE is fuse, or kernel for a mount --kernel, which has no server: its
STATE is mounted. A FUSE mount's STATE is serving, dead (the server is
gone; layerfs umount removes the mount) or unknown. The state and PID come from the records the user's own
servers keep in the runtime directory, checked against /proc; no mount is
touched, so a hung mount cannot block the listing. Mounts of servers the
user did not start are unknown.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			mounts, err := layerfs.Mounts()
			if err != nil {
				return err
			}
			return output.Write(os.Stdout, o, output.List[layerfs.MountInfo]{
				ID: func(m layerfs.MountInfo) string { return output.Name(m.Mountpoint) },
				Columns: []output.Column[layerfs.MountInfo]{
					{Header: "MOUNTPOINT", Cell: func(m layerfs.MountInfo) string { return output.Name(m.Mountpoint) }},
					{Header: "TARGET", Cell: func(m layerfs.MountInfo) string { return targetCell(m.Target, o.NoTrunc) }},
					{Header: "STORE", Cell: func(m layerfs.MountInfo) string { return output.Name(m.Store) }},
					{Header: "PID", Cell: func(m layerfs.MountInfo) string {
						if m.PID <= 0 {
							return ""
						}
						return fmt.Sprint(m.PID)
					}},
					{Header: "STATE", Cell: func(m layerfs.MountInfo) string { return string(m.State) }},
					{Header: "TYPE", Cell: func(m layerfs.MountInfo) string { return string(m.Type) }},
				},
			}, mounts)
		},
	}
	listFlags(cmd, &o, "mountpoints", "{{.Mountpoint}} {{.PID}}")
	return cmd
}

// targetCell is a mount's target as the table shows it: a manifest
// digest, or layer digests joined by commas, shortened as images and
// layers shorten digests unless noTrunc, still a target that mounts the
// same view; an image name as it is.
func targetCell(target string, noTrunc bool) string {
	parts := strings.Split(target, ",")
	for i, p := range parts {
		d, err := digest.Parse(p)
		if err != nil {
			return output.Name(target)
		}
		parts[i] = output.Digest(d, noTrunc)
	}
	return strings.Join(parts, ",")
}

// absPath is p made absolute, for records that outlive the working
// directory; p itself when that fails.
func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}
