package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/layerfs/layerfs/store"
	"github.com/layerfs/layerfs/viewops"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, whichCmd, diffCmd, lsCmd, exportCmd)
}

const stackHelp = `A TARGET is an image name, a manifest digest, or layer digests joined by
commas, lowest first; one layer digest is that layer as built.`

// openView opens the view one TARGET argument names, extracting any
// layer not yet extracted.
func openView(g *globals, arg string) (*store.Store, *store.View, error) {
	s, err := g.open()
	if err != nil {
		return nil, nil, err
	}
	t, err := resolveView(g, s, strings.Split(arg, ","))
	if err != nil {
		return nil, nil, err
	}
	if err := s.Prepare(t); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", t, err)
	}
	v, err := s.OpenView(t.Digests(), t.Single)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", t, err)
	}
	return s, v, nil
}

func whichCmd(g *globals) *cobra.Command {
	return withViewPlatform(g, &cobra.Command{
		Use:   "which TARGET PATH",
		Short: "Tell which layer provides a path, and what it hides",
		Long: `Tell which layer provides PATH in the view of TARGET.

The first line is the digest of the layer whose entry the view shows.
Then, one a line, each lower layer whose directory merges into it
("merges DIGEST TYPE") and each lower layer's entry that the view hides,
with what hid it ("hides DIGEST TYPE: whiteout|opaque directory|TYPE PATH
in DIGEST"). A path the view does not show exits 1, saying on stderr
what removed it; its hidden entries are still listed on stdout.

` + stackHelp,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, v, err := openView(g, args[0])
			if err != nil {
				return err
			}
			defer v.Close()
			pr, err := viewops.Which(v, args[1])
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
			shown := "/" + pr.Path
			if len(pr.Hidden) == 0 {
				return fmt.Errorf("%s is not in the view, and no layer has it", shown)
			}
			return fmt.Errorf("%s is not in the view: %s removed it", shown, pr.Hidden[0].By)
		},
	})
}

func diffCmd(g *globals) *cobra.Command {
	return withViewPlatform(g, &cobra.Command{
		Use:   "diff A B",
		Short: "List what changed from view A to view B, from the indexes alone",
		Long: `List every path that differs from the view of A to the view of B, one a
line, sorted by path: "A" added, "D" deleted or "M" modified (type, mode,
owner, size, mtime, content, link target, device numbers or xattrs), a
space, and the path without a leading slash ("." for the root). The
children of an added or deleted directory are listed too. Contents are
compared by digest, so nothing but the indexes is read.

` + stackHelp,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, a, err := openView(g, args[0])
			if err != nil {
				return err
			}
			defer a.Close()
			_, b, err := openView(g, args[1])
			if err != nil {
				return err
			}
			defer b.Close()
			changes, err := viewops.Diff(a, b)
			if err != nil {
				return err
			}
			w := bufio.NewWriter(os.Stdout)
			for _, c := range changes {
				fmt.Fprintln(w, c)
			}
			return w.Flush()
		},
	})
}

func lsCmd(g *globals) *cobra.Command {
	var opt viewops.ListOptions
	cmd := &cobra.Command{
		Use:   "ls [-l] [-R] TARGET [PATH]",
		Short: "List a directory of a view from the index, with no mount",
		Long: `List directory PATH (default the root) of the view of TARGET as GNU
ls -A does to a pipe (LC_ALL=C): dot files included, sorted by byte
order. -l writes ls -ln lines, times in UTC as --time-style='+%Y-%m-%d
%H:%M', with no "total" line; -R lists every directory beneath, each
headed "PATH:".

` + stackHelp,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, v, err := openView(g, args[0])
			if err != nil {
				return err
			}
			defer v.Close()
			p := "."
			if len(args) == 2 {
				p = args[1]
			}
			return viewops.List(os.Stdout, v, p, opt)
		},
	}
	cmd.Flags().BoolVarP(&opt.Long, "long", "l", false, "long listing, as ls -ln")
	cmd.Flags().BoolVarP(&opt.Recursive, "recursive", "R", false, "list subdirectories recursively")
	return withViewPlatform(g, cmd)
}

func exportCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "export TARGET [-o FILE]",
		Short: "Write the merged view as one tar stream",
		Long: `Write the merged view of TARGET as one PAX tar stream, to stdout or FILE:
every path in sorted order, every directory with an entry of its own,
hardlinks as links to the first name written, mtimes with nanoseconds,
xattrs as SCHILY.xattr records, and no whiteout markers.
"tar --xattrs --xattrs-include='*' --numeric-owner -xpf -" unpacks it to
exactly the merged view.

` + stackHelp,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, v, err := openView(g, args[0])
			if err != nil {
				return err
			}
			defer v.Close()
			if out == "" {
				return exportTo(os.Stdout, v, s)
			}
			return exportFile(out, v, s)
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to FILE instead of stdout")
	return withViewPlatform(g, cmd)
}

func exportTo(w io.Writer, v *store.View, s *store.Store) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	if err := viewops.Export(bw, v, s.OpenObject); err != nil {
		return err
	}
	return bw.Flush()
}

// exportFile writes the tar beside file and renames it into place, so a
// failed export never leaves a truncated tar under the name asked for.
func exportFile(file string, v *store.View, s *store.Store) error {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp-")
	if err != nil {
		return fmt.Errorf("export to %s: %w", file, err)
	}
	// CreateTemp's 0600 is for the temporary name; the tar is no secret.
	err = errors.Join(f.Chmod(0o644), exportTo(f, v, s), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), file)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("export to %s: %w", file, err)
	}
	return nil
}
