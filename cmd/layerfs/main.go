// Command layerfs keeps OCI image layers in a local content-addressed store
// and serves a layer or a whole image read-only: as a FUSE mount, a kernel
// mount (overlayfs over a metadata-only EROFS image), an EROFS disk image,
// a tar export, or over virtio-fs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// Exit codes, documented in README.md.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitNotInView   = 3
	exitInterrupted = 130
)

// exitError carries an exit code other than 1 for a command that failed
// without anything more to say than its own output, or with msg.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	return fmt.Sprintf("exit %d", e.code)
}

// usageError is a command line that does not parse: exit 2, with the
// usage line of the command.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// handlesInterrupt marks a command that handles SIGINT and SIGTERM
// itself: with stopsOnInterrupt, it stops, removes what it staged and
// returns, and exits 130 (a second signal ends it at once); with
// servesOnInterrupt, it unmounts and exits 0, and every further signal is
// its own. Any other command is ended at once, with exit 130.
const (
	handlesInterrupt  = "layerfs/interrupt"
	stopsOnInterrupt  = "stops"
	servesOnInterrupt = "serves"
)

// commands are the subcommands; each file registers its own in init.
var commands []func(*globals) *cobra.Command

type globals struct {
	// viewPlatform is --platform of the commands that open a view.
	viewPlatform store.Platform
	root         string
	logLevel     string
}

func main() {
	// First of all: a signal before this is the default one's death.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	ctx, interrupt := context.WithCancel(context.Background())
	cmd := rootCommand()
	var running atomic.Pointer[cobra.Command]
	cmd.PersistentPreRunE = chainPreRun(cmd.PersistentPreRunE, func(c *cobra.Command) { running.Store(c) })
	go func() {
		<-sig
		interrupt()
		switch c := running.Load(); {
		case c == nil:
		case c.Annotations[handlesInterrupt] == servesOnInterrupt:
			return
		case c.Annotations[handlesInterrupt] == stopsOnInterrupt:
			<-sig
		}
		fmt.Fprintln(os.Stderr, "layerfs: interrupted")
		os.Exit(exitInterrupted)
	}()
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		err = stdout.err
	}
	if err == nil {
		return
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "layerfs: interrupted")
		os.Exit(exitInterrupted)
	}
	os.Exit(report(err))
}

// stdout is where commands print what a script reads. A print that fails
// (stdout on a full disk) is remembered, and fails the command once it
// has done its work: what the command did stands, but its exit says that
// its report of it was lost.
var stdout = &checkedWriter{w: os.Stdout}

type checkedWriter struct {
	w   io.Writer
	err error
}

func (c *checkedWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// printf and printLine print to stdout.
func printf(format string, a ...any) { fmt.Fprintf(stdout, format, a...) }
func printLine(a ...any)             { fmt.Fprintln(stdout, a...) }

// report prints err as layerfs's one-line error, or a usage error with
// its usage line, and returns the exit code.
func report(err error) int {
	var ee exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(os.Stderr, "layerfs: %s\n", oneLine(ee.msg))
		}
		return ee.code
	}
	var fe *output.FormatError
	if errors.As(err, &fe) {
		fmt.Fprintf(os.Stderr, "layerfs: %s\n", oneLine(fe.Error()))
		return exitUsage
	}
	var ue usageError
	if errors.As(err, &ue) {
		// cobra's own messages (an unknown command and its suggestions)
		// are several lines on purpose: printed as they are.
		fmt.Fprintf(os.Stderr, "layerfs: %s\n", strings.TrimRight(ue.err.Error(), "\n"))
		fmt.Fprintf(os.Stderr, "Usage: %s\nRun '%s --help' for more.\n", ue.cmd.UseLine(), ue.cmd.CommandPath())
		return exitUsage
	}
	fmt.Fprintf(os.Stderr, "layerfs: %s\n", oneLine(err.Error()))
	return exitFailure
}

// oneLine joins the lines of errors of parallel work (several layers):
// the contract is one line per error. What is left unprintable (a name
// out of an image, quoted nowhere on the error's way up) is escaped.
func oneLine(s string) string { return output.Printable(strings.ReplaceAll(s, "\n", "; ")) }

// printableFormatter formats log entries with their messages escaped by
// output.Printable, as errors are: the text formatter quotes the fields
// of an entry, and its message too when not on a terminal, but writes
// the message to a terminal as it is.
type printableFormatter struct{ logrus.Formatter }

func (f printableFormatter) Format(e *logrus.Entry) ([]byte, error) {
	e.Message = output.Printable(e.Message)
	return f.Formatter.Format(e)
}

