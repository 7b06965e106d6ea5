package main

import (
	"errors"
	"fmt"
	"strings"

	layerfs "github.com/layerfs/layerfs/fs"
	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/store"
	"github.com/spf13/cobra"
)

// resolve reads targets as store.Resolve does; a single name that is not
// found is answered with the nearest image name, if one is near.
func resolve(s *store.Store, targets []string) (store.Target, error) {
	return resolveOn(s, targets, store.Platform{})
}

// resolveOn is resolve choosing platform p of an image index.
func resolveOn(s *store.Store, targets []string, p store.Platform) (store.Target, error) {
	t, err := s.ResolvePlatform(targets, p)
	if err == nil || len(targets) != 1 {
		return t, err
	}
	return t, suggestName(s, targets[0], err)
}

// suggestName adds to err, the store's not-found for arg, the image
// name arg is a typo of, if there is one; or, when the store holds no
// image at all, where it is: a --root or $LAYERFS_ROOT mistyped, or the
// other user's store (root's /var/lib/layerfs against one's own), reads
// as an empty store. A name arg already is (whose not-found is of a
// platform) is no typo, and suggesting it back is no help.
func suggestName(s *store.Store, arg string, err error) error {
	if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	images, lerr := s.Images()
	if lerr != nil {
		return err
	}
	if len(images) == 0 {
		return fmt.Errorf("%w; the store at %s holds no images", err, output.Name(s.Root()))
	}
	var names []string
	for _, img := range images {
		if img.Name != "" {
			names = append(names, img.Name)
		}
	}
	if near := nearest(arg, names); near != "" {
		return fmt.Errorf("%w; did you mean %q?", err, near)
	}
	return err
}

// nearest is the name closest to arg by edit distance, if it is close
// enough to be a typo: a third of the name's length, at least 2. A name
// whose last path component (a short name such as "sample" for
// "docker.io/library/sample:latest") is near counts too.
func nearest(arg string, names []string) string {
	best, bestDist := "", -1
	for _, n := range names {
		d := editDistance(arg, n)
		short := n[strings.LastIndex(n, "/")+1:]
		if repo, _, ok := strings.Cut(short, ":"); ok {
			d = min(d, editDistance(arg, short), editDistance(arg, repo))
		} else {
			d = min(d, editDistance(arg, short))
		}
		if d == 0 {
			return ""
		}
		if d <= max(2, len(arg)/3) && (bestDist < 0 || d < bestDist) {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// completeTargets completes image names and manifest and layer digests
// of the store the flags name, for the first targets arguments (all of
// them when targets is 0).
func completeTargets(g *globals, targets int) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if targets > 0 && len(args) >= targets {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		s, err := g.open()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		images, err := s.Images()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, img := range images {
			if img.Name != "" {
				out = append(out, cobra.CompletionWithDesc(img.Name, img.Manifest.Digest.String()))
			}
			out = append(out, cobra.CompletionWithDesc(img.Manifest.Digest.String(), "image "+nameOrNone(img.Name)))
		}
		layers, err := s.Layers()
		if err != nil {
			return nil, cobra.ShellCompDirectiveError
		}
		for _, l := range layers {
			out = append(out, cobra.CompletionWithDesc(l.Digest.String(), "layer of "+strings.Join(l.Images, ",")))
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeMountpoints completes the live layerfs mountpoints.
func completeMountpoints(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	mounts, err := layerfs.Mounts()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var out []cobra.Completion
	for _, m := range mounts {
		out = append(out, cobra.CompletionWithDesc(m.Mountpoint, m.Target))
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// completePlatforms completes --platform with the platforms layerfs
// images are commonly built for.
var completePlatforms = cobra.FixedCompletions([]string{
	"linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/386",
	"linux/ppc64le", "linux/s390x", "linux/riscv64",
}, cobra.ShellCompDirectiveNoFileComp)
