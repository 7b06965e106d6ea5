// Command layerfs keeps OCI image layers in a local content-addressed store
// and serves a layer or a whole image as a read-only FUSE mount.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/layerfs/layerfs/store"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

// exitError carries an exit code other than 1 for a command that failed
// without anything more to say than its own output.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// commands are the subcommands; each file registers its own in init.
var commands []func(*globals) *cobra.Command

type globals struct {
	// viewPlatform is --platform of the commands that open a view.
	viewPlatform string
	root         string
	logLevel     string
}

func main() {
	g := &globals{}
	cmd := &cobra.Command{
		Use:           "layerfs",
		Short:         "Serve OCI image layers and images as read-only FUSE mounts",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			level, err := logrus.ParseLevel(g.logLevel)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			logrus.SetLevel(level)
			logrus.SetOutput(os.Stderr)
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&g.root, "root", "", "store directory (default $LAYERFS_ROOT, else /var/lib/layerfs as root, else $XDG_DATA_HOME/layerfs)")
	cmd.PersistentFlags().StringVar(&g.logLevel, "log-level", "warning", "log level: debug, info, warning, error")
	for _, c := range commands {
		cmd.AddCommand(c(g))
	}
	if err := cmd.Execute(); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		// Errors of parallel work (several layers) are joined with
		// newlines; the contract is one line per error.
		fmt.Fprintf(os.Stderr, "layerfs: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
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

// open opens the store for reading: nothing is created or changed.
func (g *globals) open() (*store.Store, error) {
	root, err := g.rootDir()
	if err != nil {
		return nil, err
	}
	return store.Open(root)
}

// openForWriting opens the store for a command that writes, making one
// in a missing or empty directory.
func (g *globals) openForWriting() (*store.Store, error) {
	root, err := g.rootDir()
	if err != nil {
		return nil, err
	}
	return store.OpenForWriting(root)
}
