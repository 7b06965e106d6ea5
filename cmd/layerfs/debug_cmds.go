package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/view"
	"github.com/layerfs/layerfs/view/stack"
	"github.com/layerfs/layerfs/viewops"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, whichCmd, diffCmd, lsCmd, catCmd, exportCmd)
}

const stackHelp = `A TARGET is an image name, a manifest digest, or layer digests joined by
commas, lowest first; one layer digest is that layer as built.`

// openView opens the view one TARGET argument names, extracting any
// layer not yet extracted.
func openView(ctx context.Context, g *globals, arg string) (*store.Store, *stack.View, error) {
	s, _, v, err := openTarget(ctx, g, arg)
	return s, v, err
}

func openTarget(ctx context.Context, g *globals, arg string) (*store.Store, store.Target, *stack.View, error) {
	s, err := g.open()
	if err != nil {
		return nil, store.Target{}, nil, err
	}
	t, err := resolveView(g, s, []string{arg})
	if err != nil {
		return nil, t, nil, err
	}
	if err := s.Prepare(ctx, t); err != nil {
		return nil, t, nil, fmt.Errorf("%s: %w", t, err)
	}
	v, err := s.OpenView(t.Digests(), viewKind(t, false))
	if err != nil {
		return nil, t, nil, fmt.Errorf("%s: %w", t, err)
	}
	return s, t, v, nil
}

// openLeasedView is openView for a command that reads the view's
// contents into out (build, export, cat), leased so that a gc meanwhile keeps what it
// has still to read; closeView releases the view and its lease.
func openLeasedView(ctx context.Context, g *globals, arg, op, out string) (s *store.Store, v *stack.View, closeView func(), err error) {
	s, t, v, err := openTarget(ctx, g, arg)
	if err != nil {
		return nil, nil, nil, err
	}
	release, err := s.LeaseReading(ctx, t, out)
	release, err = unleasedIfReadOnly(op, t, "reads", release, err)
	if err != nil {
		v.Close()
		return nil, nil, nil, fmt.Errorf("%s %s: %w", op, t, err)
	}
	return s, v, func() { release(); v.Close() }, nil
}

// viewKind is the kind of view that t asks for: overlay asks for the
// overlay format of t's last layer.
func viewKind(t store.Target, overlay bool) view.Kind {
	switch {
	case overlay:
		return view.Overlay
	case t.Single:
		return view.Single
	}
	return view.Merged
}

func whichCmd(g *globals) *cobra.Command {
	return withViewPlatform(g, &cobra.Command{
		Use:               "which TARGET PATH",
		ValidArgsFunction: completeTargets(g, 1),
		Short:             "Tell which layer provides a path, and what it hides",
		Long: `Tell which layer provides PATH in the view of TARGET.

The first line is the digest of the layer whose entry the view shows.
Then, one a line, each lower layer whose directory merges into it
("merges DIGEST TYPE") and each lower layer's entry that the view hides,
with what hid it ("hides DIGEST TYPE: whiteout|opaque directory|TYPE PATH
in DIGEST"); an opaque directory merges nothing and hides the lower
directories of its name. A path the view does not show exits 3, saying
on stderr what removed it; its hidden entries are still listed on
stdout. A path the view does not show as written, under a symlinked
directory (/bin/ls where /bin is usr/bin), is answered for the path the
mount shows there, even when a lower layer has it as written, hidden by
the symlink. ".." climbs from where a symlink leads, as in the mount
("/bin/.." is "/usr"), and
a path that asks for a directory where the view has none ("FILE/",
"FILE/." or "FILE/..") is not shown, as the kernel refuses it. Paths
with a newline, tab, backslash or other control character are printed
Go-quoted.

` + stackHelp,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[1] == "" {
				return exitError{exitNotInView, `"" is not in the view: ` + emptyPath}
			}
			_, v, err := openView(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			defer v.Close()
			p, err := whichPath(v, args[1])
			switch {
			case errors.Is(err, fs.ErrNotExist):
				return exitError{exitNotInView, fmt.Sprintf("%s is not in the view: a directory on its way is missing", output.Name(args[1]))}
			case errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ELOOP):
				return exitError{exitNotInView, fmt.Sprintf("%s is not in the view: %v", output.Name(args[1]), err)}
			case err != nil:
				return err
			}
			pr, err := v.Which(p)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(os.Stdout)
			if pr.Shown {
				fmt.Fprintln(w, pr.Provider.Digest)
			}
			for _, m := range pr.Merged {
				fmt.Fprintf(w, "merges %s %s\n", m.Digest, m.Type)
			}
			for _, h := range pr.Hidden {
				fmt.Fprintf(w, "hides %s %s: %s\n", h.Digest, h.Type, h.By)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if pr.Shown {
				return nil
			}
			shown := output.Name("/" + pr.Path)
			switch {
			case len(pr.Hidden) == 0:
				return exitError{exitNotInView, fmt.Sprintf("%s is not in the view, and no layer has it", shown)}
			case pr.Hidden[0].By.Kind == stack.ByBeingMarker:
				return exitError{exitNotInView, fmt.Sprintf("%s is not in the view: it is a whiteout marker of %s, which a merged view applies and never shows", shown, pr.Hidden[0].By.Digest)}
			}
			return exitError{exitNotInView, fmt.Sprintf("%s is not in the view: %s removed it", shown, pr.Hidden[0].By)}
		},
	})
}

