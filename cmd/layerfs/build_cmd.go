package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/layerfs/layerfs/erofs"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/view"
	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
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

FILE is a regular file or a new name: it is written in its directory
with no name, named and renamed into place once whole, and a file
replaced keeps its owner, group, mode, ACL and user xattrs (a running
VM that has the old file open keeps reading it). An EROFS image is
written with seeks, so "-o -" builds it in an unnamed file in $TMPDIR
and then streams it to stdout, unless stdout is a terminal. A block
device (a disk, a partition, a logical volume) is written as mkfs.erofs
writes one, from its first byte: the image is built in $TMPDIR first,
and written to the device only when it fits, the device opened
exclusively, so one mounted or in use is refused. A FIFO or a character
device is refused, and so is a FILE inside the store. --json prints the
image's digest and size on stdout; -v says them on stderr.

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
			} else if err := g.refuseInStore(out); err != nil {
				return fmt.Errorf("build to %s: %w", name, err)
			}
			w, sink, err := buildOutput(out)
			if err != nil {
				return fmt.Errorf("build to %s: %w", name, err)
			}
			defer sink.close()
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
			if err == nil && sink != nil {
				err = sink.write(cmd.Context(), w.File, res.Size)
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
				return json.NewEncoder(stdout).Encode(res)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the image to FILE, or to stdout with -")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the image's digest and size as JSON")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "say the image's digest and size on stderr")
	return withViewPlatform(g, cmd)
}

// buildOutput opens where build writes the image: FILE, or an unnamed
// scratch file for a sink that takes the image once it is whole: stdout
// for "-", a block device.
func buildOutput(out string) (*output.File, *imageSink, error) {
	var sink *imageSink
	switch st, err := os.Stat(out); {
	case out == "-":
		if err := output.RefuseTerminal(os.Stdout, "stdout"); err != nil {
			return nil, nil, err
		}
		sink = &imageSink{File: os.Stdout, capacity: -1}
	case err == nil && st.Mode()&fs.ModeDevice != 0 && st.Mode()&fs.ModeCharDevice == 0:
		if sink, err = openBlockDevice(out); err != nil {
			return nil, nil, err
		}
	default:
		f, err := output.CreateSeekable(out)
		return f, nil, err
	}
	f, err := output.Scratch()
	if err != nil {
		sink.close()
		return nil, nil, err
	}
	return &output.File{File: f}, sink, nil
}

// imageSink is where a finished image is copied to: stdout, or a block
// device of capacity bytes (-1: no bound).
type imageSink struct {
	*os.File
	capacity int64
	device   bool
}

// openBlockDevice opens the block device at name for writing, exclusively
// (O_EXCL: the kernel refuses a device mounted or held by another
// exclusive opener), and reads its size.
func openBlockDevice(name string) (*imageSink, error) {
	f, err := os.OpenFile(name, os.O_WRONLY|unix.O_EXCL, 0)
	if errors.Is(err, unix.EBUSY) {
		return nil, fmt.Errorf("%s: the block device is in use (mounted, or held by another program): %w", name, err)
	}
	if err != nil {
		return nil, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: size of the block device: %w", name, err)
	}
	return &imageSink{File: f, capacity: size, device: true}, nil
}

// close closes a block device; stdout stays open.
func (k *imageSink) close() {
	if k != nil && k.device {
		k.Close()
	}
}

// write copies the finished image, size bytes, from scratch to the sink,
// stopping within one buffer on interrupt. A device too small for it is
// refused before a byte is written, and one written is synced: the image
// is on the disk when build exits.
func (k *imageSink) write(ctx context.Context, scratch *os.File, size int64) error {
	if k.capacity >= 0 && size > k.capacity {
		return fmt.Errorf("the image is %d bytes, more than the block device's %d: nothing was written to it", size, k.capacity)
	}
	if _, err := io.CopyBuffer(contextWriter{ctx, k.File}, io.NewSectionReader(scratch, 0, size), make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("copy the image to %s: %w", k.Name(), err)
	}
	if k.device {
		if err := k.Sync(); err != nil {
			return fmt.Errorf("sync %s: %w", k.Name(), err)
		}
	}
	return nil
}
