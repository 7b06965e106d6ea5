package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/layerfs/layerfs/store"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, importCmd, imagesCmd, layersCmd, inspectCmd, rmCmd, verifyCmd, gcCmd)
}

func platformFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "platform", "", "os/arch[/variant] to take from an image index (default: this host's)")
}

func parsePlatform(s string) (store.Platform, error) {
	if s == "" {
		return store.HostPlatform(), nil
	}
	return store.ParsePlatform(s)
}

func importCmd(g *globals) *cobra.Command {
	var platform string
	var opts store.ImportOptions
	var layer bool
	cmd := &cobra.Command{
		Use:   "import PATH[:REF]...",
		Short: "Import the images of OCI image layouts (directories or tars) and docker-archives, plain or compressed",
		Long: `Import the images of OCI image layouts (directories or tars) and
docker-archives, plain or gzip, zstd, xz or bzip2 compressed.

PATH:REF imports only the image REF names: an OCI layout's ref name, a
docker-archive's tag, or @N for an archive's Nth image (from 0), as
skopeo's oci:PATH:REF and docker-archive:PATH:REF. A PATH that exists as
given is never split at a colon.

Of an image index, the host's platform is imported (--platform chooses
another, --all-platforms every one); the name then refers to the index
and the platform is chosen when a view is opened. Entries that are not
images (artifacts, signatures, SBOMs, attestations) are skipped with a
line on stderr. With --layer, each PATH is a bare layer tar.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if platform != "" {
				p, err := store.ParsePlatform(platform)
				if err != nil {
					return err
				}
				opts.Platform = p
			}
			s, err := g.openForWriting()
			if err != nil {
				return err
			}
			for _, arg := range args {
				if layer {
					desc, err := s.ImportLayer(arg)
					if err != nil {
						return err
					}
					fmt.Println(desc.Digest)
					continue
				}
				src, ref := store.SplitSourceRef(arg)
				opts.Ref = ref
				res, err := s.Import(src, opts)
				for _, skipped := range res.Skipped {
					fmt.Fprintf(os.Stderr, "skipped %s (%s)\n", skipped.Digest, skipped.What)
				}
				for _, img := range res.Images {
					fmt.Printf("%s %s\n", nameOrNone(img.Name), img.Manifest)
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	platformFlag(cmd, &platform)
	cmd.Flags().BoolVar(&opts.AllPlatforms, "all-platforms", false, "import every platform of an image index")
	cmd.Flags().BoolVar(&layer, "layer", false, "import each PATH as a bare layer tar (plain, gzip or zstd)")
	cmd.MarkFlagsMutuallyExclusive("platform", "all-platforms")
	return cmd
}

func nameOrNone(n string) string {
	if n == "" {
		return "<none>"
	}
	return n
}

func table() *tabwriter.Writer { return tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0) }

func imagesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "images",
		Short: "List images: name, manifest digest, layers, size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			images, err := s.Images()
			if err != nil {
				return err
			}
			w := table()
			fmt.Fprintln(w, "NAME\tMANIFEST\tPLATFORM\tLAYERS\tSIZE")
			for _, img := range images {
				layers, size, err := s.ImageSize(img)
				if err != nil {
					return fmt.Errorf("image %s: %w", nameOrNone(img.Name), err)
				}
				var platforms []string
				for _, p := range img.Platforms {
					platforms = append(platforms, p.String())
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\n", nameOrNone(img.Name), img.Manifest.Digest, strings.Join(platforms, ","), layers, size)
			}
			return w.Flush()
		},
	}
}

func layersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "layers",
		Short: "List layers: digest, media type, compressed and extracted size, entries, images using it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			layers, err := s.Layers()
			if err != nil {
				return err
			}
			w := table()
			fmt.Fprintln(w, "DIGEST\tMEDIA TYPE\tCOMPRESSED\tEXTRACTED\tENTRIES\tIMAGES")
			for _, l := range layers {
				extracted, entries := "-", "-"
				if l.Extracted {
					extracted, entries = fmt.Sprint(l.ContentBytes), fmt.Sprint(l.Entries)
				}
				mt := l.MediaType
				if mt == "" {
					mt = "-"
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\n", l.Digest, mt, l.CompressedSize, extracted, entries, strings.Join(l.Images, ","))
			}
			return w.Flush()
		},
	}
}

func inspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect TARGET...",
		Short: "Print an image's or layers' manifest, config and layer facts as JSON",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			t, err := s.Resolve(args)
			if err != nil {
				return err
			}
			out := struct {
				Name     string            `json:"name,omitempty"`
				Manifest *ocispec.Manifest `json:"manifest,omitempty"`
				Digest   string            `json:"manifestDigest,omitempty"`
				Config   *ocispec.Image    `json:"config,omitempty"`
				Layers   []store.LayerInfo `json:"layers"`
			}{Name: t.Name, Layers: []store.LayerInfo{}}
			if t.Manifest.Digest != "" {
				m, c, err := s.ImageLayers(t.Manifest.Digest)
				if err != nil {
					return err
				}
				out.Manifest, out.Config, out.Digest = &m, &c, t.Manifest.Digest.String()
			}
			all, err := s.Layers()
			if err != nil {
				return err
			}
			for _, d := range t.Digests() {
				for _, l := range all {
					if l.Digest == d {
						out.Layers = append(out.Layers, l)
					}
				}
			}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
}

func rmCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove images by name (gc frees what no image uses any more)",
		Long: `Remove images by name (gc frees what no image uses any more).

An image a live mount or virtio-fs server serves is refused unless
--force; with it, the view keeps working, and gc frees its data once the
view ends.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openForWriting()
			if err != nil {
				return err
			}
			for _, name := range args {
				img, err := s.ImageNamed(name)
				if err != nil {
					return err
				}
				if !force {
					if err := s.CheckNotServed(img); err != nil {
						return err
					}
				}
				if err := s.Untag(img.Name); err != nil {
					return err
				}
				fmt.Println(img.Name)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove an image even while a mount serves it")
	return cmd
}

func verifyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify [TARGET...]",
		Short: "Re-hash blobs and objects and check layer indexes; exit 1 naming every bad digest",
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			var targets []store.Target
			for _, a := range args {
				t, err := s.Resolve([]string{a})
				if err != nil {
					return err
				}
				targets = append(targets, t)
			}
			problems, err := s.Verify(targets)
			if err != nil {
				return err
			}
			for _, p := range problems {
				fmt.Fprintf(os.Stderr, "layerfs: verify: %s\n", p)
			}
			if len(problems) > 0 {
				return exitError{1}
			}
			return nil
		},
	}
}

func gcCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove blobs, layers and objects no image and no live mount uses, and stale temp files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openForWriting()
			if err != nil {
				return err
			}
			f, err := s.GC(dryRun)
			if err != nil {
				return err
			}
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			fmt.Printf("%s %d blobs, %d layers, %d objects, %d temp files: %d bytes\n", verb, f.Blobs, f.Layers, f.Objects, f.Temps, f.Bytes)
			return nil
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed, and remove nothing")
	return cmd
}
