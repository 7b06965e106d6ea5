package main

import (
	"fmt"
	"slices"
	"strings"

	"github.com/layerfs/layerfs/store"
	"github.com/spf13/cobra"
)

// platformValue is a --platform flag, read when it is given so that a
// value that is no platform is a usage error of every command alike. Its
// zero value is the host's platform.
type platformValue struct {
	p    *store.Platform
	text string
}

func (v *platformValue) Set(s string) error {
	p, err := store.ParsePlatform(s)
	if err != nil {
		return err
	}
	*v.p, v.text = p, s
	return nil
}

func (v *platformValue) String() string { return v.text }
func (v *platformValue) Type() string   { return "os/arch[/variant]" }

// platformFlag gives cmd a --platform into p, saying what it chooses.
func platformFlag(cmd *cobra.Command, p *store.Platform, usage string) {
	cmd.Flags().Var(&platformValue{p: p}, "platform", usage)
	cmd.RegisterFlagCompletionFunc("platform", completePlatforms)
}

// withViewPlatform gives a command that opens a view the --platform that
// chooses among the platforms of an image index.
func withViewPlatform(g *globals, cmd *cobra.Command) *cobra.Command {
	platformFlag(cmd, &g.viewPlatform, "of an image index, the platform to show (default: this host's)")
	return cmd
}

// resolveView resolves targets on the platform --platform asked for.
// Each may be layer digests joined by commas, the one form of a stack
// that commands taking a single TARGET have, so that mount and serve
// take the stack ls, diff, export and build take, as well as their own.
func resolveView(g *globals, s *store.Store, targets []string) (store.Target, error) {
	var split []string
	for _, t := range targets {
		parts, err := splitStack(t)
		if err != nil {
			return store.Target{}, err
		}
		split = append(split, parts...)
	}
	return resolveOn(s, split, g.viewPlatform)
}

// splitStack splits a TARGET argument at its commas. An empty element (a
// comma at either end, or two in a row) is refused naming the argument:
// looked up, it would be a target "" that no store has.
func splitStack(arg string) ([]string, error) {
	parts := strings.Split(arg, ",")
	if len(parts) > 1 && slices.Contains(parts, "") {
		return nil, fmt.Errorf("target %q has an empty element: layer digests are joined by single commas, none at either end", arg)
	}
	return parts, nil
}
