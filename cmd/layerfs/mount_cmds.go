package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// readyFdEnv names the descriptor a --daemon child reports readiness on.
const readyFdEnv = "LAYERFS_READY_FD"

func init() {
	commands = append(commands, mountCmd, umountCmd, mountsCmd)
}

type mountFlags struct {
	overlay, daemon, allowOther, dev, suid, debug bool
}

func mountCmd(g *globals) *cobra.Command {
	var f mountFlags
	cmd := &cobra.Command{
		Use:   "mount [flags] TARGET... MOUNTPOINT",
		Short: "Mount an image (merged view) or one layer (as built) read-only",
		Long: `Mount an image (merged view) or one layer (as built) read-only.

TARGET is an image name, a manifest digest, or layer digests (lowest
first); a unique digest prefix of 12 or more hex digits is enough. One
layer digest shows that layer as built, whiteout markers as files; with
--overlay, in the form kernel overlayfs stacks. The command serves in the
foreground until unmounted; SIGINT or SIGTERM unmounts it.`,
		Args:        cobra.MinimumNArgs(2),
		Annotations: map[string]string{handlesInterrupt: servesOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
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
	fl.BoolVar(&f.overlay, "overlay", false, "show one layer in overlayfs format: whiteouts as 0/0 character devices, opaque directories marked")
	fl.BoolVar(&f.daemon, "daemon", false, "return once the mount answers, leaving the server running")
	fl.BoolVar(&f.allowOther, "allow-other", false, "let other users than the mount's owner in")
	fl.BoolVar(&f.dev, "dev", false, "honour device nodes (default nodev)")
	fl.BoolVar(&f.suid, "suid", false, "honour setuid and setgid bits (default nosuid)")
	fl.BoolVar(&f.debug, "fuse-debug", false, "log every FUSE request")
	return cmd
}

func runMount(ctx context.Context, g *globals, f mountFlags, targets []string, mountpoint string) error {
	if err := layerfs.CheckMountpoint(mountpoint); err != nil {
		return err
	}
	if f.daemon && os.Getenv(readyFdEnv) == "" {
		return daemonize(mountpoint)
	}
	defer startProfiles()()
	tree, t, closeView, err := openTree(ctx, g, targets, f.overlay, "mount")
	if err != nil {
		return err
	}
	defer closeView()
	srv, err := layerfs.Mount(tree, mountpoint, layerfs.MountOptions{
		Source: t.String(), AllowOther: f.allowOther, Dev: f.dev, Suid: f.suid, Debug: f.debug,
	})
	if err != nil {
		return err
	}
	logrus.WithFields(logrus.Fields{"target": t.String(), "mountpoint": mountpoint}).Info("mounted")
	pidFile := layerfs.StatePath(mountpoint, "pid")
	if err := os.WriteFile(pidFile, []byte(fmt.Sprintln(os.Getpid())), 0o600); err != nil {
		logrus.Warnf("record server: %v", err)
	}
	defer os.Remove(pidFile)
	signalReady()
	go unmountOnSignal(srv, mountpoint)
	srv.Wait()
	return nil
}

// openTree resolves targets and makes the node tree that serves them;
// op names the command in errors. closeView releases the view.
func openTree(ctx context.Context, g *globals, targets []string, overlay bool, op string) (tree *layerfs.Tree, t store.Target, closeView func(), err error) {
	// A server holds one small node per path the kernel keeps: its heap
	// is many small objects that live long, and the default GC target
	// would double it. Collect sooner unless the user chose.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(25)
	}
	s, err := g.open()
	if err != nil {
		return nil, t, nil, err
	}
	if t, err = resolve(s, targets); err != nil {
		return nil, t, nil, err
	}
	if overlay && !t.Single {
		return nil, t, nil, fmt.Errorf("--overlay shows one layer; %s is not one", t)
	}
	if err := s.Prepare(ctx, t); err != nil {
		return nil, t, nil, fmt.Errorf("%s %s: %w", op, t, err)
	}
	view, err := s.OpenView(t.Digests(), t.Single)
	if err != nil {
		return nil, t, nil, fmt.Errorf("%s %s: %w", op, t, err)
	}
	if tree, err = layerfs.NewTree(view, s.ObjectPath, overlay); err != nil {
		view.Close()
		return nil, t, nil, err
	}
	return tree, t, view.Close, nil
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

// unmountOnSignal unmounts on SIGINT or SIGTERM. A busy mount stays
// served, and is retried, until the files open in it are closed.
func unmountOnSignal(srv *fuse.Server, mountpoint string) {
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
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

// daemonize runs this same command in a new session and waits until it
// reports the mount ready, or fails; the server's log goes to a file
// beside the mountpoint's state, since nobody reads its stderr.
func daemonize(mountpoint string) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	logPath := layerfs.StatePath(mountpoint, "log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("daemon log: %w", err)
	}
	defer logFile.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), readyFdEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("start server: %w", err)
	}
	w.Close()
	line, _ := bufio.NewReader(r).ReadString('\n')
	if strings.TrimSpace(line) == "ready" {
		cmd.Process.Release()
		return nil
	}
	cmd.Wait()
	msg, _ := os.ReadFile(logPath)
	os.Remove(logPath)
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
		Use:               "umount MOUNTPOINT",
		Short:             "Unmount a layerfs mount, also one whose server died",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeMountpoints,
		RunE: func(cmd *cobra.Command, args []string) error {
			return layerfs.Unmount(args[0])
		},
	}
}

// mountItem is one line of mounts; its fields are what --format json
// prints and templates see.
type mountItem struct {
	Mountpoint string `json:"mountpoint"`
	Target     string `json:"target"`
	// PID is the server's, when it is alive and recorded.
	PID   int    `json:"pid,omitempty"`
	State string `json:"state"`
}

func mountsCmd(*globals) *cobra.Command {
	var o output.Options
	cmd := &cobra.Command{
		Use:   "mounts",
		Short: "List live layerfs mounts: mountpoint, target, server pid, state",
		Long: `List live layerfs mounts: mountpoint, target, the server's pid, and its
state: "serving", or "dead" when the server is gone and only
"layerfs umount" cleans the mount up.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			mounts, err := layerfs.Mounts()
			if err != nil {
				return err
			}
			items := make([]mountItem, 0, len(mounts))
			for _, m := range mounts {
				it := mountItem{Mountpoint: m.Mountpoint, Target: m.Source, State: "dead"}
				if m.Alive {
					it.State, it.PID = "serving", layerfs.ServerPID(m.Mountpoint)
				}
				items = append(items, it)
			}
			return output.Write(os.Stdout, o, output.List[mountItem]{
				ID: func(m mountItem) string { return output.Name(m.Mountpoint) },
				Columns: []output.Column[mountItem]{
					{Header: "MOUNTPOINT", Cell: func(m mountItem) string { return output.Name(m.Mountpoint) }},
					{Header: "TARGET", Cell: func(m mountItem) string { return output.Name(m.Target) }},
					{Header: "PID", Cell: func(m mountItem) string {
						if m.PID <= 0 {
							return ""
						}
						return fmt.Sprint(m.PID)
					}},
					{Header: "STATE", Cell: func(m mountItem) string { return m.State }},
				},
			}, items)
		},
	}
	listFlags(cmd, &o, "mountpoints")
	return cmd
}
