package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/layerfs/layerfs/erofs"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/view"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, buildCmd)
}

func buildCmd(g *globals) *cobra.Command {
	var out string
	var jsonOut bool
	cmd := &cobra.Command{
		Use:               "build TARGET -o FILE",
		ValidArgsFunction: completeTargets(g, 1),
		Short:             "Write the view as a complete EROFS image: a VM root disk",
		Long: `Write the view of TARGET as a complete EROFS image, file contents
included, to FILE: "mount -t erofs -o ro FILE DIR" (a loop device on
kernels before 6.12), or a VM's virtio-blk disk, shows exactly what the
layerfs mount of TARGET shows. The same view gives the same bytes in any
store and at any time: the build time is 0 and the UUID is derived from
the view's layer digests.

FILE must be a regular file or a new name: an EROFS image is written with
seeks, so it cannot go to stdout, a FIFO or a device. It is written beside
its name and renamed into place once whole. --json prints the image's
digest and size on stdout.

` + stackHelp,
		Args:        cobra.ExactArgs(1),
		Annotations: map[string]string{handlesInterrupt: stopsOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" || out == "-" {
				return usageError{cmd, fmt.Errorf("build needs -o FILE: an EROFS image is written with seeks, so it cannot stream to stdout")}
			}
			w, err := output.CreateSeekable(out)
			if err != nil {
				return fmt.Errorf("build to %s: %w", out, err)
			}
			s, v, err := openView(cmd.Context(), g, args[0])
			if err != nil {
				w.Abort()
				return err
			}
			defer v.Close()
			var seed []string
			for _, l := range v.Layers {
				seed = append(seed, l.Digest.String())
			}
			res, err := erofs.Build(w, view.NewFS(v, s.OpenObject), erofs.Options{Seed: strings.Join(seed, ",")})
			if err == nil {
				err = cmd.Context().Err()
			}
			if err != nil {
				w.Abort()
				return fmt.Errorf("build to %s: %w", w.Name(), err)
			}
			if err := w.Commit(); err != nil {
				return fmt.Errorf("build to %s: %w", out, err)
			}
			if jsonOut {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the image to FILE")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the image's digest and size as JSON")
	return withViewPlatform(g, cmd)
}
