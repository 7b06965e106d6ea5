package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"

	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, serveCmd)
}

// maxTagLen is the room a virtio-fs device has for its tag.
const maxTagLen = 36

type serveFlags struct {
	virtiofs, tag string
	overlay       bool
	debug         bool
}

func serveCmd(g *globals) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve --virtiofs SOCKET [--tag TAG] TARGET...",
		Short: "Serve an image (merged view) or one layer to a VM over virtio-fs",
		Long: `Serve an image (merged view) or one layer to a VM over virtio-fs.

The command listens on the vhost-user socket SOCKET and serves TARGET
(layer digests, lowest first, may be given apart or joined by commas),
read-only, with the same rules and attributes as layerfs mount, to one
guest at a time, until SIGINT or SIGTERM; then it removes the socket.
The tag is qemu's to give the guest (vhost-user-fs-pci,tag=TAG); --tag
only names it in the qemu arguments the command prints on stderr as it
starts listening (silenced by --log-level error).

  qemu-system-x86_64 ... \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -chardev socket,id=fs0,path=SOCKET -device vhost-user-fs-pci,chardev=fs0,tag=TAG
  guest: mount -t virtiofs TAG /mnt   (or boot with root=TAG rootfstype=virtiofs)`,
		Args:        cobra.MinimumNArgs(1),
		Annotations: map[string]string{handlesInterrupt: servesOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.virtiofs == "" {
				return usageError{cmd, errors.New("serve needs --virtiofs SOCKET, the vhost-user socket to listen on")}
			}
			return runServe(cmd.Context(), g, f, args)
		},
		ValidArgsFunction: completeTargets(g, 0),
	}
	fl := cmd.Flags()
	fl.StringVar(&f.virtiofs, "virtiofs", "", "vhost-user socket to listen on (required)")
	fl.StringVar(&f.tag, "tag", "layerfs", "virtio-fs tag the guest mounts, as given to qemu")
	fl.BoolVar(&f.overlay, "overlay", false, "show one layer in overlayfs format: whiteouts as 0/0 character devices, opaque directories marked")
	fl.BoolVar(&f.debug, "fuse-debug", false, "log every FUSE request (at debug level)")
	return withViewPlatform(g, cmd)
}

func runServe(ctx context.Context, g *globals, f serveFlags, targets []string) error {
	if f.tag == "" || len(f.tag) > maxTagLen {
		return fmt.Errorf("--tag %q: a virtio-fs tag has 1 to %d bytes", f.tag, maxTagLen)
	}
	tree, t, _, closeView, err := openTree(ctx, g, targets, f.overlay, "serve", absPath(f.virtiofs))
	if err != nil {
		return err
	}
	defer closeView()
	// go-fuse's vhost-user server logs every control message through the
	// std log package, which would write them all to stderr whatever
	// --log-level says: through logrus at debug level they obey it.
	log.SetFlags(0)
	log.SetOutput(stdLogWriter{})
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if err := layerfs.ServeVirtiofs(tree, f.virtiofs, f.debug); err != nil {
		return fmt.Errorf("serve %s: %w", t, err)
	}
	// The socket's path is given whole, for a qemu started elsewhere, and
	// with its commas doubled, as qemu reads a comma in an option's value.
	socket := absPath(f.virtiofs)
	tell("layerfs: serving %s over virtio-fs on %s", t, socket)
	tell("layerfs: qemu arguments: -object memory-backend-memfd,id=mem,size=RAM,share=on -numa node,memdev=mem -chardev socket,id=layerfs,path=%s -device vhost-user-fs-pci,chardev=layerfs,tag=%s", strings.ReplaceAll(socket, ",", ",,"), strings.ReplaceAll(f.tag, ",", ",,"))
	s := <-sig
	logrus.WithField("signal", s).Info("stopping")
	return layerfs.RemoveSocket(f.virtiofs)
}

// stdLogWriter passes std log lines to logrus at debug level.
type stdLogWriter struct{}

func (stdLogWriter) Write(p []byte) (int, error) {
	logrus.Debug(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