func rootCommand() *cobra.Command {
	g := &globals{}
	cmd := &cobra.Command{
		Use:           "layerfs",
		Short:         "Keep OCI image layers in a content-addressed store and serve them read-only: FUSE and kernel (EROFS) mounts, EROFS disks, tar",
		Version:       versionLine(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			return unknownCommand("command", cmd, args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			// An unset variable in a script must not reach the default
			// store, root's system one as root.
			if cmd.Flags().Changed("root") && g.root == "" {
				return usageError{cmd, errors.New("--root is empty: name the store directory, or leave --root out for the default")}
			}
			level, err := logrus.ParseLevel(g.logLevel)
			if err != nil {
				return usageError{cmd, fmt.Errorf("--log-level %q: want debug, info, warning or error", g.logLevel)}
			}
			logrus.SetLevel(level)
			logrus.SetOutput(os.Stderr)
			logrus.SetFormatter(printableFormatter{&logrus.TextFormatter{}})
			// cobra checks flag groups (--platform against
			// --all-platforms) after this, and returns its error bare.
			if err := cmd.ValidateFlagGroups(); err != nil {
				return usageError{cmd, err}
			}
			return nil
		},
	}
	cmd.SetVersionTemplate("{{.Version}}\n")
	cmd.SuggestionsMinimumDistance = 2
	cmd.PersistentFlags().StringVar(&g.root, "root", "", "store directory (default $LAYERFS_ROOT, else /var/lib/layerfs as root, else $XDG_DATA_HOME/layerfs, else ~/.local/share/layerfs)")
	cmd.PersistentFlags().StringVar(&g.logLevel, "log-level", "warning", "log level: debug, info, warning, error")
	cmd.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warning", "error"}, cobra.ShellCompDirectiveNoFileComp))
	for _, c := range commands {
		cmd.AddCommand(c(g))
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageError{c, err} })
	strictHelpAndCompletion(cmd)
	wrapArgs(cmd)
	return cmd
}

// unknownCommand is the error for a word that names no subcommand of
// cmd, with the names it may have meant.
func unknownCommand(what string, cmd *cobra.Command, word string) error {
	msg := fmt.Sprintf("unknown %s %q for %q", what, word, cmd.CommandPath())
	if s := cmd.SuggestionsFor(word); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return errors.New(msg)
}

// strictHelpAndCompletion makes 'help TOPIC' and 'completion SHELL' of
// a topic or shell there is none of a usage error, as an unknown command
// is: cobra's own print the help and exit 0, which a script takes for
// success.
func strictHelpAndCompletion(root *cobra.Command) {
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "help":
			c.Run = nil
			c.RunE = func(help *cobra.Command, args []string) error {
				topic, rest, err := root.Find(args)
				if err == nil && len(rest) > 0 {
					err = unknownCommand("help topic", topic, rest[0])
				}
				if err != nil {
					return usageError{help, err}
				}
				return topic.Help()
			}
		case "completion":
			// Runnable, so that cobra checks its arguments (none).
			c.RunE = func(c *cobra.Command, args []string) error { return c.Help() }
		}
	}
}

// wrapArgs makes every argument-count error a usage error.
func wrapArgs(cmd *cobra.Command) {
	if check := cmd.Args; check != nil {
		cmd.Args = func(c *cobra.Command, args []string) error {
			if err := check(c, args); err != nil {
				return usageError{c, err}
			}
			return nil
		}
	}
	for _, c := range cmd.Commands() {
		wrapArgs(c)
	}
}

// chainPreRun runs then after first, for the command that runs.
func chainPreRun(first func(*cobra.Command, []string) error, then func(*cobra.Command)) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, args []string) error {
		if err := first(c, args); err != nil {
			return err
		}
		then(c)
		return nil
	}
}

// rootDir is the store directory the flags and environment name.
func (g *globals) rootDir() (string, error) {
	if g.root != "" {
		return g.root, nil
	}
	if r := os.Getenv("LAYERFS_ROOT"); r != "" {
		return r, nil
	}
	if os.Geteuid() == 0 {
		return "/var/lib/layerfs", nil
	}
	if x := os.Getenv("XDG_DATA_HOME"); x != "" {
		return filepath.Join(x, "layerfs"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no store root: set --root or $LAYERFS_ROOT: %w", err)
	}
	return filepath.Join(home, ".local", "share", "layerfs"), nil
}

// open opens the store for a command that reads it. It makes no store
// where there is none; what such a command adds to one (a lease, what
// can be made again from the store's own content) is added under the
// writer's lock.
func (g *globals) open() (*store.Store, error) { return g.openWith(store.Open) }

// openToChange opens the store for a command that changes or removes
// what is in it, making none where there is none.
func (g *globals) openToChange() (*store.Store, error) { return g.openWith(store.OpenToChange) }

// openForWriting opens the store for a command that writes, making one
// in a missing or empty directory.
func (g *globals) openForWriting() (*store.Store, error) { return g.openWith(store.OpenForWriting) }

// openWith opens the store the flags name with open. A root that is no
// store is refused saying what --root takes instead: a newcomer's first
// --root is often the OCI layout they mean to import.
func (g *globals) openWith(open func(root string) (*store.Store, error)) (*store.Store, error) {
	root, err := g.rootDir()
	if err != nil {
		return nil, err
	}
	s, err := open(root)
	if !errors.Is(err, store.ErrNotStore) {
		return s, err
	}
	const what = "--root (or $LAYERFS_ROOT) names a store, or a new or empty directory to make one in"
	if _, statErr := os.Stat(filepath.Join(root, "oci-layout")); statErr == nil {
		return nil, fmt.Errorf("%w: it is an OCI image layout, whose images \"layerfs import %s\" copies into a store; %s", err, root, what)
	}
	return nil, fmt.Errorf("%w; %s", err, what)
}
