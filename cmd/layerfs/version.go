package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, versionCmd)
}

// version and commit are set by the Makefile's -ldflags (git describe,
// git rev-parse); a binary built otherwise takes them from the build
// information the go command embeds: the module version under
// "go install ...@version", the VCS revision in a checkout.
var version, commit string

// versionLine tells the layerfs version, the commit it was built from
// and the go-fuse it serves with.
func versionLine() string {
	v, c, fuse, goVersion := version, commit, "", ""
	if info, ok := debug.ReadBuildInfo(); ok {
		goVersion = info.GoVersion
		if v == "" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
		for _, d := range info.Deps {
			if d.Path == "github.com/hanwen/go-fuse/v2" {
				fuse = d.Version
				if d.Replace != nil {
					fuse = d.Replace.Version
				}
			}
		}
	}
	return fmt.Sprintf("layerfs %s, commit %s, go-fuse %s, %s", orUnknown(v), orUnknown(c), orUnknown(fuse), orUnknown(goVersion))
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func versionCmd(*globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, the commit it was built from, and the go-fuse version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Println(versionLine())
			return err
		},
	}
}
