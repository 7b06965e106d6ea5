package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/layerfs/layerfs/erofs"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, buildCmd)
}

func buildCmd(g *globals) *cobra.Command {
	var out string
	var jsonOut, verbose bool
	cmd := &cobra.Command{
		Use:               "build TARGET -o FILE|-",
		ValidArgsFunction: completeTargets(g, 1),
		Short:             "Write the view as a complete EROFS image: a VM root disk",
		Long: `Write the view of TARGET as a complete EROFS image, file contents
included, to FILE: "mount -t erofs -o ro FILE DIR" (a loop device on
kernels before 6.12), or a VM's virtio-blk disk, shows exactly what the
layerfs mount of TARGET shows. The same view gives the same bytes in any
store and at any time: the build time is 0 and the UUID is derived from
the view's layer digests.

FILE must be a regular file or a new name: it is written in its
directory with no name, named and renamed into place once whole. An EROFS image is written with seeks,
so "-o -" builds it in an unnamed file in $TMPDIR and then streams it to
stdout, unless stdout is a terminal; a FIFO or a device is refused as
FILE. --json prints the image's digest and size on stdout; -v says them
on stderr.

` + stackHelp,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{handlesInterrupt: stopsOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			defer startProfiles()()
			if out == "" {
				return usageError{cmd, fmt.Errorf("build needs -o FILE, or -o - for stdout")}
			}
			if out == "-" && jsonOut {
				return usageError{cmd, fmt.Errorf("--json and -o - would both write to stdout: name a file with -o")}
			}
			name := out
			if out == "-" {
				name = "stdout"
			}
			w, err := buildOutput(out)
			if err != nil {
				return fmt.Errorf("build to %s: %w", name, err)
			}
			s, v, closeView, err := openLeasedView(cmd.Context(), g, args[0], "build", name)
			if err != nil {
				w.Abort()
				return err
			}
			defer closeView()
			var seed []string
			var layers []digest.Digest
			for _, l := range v.Layers {
				seed = append(seed, l.Digest.String())
				layers = append(layers, l.Digest)
			}
			handles := s.OpenHandles(layers)
			defer handles.Close()
			res, err := erofs.Build(w, view.NewFS(v, handles.OpenObject), erofs.Options{Seed: strings.Join(seed, ","), Digest: jsonOut || verbose})
			if err == nil {
				err = cmd.Context().Err()
			}
			if err == nil && out == "-" {
				err = streamImage(cmd.Context(), w.File, res.Size)
			}
			if err != nil {
				w.Abort()
				return fmt.Errorf("build to %s: %w", name, err)
			}
			if err := w.Commit(); err != nil {
				return fmt.Errorf("build to %s: %w", name, err)
			}
			if verbose {
				fmt.Fprintf(os.Stderr, "%s: %s, %d bytes\n", name, res.Digest, res.Size)
			}
			if jsonOut {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the image to FILE, or to stdout with -")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the image's digest and size as JSON")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "say the image's digest and size on stderr")
	return withViewPlatform(g, cmd)
}

// buildOutput opens where build writes: FILE, or for "-" an unnamed
// scratch file streamed to stdout once the image is whole.
func buildOutput(out string) (*output.File, error) {
	if out != "-" {
		return output.CreateSeekable(out)
	}
	if err := output.RefuseTerminal(os.Stdout, "stdout"); err != nil {
		return nil, err
	}
	f, err := output.Scratch()
	if err != nil {
		return nil, err
	}
	return &output.File{File: f}, nil
}

// streamImage copies the finished image, size bytes, from scratch to
// stdout, stopping within one buffer on interrupt.
func streamImage(ctx context.Context, scratch *os.File, size int64) error {
	_, err := io.CopyBuffer(contextWriter{ctx, os.Stdout}, io.NewSectionReader(scratch, 0, size), make([]byte, 1<<20))
	return err
}