// emptyPath is why a PATH of "" is refused: the views take "" for their
// root, where open("") in a mount is ENOENT.
const emptyPath = "an empty path names nothing, as in the kernel"

// whichPath is the path which asks Which about for p. Which cleans a
// path, but the kernel looks "." and ".." up where the path has led so
// far: ".." climbs from where a symlink leads ("/bin/../etc" is
// "/usr/etc" where bin -> usr/bin), and after a file it is ENOTDIR, as a
// trailing slash is. So a path that asks for a directory is resolved as
// the kernel resolves it, and so is the directory of a path holding
// "..", whose last name is then asked about as Which asks, to tell what
// hid it. A path that asks for a directory the view does not show is
// left to Which too, unless ".." made it another path.
func whichPath(v *stack.View, p string) (string, error) {
	dotDot := slices.Contains(strings.Split(p, "/"), "..")
	switch {
	case strings.HasSuffix(p, "/") || p == "." || p == ".." || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/.."):
		r, err := view.ResolvePath(v, p, true)
		if errors.Is(err, fs.ErrNotExist) && !dotDot {
			return p, nil
		}
		return r.Path, err
	case dotDot:
		dir, name := path.Split(p)
		r, err := view.ResolvePath(v, dir, true)
		return path.Join(r.Path, name), err
	}
	return p, nil
}

// diffItem is one changed path as diff --format json prints it and
// templates see it.
type diffItem struct {
	// Kind is "A", "D" or "M".
	Kind string `json:"kind"`
	// Path is without a leading slash, "." for the root.
	Path string `json:"path"`
	// Changed names what differs in a modified path.
	Changed []string `json:"changed,omitempty"`
	// Layer is the layer whose entry the path is: of B when added or
	// modified, of A when deleted.
	Layer digest.Digest `json:"layer"`
}

