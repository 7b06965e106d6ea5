package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/reference"
	"github.com/layerfs/layerfs/source/archive"
	"github.com/layerfs/layerfs/source/registry"
	"github.com/layerfs/layerfs/store"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, pullCmd)
}

func pullCmd(g *globals) *cobra.Command {
	var (
		platform        store.Platform
		config          string
		mirrors         []string
		insecure, quiet bool
		allPlatforms    bool
		jobs            int
	)
	cmd := &cobra.Command{
		Use:   "pull REF...",
		Short: "Pull images from OCI registries, verified and resumable",
		Long: `Pull images from OCI registries into the store. REF is read as docker
reads it (debian is docker.io/library/debian:latest), with or without
skopeo's docker:// before it, and the image is listed under that full
form. A REF written as a path (/, ./ or ../ before it, or oci: and
skopeo's other file transports), or one there on disk as a file or a
directory holding an image layout or docker-archive, is refused: layerfs
import takes those; docker://REF is the registry's image whatever is on
disk. Of an image index, the host's platform is pulled
(--platform chooses another, --all-platforms every one); the name then
refers to the index, as import names one, and pulling another platform
later adds it under the same name. TLS certificates are verified against
the system's CAs and those in /etc/docker/certs.d/HOST:PORT/ and
/etc/containers/certs.d/HOST:PORT/; loopback registries that do not
answer TLS are reached over plain HTTP. Credentials come from docker's
config.json and its credential helpers, then containers' auth.json
($REGISTRY_AUTH_FILE, else podman login's).
An interrupted pull stops, keeps the bytes downloaded so far under the
store's tmp/ (it says how many; "layerfs gc" frees them) and exits 130;
run again, it resumes every blob where it stopped. A pull that fails
(the disk full, the registry gone) keeps them too, and says so. On a
terminal, each layer shows a progress bar while it downloads and again
while it is extracted.`,
		Args:        cobra.MinimumNArgs(1),
		Annotations: map[string]string{handlesInterrupt: stopsOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			if jobs < 1 {
				return usageError{cmd, fmt.Errorf("--jobs %d: want at least 1", jobs)}
			}
			cfg, err := registriesConfig(cmd.Flags().Changed("registries-config"), config)
			if err != nil {
				return err
			}
			s, err := g.openForWriting()
			if err != nil {
				return err
			}
			prog := newProgress(quiet)
			ctx := store.WithExtractObserver(cmd.Context(), prog)
			puller, err := registry.New(s, registry.Options{
				Platform: platform, AllPlatforms: allPlatforms, Insecure: insecure, Mirrors: mirrors, Config: cfg, Jobs: jobs, Progress: prog,
			})
			if err != nil {
				return err
			}
			var errs []error
			for _, ref := range args {
				// A registry would only answer these with a confusing
				// error; skopeo's docker:// says a registry's, whatever
				// is on disk.
				transport, instead, other := archive.OtherTransport(ref)
				switch {
				case other:
					err := fmt.Errorf("pull %s: skopeo's %s transport, not a registry's image: %s", ref, transport, instead)
					if _, perr := reference.Parse(ref); perr == nil {
						err = fmt.Errorf("%w; pull docker://%s for a registry's image of that name", err, ref)
					}
					errs = append(errs, err)
					continue
				case archive.WrittenAsFile(ref):
					errs = append(errs, fmt.Errorf("pull %s: a layout or archive, not a registry's image: import it, with layerfs import", ref))
					continue
				case !strings.HasPrefix(ref, "docker://") && archive.OnDisk(ref):
					errs = append(errs, fmt.Errorf("pull %s: names a file or directory here, not a registry's image: import it, with layerfs import, or pull docker://%s for the registry's", ref, ref))
					continue
				}
				img, err := puller.Pull(ctx, ref)
				prog.wait()
				if err != nil {
					errs = append(errs, err)
					if ctx.Err() != nil {
						break
					}
					continue
				}
				printf("%s %s\n", output.Name(img.Name), img.Manifest)
			}
			if ctx.Err() != nil || len(errs) > 0 {
				// An interrupt, or a failure (a full disk, a registry
				// gone) that a run again resumes from.
				reportPartial(s)
			}
			return errors.Join(errs...)
		},
	}
	platformFlag(cmd, &platform, "of an image index, the platform to take (default: this host's)")
	cmd.Flags().BoolVar(&allPlatforms, "all-platforms", false, "pull every platform of an image index")
	cmd.MarkFlagsMutuallyExclusive("platform", "all-platforms")
	cmd.Flags().BoolVar(&insecure, "insecure", false, "allow plain HTTP and unverified TLS (loopback registries without TLS get plain HTTP anyway)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "one log line per layer instead of progress bars")
	cmd.Flags().IntVarP(&jobs, "jobs", "j", registry.DefaultJobs, "layers to download at once")
	cmd.Flags().StringArrayVar(&mirrors, "mirror", nil, "registry HOST[:PORT] to try first, in order, for every image (repeatable)")
	cmd.Flags().StringVar(&config, "registries-config", defaultRegistriesConfig(), `JSON file of mirrors per registry: {"mirrors": {"docker.io": ["HOST:PORT"]}}`)
	return cmd
}

// reportPartial says what an interrupted pull kept for a resume.
func reportPartial(s *store.Store) {
	files, bytes, err := s.PartialDownloads()
	if err != nil || files == 0 {
		return
	}
	tell("layerfs: kept %s of partial downloads (%d blobs) to resume from; \"layerfs gc\" frees them", output.Size(bytes), files)
}

func defaultRegistriesConfig() string {
	if os.Geteuid() == 0 {
		return "/etc/layerfs/registries.json"
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "layerfs", "registries.json")
}

// registriesConfig reads the registries file; the default one may be
// missing, a file named on the command line may not.
func registriesConfig(explicit bool, path string) (registry.Config, error) {
	if path == "" {
		return registry.Config{}, nil
	}
	cfg, err := registry.LoadConfig(path)
	if !explicit && errors.Is(err, os.ErrNotExist) {
		return registry.Config{}, nil
	}
	return cfg, err
}
