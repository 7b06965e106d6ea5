package main

import (
	"github.com/layerfs/layerfs/store"
	"github.com/spf13/cobra"
)

// withViewPlatform gives a command that opens a view the --platform that
// chooses among the platforms of an image index.
func withViewPlatform(g *globals, cmd *cobra.Command) *cobra.Command {
	cmd.Flags().StringVar(&g.viewPlatform, "platform", "", "os/arch[/variant] of an image index to show (default: this host's)")
	return cmd
}

// resolveView resolves targets on the platform --platform asked for.
func resolveView(g *globals, s *store.Store, targets []string) (store.Target, error) {
	p, err := parsePlatform(g.viewPlatform)
	if err != nil {
		return store.Target{}, err
	}
	return resolveOn(s, targets, p)
}