func diffCmd(g *globals) *cobra.Command {
	var format string
	cmd := withViewPlatform(g, &cobra.Command{
		Use:               "diff A B",
		ValidArgsFunction: completeTargets(g, 2),
		Short:             "List what changed from view A to view B, from the indexes alone",
		Long: `List every path that differs from the view of A to the view of B, one a
line, sorted by path: "A" added, "D" deleted or "M" modified (type, mode,
owner, size, mtime, content, link target, device numbers, xattrs or the
link count of a non-directory), a space, and the path without a leading
slash ("." for the root). The children of an added or deleted directory
are listed too, and those of a directory that a path's new type replaces
or makes. A path deleted and added again as it was is not listed. The
exit status is 0 whether or not anything differs. A path with a
newline, tab, backslash or other control character is printed
Go-quoted. Contents are compared by digest, so nothing but the indexes
is read.

--format json prints the changes as a JSON array of objects with "kind",
"path" (as is, without a leading slash; a byte that is not UTF-8, which
JSON cannot hold, as U+FFFD) and, for a modified path,
"changed": which of ` + strings.Join(viewops.Attributes, ", ") + `
differ (owner is the uid or gid, content the bytes, device the device
numbers), and "layer": the layer whose entry the path is, as which names
it, of B for an added or modified path and of A for a deleted one. A Go
template is applied to each change, e.g.
'{{.Kind}} {{.Path}} {{join .Changed ","}}'.

` + stackHelp,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, a, err := openView(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			defer a.Close()
			_, b, err := openView(cmd.Context(), g, args[1])
			if err != nil {
				return err
			}
			defer b.Close()
			changes, err := viewops.Diff(a, b)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(os.Stdout)
			if format != "text" && format != "table" {
				items := make([]diffItem, len(changes))
				for i, c := range changes {
					items[i] = diffItem{Kind: string(c.Kind), Path: c.Path, Changed: c.Changed, Layer: c.Layer}
					if c.Path == "" {
						items[i].Path = "."
					}
				}
				if err := output.Write(w, output.Options{Format: format}, output.List[diffItem]{}, items); err != nil {
					return err
				}
				return w.Flush()
			}
			for _, c := range changes {
				fmt.Fprintln(w, c)
			}
			return w.Flush()
		},
	})
	cmd.Flags().StringVar(&format, "format", "text", `"text" (or "table", as the lists name it), "json", or a Go template applied to each change, e.g. '{{.Kind}} {{.Path}}'`)
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func lsCmd(g *globals) *cobra.Command {
	var opt viewops.ListOptions
	cmd := &cobra.Command{
		Use:               "ls [-l] [-R|-d] TARGET [PATH]",
		ValidArgsFunction: completeTargets(g, 1),
		Short:             "List a directory of a view from the index, with no mount",
		Long: `List directory PATH (default the root) of the view of TARGET as GNU
ls -A does to a pipe (LC_ALL=C): dot files included, sorted by byte
order. -l writes ls -ln lines, times in UTC as --time-style='+%Y-%m-%d
%H:%M', with no "total" line; -R lists every directory beneath, each
headed "PATH:"; -d lists PATH itself, a directory too, not its entries.
PATH resolves as in a mount of the view: symlinks on the way are
followed inside it, and one at its end when PATH ends in "/" or,
without -l or -d, when it leads to a directory, as GNU ls does. To a
terminal, names and link targets holding a control character or a
backslash are printed Go-quoted, so that no name of an image can write
escape sequences to it.

` + stackHelp,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, v, err := openView(cmd.Context(), g, args[0])
			if err != nil {
				return err
			}
			defer v.Close()
			p := "."
			if len(args) == 2 {
				p = args[1]
			}
			if p == "" {
				return errors.New(`ls: "": ` + emptyPath)
			}
			opt.Quote = isTerminal(os.Stdout)
			return viewops.List(os.Stdout, v, p, opt)
		},
	}
	cmd.Flags().BoolVarP(&opt.Long, "long", "l", false, "long listing, as ls -ln")
	cmd.Flags().BoolVarP(&opt.Recursive, "recursive", "R", false, "list subdirectories recursively")
	cmd.Flags().BoolVarP(&opt.Directory, "directory", "d", false, "list a directory itself, not its entries, as ls -d")
	return withViewPlatform(g, cmd)
}

func catCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "cat TARGET PATH...",
		ValidArgsFunction: completeTargets(g, 1),
		Short:             "Write files of a view to stdout, from the store, with no mount",
		Long: `Write the bytes of each PATH of the view of TARGET to stdout, one after
another, as cat would in a mount of the view. PATH resolves as in a
mount of the view, chrooted to it: symlinks are followed inside it, an
absolute target from the view's root. A directory, device or FIFO is
refused; the first PATH that cannot be read ends the command, after
the files before it were written.

` + stackHelp,
		Args:        cobra.MinimumNArgs(2),
		Annotations: map[string]string{handlesInterrupt: stopsOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			s, v, closeView, err := openLeasedView(cmd.Context(), g, args[0], "cat", "stdout")
			if err != nil {
				return err
			}
			defer closeView()
			bw := bufio.NewWriterSize(contextWriter{cmd.Context(), os.Stdout}, 1<<20)
			for _, p := range args[1:] {
				if p == "" {
					return flushAfter(bw, errors.New(`cat: "": `+emptyPath))
				}
				if err := viewops.Cat(bw, v, p, s.OpenObject); err != nil {
					return flushAfter(bw, err)
				}
			}
			return bw.Flush()
		},
	}
	return withViewPlatform(g, cmd)
}

func exportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:               "export TARGET [-o FILE|-]",
		ValidArgsFunction: completeTargets(g, 1),
		Short:             "Write the merged view as one tar stream",
		Long: `Write the merged view of TARGET as one PAX tar stream, to stdout or FILE:
every path in sorted order, every directory with an entry of its own,
hardlinks as links to the first name written, mtimes with nanoseconds,
xattrs as SCHILY.xattr records, and no whiteout markers.
"tar --xattrs --xattrs-include='*' --numeric-owner -xpf -" unpacks it to
exactly the merged view.

"-o -" is stdout, as for build. A terminal is refused, as stdout or
FILE. A regular FILE is written in its directory with no name, named and
renamed into place once whole, so a killed export leaves nothing, and
the file replaced keeps its owner, group, mode, ACL and user xattrs; a
FIFO or character
device is written into, never replaced; a symlink is followed; a
directory, socket or block device, or a FILE inside the store, is
refused before anything is read.

A TARGET is an image name, a manifest digest, or layer digests joined by
commas, lowest first. One layer digest is that layer merged over
nothing, not the layer as built: its whiteout markers, which ls, cat and
mount show as files, are left out, since whatever reads the tar would
apply them.`,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{handlesInterrupt: stopsOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "-" {
				// As build -o - has it, and tar -f -.
				out = ""
			}
			to := out
			if to == "" {
				to = "stdout"
			}
			if out != "" {
				if err := g.refuseInStore(out); err != nil {
					return fmt.Errorf("export to %s: %w", to, err)
				}
			}
			w, err := exportOutput(out)
			if err != nil {
				return fmt.Errorf("export to %s: %w", to, err)
			}
			s, v, closeView, err := openLeasedView(cmd.Context(), g, args[0], "export", to)
			if err != nil {
				w.Abort()
				return err
			}
			defer closeView()
			bw := bufio.NewWriterSize(contextWriter{cmd.Context(), w}, 1<<20)
			err = viewops.Export(bw, v, s.OpenObject)
			if err == nil {
				err = bw.Flush()
			}
			if err != nil {
				w.Abort()
				return fmt.Errorf("export to %s: %w", to, err)
			}
			if err := w.Commit(); err != nil {
				return fmt.Errorf("export to %s: %w", to, err)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE instead of stdout (- is stdout)")
	return withViewPlatform(g, cmd)
}

// exportOutput opens where export writes: FILE, or stdout unless it is a
// terminal.
func exportOutput(file string) (*output.File, error) {
	if file != "" {
		return output.Create(file)
	}
	if err := output.RefuseTerminal(os.Stdout, "stdout"); err != nil {
		return nil, err
	}
	return &output.File{File: os.Stdout}, nil
}

// refuseInStore refuses an output path inside the store root, whose own
// files (index.json, a blob) it would replace. Both paths are compared
// with their symlinks followed, so a link to the store is no way in.
func (g *globals) refuseInStore(out string) error {
	root, err := g.rootDir()
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(resolvedPath(root), resolvedPath(out))
	if err == nil && rel != ".." && !strings.HasPrefix(rel, "../") {
		return fmt.Errorf("inside the store at %s, where it could replace the store's own files", output.Name(root))
	}
	return nil
}

// resolvedPath is p absolute with every symlink followed, as far as its
// directories exist: a new file's name is not there yet.
func resolvedPath(p string) string {
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		return r
	}
	if dir := filepath.Dir(abs); dir != abs {
		return filepath.Join(resolvedPath(dir), filepath.Base(abs))
	}
	return abs
}

// flushAfter writes out what bw holds after err, which it returns with
// the flush's own error, unless that is err again: a bufio.Writer whose
// write failed fails every flush after with the same error.
func flushAfter(bw *bufio.Writer, err error) error {
	ferr := bw.Flush()
	if ferr == nil || errors.Is(err, ferr) {
		return err
	}
	return errors.Join(ferr, err)
}

// contextWriter fails writes once ctx is done, so an interrupted export
// stops within one buffer.
type contextWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c contextWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}
