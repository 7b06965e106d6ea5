package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/layerfs/layerfs/pull"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

func init() {
	commands = append(commands, pullCmd)
}

func pullCmd(g *globals) *cobra.Command {
	var (
		platform, config string
		mirrors          []string
		insecure, quiet  bool
		jobs             int
	)
	cmd := &cobra.Command{
		Use:   "pull REF...",
		Short: "Pull images from OCI registries, verified and resumable",
		Long: `Pull images from OCI registries into the store. REF is read as docker
reads it (debian is docker.io/library/debian:latest) and the image is listed
under that full form. Loopback registries are reached over plain HTTP;
credentials come from docker's config.json and its credential helpers.
An interrupted pull, run again, resumes every blob where it stopped.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := parsePlatform(platform)
			if err != nil {
				return err
			}
			cfg, err := registriesConfig(cmd.Flags().Changed("registries-config"), config)
			if err != nil {
				return err
			}
			s, err := g.openForWriting()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			prog := newProgress(quiet)
			puller, err := pull.New(s, pull.Options{
				Platform: p, Insecure: insecure, Mirrors: mirrors, Config: cfg, Jobs: jobs, Progress: prog,
			})
			if err != nil {
				return err
			}
			var errs []error
			for _, ref := range args {
				img, err := puller.Pull(ctx, ref)
				prog.wait()
				if err != nil {
					errs = append(errs, err)
					if ctx.Err() != nil {
						break
					}
					continue
				}
				fmt.Printf("%s %s\n", img.Name, img.Manifest)
			}
			return errors.Join(errs...)
		},
	}
	platformFlag(cmd, &platform)
	cmd.Flags().BoolVar(&insecure, "insecure", false, "allow plain HTTP and unverified TLS (loopback registries get plain HTTP anyway)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "one log line per layer instead of progress bars")
	cmd.Flags().IntVarP(&jobs, "jobs", "j", pull.DefaultJobs, "layers to download at once")
	cmd.Flags().StringArrayVar(&mirrors, "mirror", nil, "registry HOST[:PORT] to try first, in order, for every image (repeatable)")
	cmd.Flags().StringVar(&config, "registries-config", defaultRegistriesConfig(), `JSON file of mirrors per registry: {"mirrors": {"docker.io": ["HOST:PORT"]}}`)
	return cmd
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
func registriesConfig(explicit bool, path string) (pull.Config, error) {
	if path == "" {
		return pull.Config{}, nil
	}
	cfg, err := pull.LoadConfig(path)
	if !explicit && errors.Is(err, os.ErrNotExist) {
		return pull.Config{}, nil
	}
	return cfg, err
}

// progress shows one bar per layer on a terminal, else one log line per
// layer when it is done.
type progress struct {
	quiet bool
	mu    sync.Mutex
	bars  *mpb.Progress
	log   *logrus.Logger
}

func newProgress(quiet bool) *progress {
	_, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS)
	p := &progress{quiet: quiet || err != nil, log: logrus.New()}
	p.log.SetOutput(os.Stderr)
	p.log.SetFormatter(logrus.StandardLogger().Formatter)
	// These lines are the command's output on stderr, not diagnostics:
	// only --log-level error silences them.
	p.log.SetLevel(max(logrus.InfoLevel, logrus.GetLevel()))
	if logrus.GetLevel() <= logrus.ErrorLevel {
		p.log.SetLevel(logrus.ErrorLevel)
	}
	return p
}

// wait ends the bars of one image, so the next image gets its own.
func (p *progress) wait() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bars != nil {
		p.bars.Wait()
		p.bars = nil
		logrus.SetOutput(os.Stderr)
	}
}

func (p *progress) Layer(ref string, desc ocispec.Descriptor, have bool) pull.LayerProgress {
	l := &layerProgress{p: p, ref: ref, desc: desc, start: time.Now()}
	if have {
		l.status.Store("in store")
	} else {
		l.status.Store("waiting")
	}
	if p.quiet {
		return l
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bars == nil {
		p.bars = mpb.New(mpb.WithOutput(os.Stderr), mpb.WithWidth(40), mpb.WithRefreshRate(150*time.Millisecond))
		// Logs print above the bars instead of through them.
		logrus.SetOutput(p.bars)
	}
	l.bar = p.bars.AddBar(0,
		mpb.PrependDecorators(decor.Name(shortDigest(desc.Digest.Encoded())+" ", decor.WC{W: 14, C: decor.DindentRight})),
		mpb.AppendDecorators(
			decor.CountersKibiByte("% .1f / % .1f", decor.WC{W: 22}),
			decor.Any(func(decor.Statistics) string { return "  " + l.status.Load().(string) }),
		))
	l.bar.SetTotal(desc.Size, false)
	if have {
		l.bar.SetCurrent(desc.Size)
	}
	return l
}

func shortDigest(hex string) string { return hex[:min(12, len(hex))] }

type layerProgress struct {
	p      *progress
	ref    string
	desc   ocispec.Descriptor
	bar    *mpb.Bar
	status atomic.Value
	start  time.Time
	bytes  atomic.Int64
	resume atomic.Int64
}

func (l *layerProgress) Set(have int64) {
	l.bytes.Store(have)
	l.resume.Store(have)
	if have > 0 {
		l.status.Store("resuming")
	} else {
		l.status.Store("fetching")
	}
	if l.bar != nil {
		l.bar.SetCurrent(have)
	}
}

func (l *layerProgress) Add(n int) {
	l.bytes.Add(int64(n))
	if l.bar != nil {
		l.bar.IncrBy(n)
	}
}

func (l *layerProgress) Fetched() { l.status.Store("extracting") }

func (l *layerProgress) Done(err error) {
	if err != nil {
		l.status.Store("failed")
	} else if l.status.Load() != "in store" {
		l.status.Store("done")
	}
	if l.bar != nil {
		l.bar.SetTotal(-1, true)
		return
	}
	if !l.p.quiet {
		return
	}
	fields := logrus.Fields{"image": l.ref, "layer": l.desc.Digest, "size": l.desc.Size}
	if err != nil {
		l.p.log.WithFields(fields).WithError(err).Error("layer failed")
		return
	}
	if st := l.status.Load(); st == "in store" {
		l.p.log.WithFields(fields).Info("layer already in the store")
		return
	}
	fields["fetched"] = l.bytes.Load() - l.resume.Load()
	fields["resumed"] = l.resume.Load()
	fields["took"] = time.Since(l.start).Round(time.Millisecond)
	l.p.log.WithFields(fields).Info("layer pulled")
}
