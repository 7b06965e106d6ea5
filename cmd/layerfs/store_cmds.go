package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/layerfs/layerfs/internal/output"
	"github.com/layerfs/layerfs/reference"
	"github.com/layerfs/layerfs/source/archive"
	"github.com/layerfs/layerfs/store"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, importCmd, imagesCmd, layersCmd, inspectCmd, tagCmd, rmCmd, verifyCmd, gcCmd)
}

func importCmd(g *globals) *cobra.Command {
	var opts archive.Options
	var layer, quiet bool
	cmd := &cobra.Command{
		Use:   "import PATH[:REF]...",
		Short: "Import the images of OCI image layouts (directories or tars) and docker-archives, plain or compressed",
		Long: `Import the images of OCI image layouts (directories or tars) and
docker-archives, plain or gzip, zstd, xz or bzip2 compressed, printing
"NAME DIGEST" for each image stored.

PATH "-" reads an archive from stdin, as docker load does ("docker save
IMAGE | layerfs import -"); it is copied to an unnamed file in $TMPDIR
first, since an archive is read out of order.

PATH:REF imports only the image REF names: an OCI layout's ref name, a
docker-archive's tag, or @N for the Nth image of either (from 0), as
skopeo's oci:PATH:REF and docker-archive:PATH:REF, which are taken as
skopeo writes them too (oci:, oci-archive: or docker-archive: before
PATH). A PATH that exists as given is never split at a colon.

Of an image index, the host's platform is imported (--platform chooses
another, --all-platforms every one); the name then refers to the index
and the platform is chosen when a view is opened. Entries that are not
images (artifacts, signatures, SBOMs, attestations) are skipped with a
line on stderr. With --layer, each PATH is a bare layer tar.

On a terminal, each layer being extracted shows a progress bar: bytes
read, speed and tar entries. An interrupted import stops, removes what it
staged, and exits 130.`,
		Args:        cobra.MinimumNArgs(1),
		Annotations: map[string]string{handlesInterrupt: stopsOnInterrupt},
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openForWriting()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			prog := newProgress(quiet)
			if !prog.quiet {
				ctx = store.WithExtractObserver(ctx, prog)
			}
			for _, arg := range args {
				if layer {
					desc, err := s.ImportLayer(ctx, arg)
					prog.wait()
					if err != nil {
						return err
					}
					printLine(desc.Digest)
					marks, err := s.ArchiveMarks(desc.Digest)
					if err != nil {
						return err
					}
					if len(marks) > 0 {
						logrus.Warnf("%s holds %s at its root, as an image archive does: it was stored as one layer, as --layer asks; without --layer, import takes the images in it", arg, strings.Join(marks, " and "))
					}
					continue
				}
				res, err := importArg(ctx, s, arg, opts)
				prog.wait()
				for _, skipped := range res.Skipped {
					tell("skipped %s (%s)", skipped.Digest, skipped.What)
				}
				for _, img := range res.Images {
					printf("%s %s\n", output.Name(nameOrNone(img.Name)), img.Manifest)
				}
				if err != nil {
					return err
				}
			}
			return nil
		},
	}
	platformFlag(cmd, &opts.Platform, "of an image index, the platform to take (default: this host's)")
	cmd.Flags().BoolVar(&opts.AllPlatforms, "all-platforms", false, "import every platform of an image index")
	cmd.Flags().BoolVar(&layer, "layer", false, "import each PATH as a bare layer tar (plain, gzip or zstd)")
	cmd.MarkFlagsMutuallyExclusive("platform", "all-platforms")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress bars")
	return cmd
}

// importArg imports the images of arg: a PATH[:REF], or "-" for an
// archive on stdin, as docker load reads one.
func importArg(ctx context.Context, s *store.Store, arg string, opts archive.Options) (archive.Result, error) {
	if arg != "-" {
		src, ref := archive.SplitRef(arg)
		opts.Ref = ref
		return archive.Import(ctx, s, src, opts)
	}
	if isTerminal(os.Stdin) {
		return archive.Result{}, errors.New(`import -: stdin is a terminal; pipe an archive to it ("docker save IMAGE | layerfs import -")`)
	}
	scratch, err := output.Scratch()
	if err != nil {
		return archive.Result{}, err
	}
	return archive.ImportReader(ctx, s, os.Stdin, scratch, "stdin", opts)
}

func nameOrNone(n string) string {
	if n == "" {
		return "<none>"
	}
	return n
}

// listFlags adds the flags every list command takes; example is a
// --format template of the command's items.
func listFlags(cmd *cobra.Command, o *output.Options, ids, example string) {
	cmd.Flags().StringVar(&o.Format, "format", "table", `"table", "json", or a Go template applied to each item, e.g. '`+example+`'`)
	cmd.Flags().BoolVarP(&o.Quiet, "quiet", "q", false, "print only "+ids)
	cmd.Flags().BoolVar(&o.NoTrunc, "no-trunc", false, "print digests whole")
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
}

// imageItem is one line of images; its fields are what --format json
// prints and templates see.
type imageItem struct {
	Name     string        `json:"name"`
	Digest   digest.Digest `json:"digest"`
	Platform string        `json:"platform"`
	Created  *time.Time    `json:"created,omitempty"`
	Layers   int           `json:"layers"`
	// Size is the sum of the config's and the compressed layers' sizes,
	// as the manifest gives them: what a pull of it downloads.
	Size int64 `json:"size"`
}

func imagesCmd(g *globals) *cobra.Command {
	var o output.Options
	cmd := &cobra.Command{
		Use:   "images [NAME...]",
		Short: "List images: name, manifest digest, platform, created, layers, size",
		Long: `List images: name, manifest digest, platform and creation time (from
the config), number of layers, and SIZE: the config and the compressed
layers as the manifest gives them, what a pull downloads. A layer shared
by several images counts in each.

Given NAMEs, only the images they name, as docker images REPOSITORY[:TAG]
reads them: a name as listed or docker-style (debian is
docker.io/library/debian:latest), and a repository without a tag names
every tag of it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			images, err := s.Images()
			if err != nil {
				return err
			}
			items := make([]imageItem, 0, len(images))
			for _, img := range images {
				if len(args) > 0 && !slices.ContainsFunc(args, func(f string) bool { return reference.Matches(img.Name, f) }) {
					continue
				}
				layers, size, err := s.ImageSize(img)
				if err != nil {
					return fmt.Errorf("image %s: %w", output.Name(nameOrNone(img.Name)), err)
				}
				var platforms []string
				for _, p := range img.Platforms {
					if p == (store.Platform{}) {
						// No config nor index entry names one.
						platforms = append(platforms, "unknown")
						continue
					}
					platforms = append(platforms, p.String())
				}
				items = append(items, imageItem{Name: img.Name, Digest: img.Manifest.Digest, Platform: strings.Join(platforms, ","), Created: s.Created(img), Layers: layers, Size: size})
			}
			return output.Write(os.Stdout, o, output.List[imageItem]{
				ID: func(i imageItem) string { return output.Digest(i.Digest, o.NoTrunc) },
				Columns: []output.Column[imageItem]{
					{Header: "NAME", Cell: func(i imageItem) string { return output.Name(nameOrNone(i.Name)) }},
					{Header: "DIGEST", Cell: func(i imageItem) string { return output.Digest(i.Digest, o.NoTrunc) }},
					{Header: "PLATFORM", Cell: func(i imageItem) string { return output.Name(i.Platform) }},
					{Header: "CREATED", Cell: func(i imageItem) string { return created(i.Created) }},
					{Header: "LAYERS", Cell: func(i imageItem) string { return fmt.Sprint(i.Layers) }},
					{Header: "SIZE", Cell: func(i imageItem) string { return output.Size(i.Size) }},
				},
			}, items)
		},
	}
	listFlags(cmd, &o, "manifest digests", "{{.Name}} {{.Digest}}")
	return cmd
}

// created prints a creation time to the second, in UTC, as one word.
func created(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func layersCmd(g *globals) *cobra.Command {
	var o output.Options
	cmd := &cobra.Command{
		Use:   "layers [TARGET]",
		Short: "List layers: digest, media type, compressed and extracted size, entries, images using it",
		Long: `List layers: digest, media type, COMPRESSED (the blob's size),
EXTRACTED (the bytes of the regular files' contents the layer holds, before
sharing objects with other layers; "-" when not extracted), ENTRIES (the
paths of the layer as built: each path of its tar once, however often the
tar has it, whiteout markers, the root and the directories its paths
imply included) and the images that use it.

With TARGET, only its layers, lowest first, in the order its manifest
gives them (dive's order; docker history lists them highest first).

` + stackHelp,
		Args:              cobra.MaximumNArgs(1),
		ValidArgsFunction: completeTargets(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			layers, err := s.Layers()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				t, err := resolveView(g, s, args)
				if err != nil {
					return err
				}
				layers = layersOf(layers, t)
			}
			extracted := func(l store.LayerInfo, v string) string {
				if !l.Extracted {
					return ""
				}
				return v
			}
			return output.Write(os.Stdout, o, output.List[store.LayerInfo]{
				ID: func(l store.LayerInfo) string { return output.Digest(l.Digest, o.NoTrunc) },
				Columns: []output.Column[store.LayerInfo]{
					{Header: "DIGEST", Cell: func(l store.LayerInfo) string { return output.Digest(l.Digest, o.NoTrunc) }},
					{Header: "MEDIA-TYPE", Cell: func(l store.LayerInfo) string { return l.MediaType }},
					{Header: "COMPRESSED", Cell: func(l store.LayerInfo) string { return output.Size(l.CompressedSize) }},
					{Header: "EXTRACTED", Cell: func(l store.LayerInfo) string { return extracted(l, output.Size(l.ContentBytes)) }},
					{Header: "ENTRIES", Cell: func(l store.LayerInfo) string { return extracted(l, fmt.Sprint(l.Entries)) }},
					{Header: "IMAGES", Cell: func(l store.LayerInfo) string {
						names := make([]string, len(l.Images))
						for i, n := range l.Images {
							names[i] = output.Name(n)
						}
						return strings.Join(names, ",")
					}},
				},
			}, layers)
		},
	}
	listFlags(cmd, &o, "layer digests", "{{.Digest}} {{.Entries}}")
	return withViewPlatform(g, cmd)
}

// layersOf picks the facts of t's layers out of all, in t's order,
// lowest first.
func layersOf(all []store.LayerInfo, t store.Target) []store.LayerInfo {
	out := []store.LayerInfo{}
	for _, d := range t.Digests() {
		for _, l := range all {
			if l.Digest == d {
				out = append(out, l)
			}
		}
	}
	return out
}

// inspected is what inspect prints of one target.
type inspected struct {
	Name string `json:"name,omitempty"`
	// Names are every name of the image, whichever TARGET gave it.
	Names    []string          `json:"names,omitempty"`
	Manifest *ocispec.Manifest `json:"manifest,omitempty"`
	Digest   string            `json:"manifestDigest,omitempty"`
	Config   *ocispec.Image    `json:"config,omitempty"`
	Layers   []store.LayerInfo `json:"layers"`
}

func inspectCmd(g *globals) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "inspect TARGET...",
		Short: "Print each image's or layer stack's manifest, config and layer facts, as a JSON array",
		Long: `Print, as a JSON array with one object per TARGET, each image's or
layer stack's manifest, config and layer facts, as docker inspect does.
--format TEMPLATE prints a Go template of each object instead, a line
each, as docker inspect --format does: its fields are .Name, .Names
(every name of the image, as docker's RepoTags), .Digest (the
manifest's), .Manifest, .Config (the image config, whose own
.Config holds .Env, .Entrypoint, .Cmd...) and .Layers, e.g.
'{{.Config.Config.Env}}' or '{{range .Layers}}{{.Digest}} {{end}}'.
Of an image index, the manifest is that of the platform --platform
names (default: this host's). A TARGET that is not there is reported
after the others are printed, and the exit code is then 1.

` + stackHelp,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeTargets(g, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format == "table" || format == "" {
				return usageError{cmd, errors.New("--format: inspect prints json or a Go template, not a table")}
			}
			s, err := g.open()
			if err != nil {
				return err
			}
			all, err := s.Layers()
			if err != nil {
				return err
			}
			// Each TARGET on its own, as docker inspect: those found are
			// printed, then every one that is not is reported.
			out := make([]inspected, 0, len(args))
			var errs []error
			for _, arg := range args {
				one, err := inspectOne(g, s, all, arg)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				out = append(out, one)
			}
			// Where none is found the command failed, and prints
			// nothing, not an empty array.
			if len(out) > 0 || len(errs) == 0 {
				if err := output.Write(os.Stdout, output.Options{Format: format}, output.List[inspected]{}, out); err != nil {
					return err
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().StringVar(&format, "format", "json", `"json", or a Go template applied to each TARGET's object, e.g. '{{.Digest}} {{len .Layers}}'`)
	cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"json"}, cobra.ShellCompDirectiveNoFileComp))
	return withViewPlatform(g, cmd)
}

// inspectOne is what inspect shows of target arg.
func inspectOne(g *globals, s *store.Store, all []store.LayerInfo, arg string) (inspected, error) {
	t, err := resolveView(g, s, []string{arg})
	if err != nil {
		return inspected{}, err
	}
	one := inspected{Name: t.Name, Layers: layersOf(all, t)}
	if t.Manifest.Digest == "" {
		return one, nil
	}
	m, c, err := s.ImageLayers(t.Manifest.Digest)
	if err != nil {
		return inspected{}, err
	}
	one.Manifest, one.Config, one.Digest = &m, &c, t.Manifest.Digest.String()
	if one.Names, err = s.NamesOf(t.Manifest.Digest); err != nil {
		return inspected{}, err
	}
	return one, nil
}

func tagCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "tag SOURCE NAME...",
		Short: "Give an image more names",
		Long: `Give the image SOURCE (a name, or a manifest or index digest or a
unique prefix of one) each NAME too, printing "NAME DIGEST" for each.
A NAME is kept as given, as an OCI layout's ref name, and must be one
as the OCI image spec and umoci have it (letters and digits joined by
one of - . _ : @ + or --, in components separated by /), and must not
read as a digest (sha256:..., or 12 to 64 hex digits); a docker-style
short name still finds a stored full one, as for every target. Every
NAME is checked before any is given: one bad NAME is a usage error
(exit 2), and no NAME is given.

A NAME that already stands for another image is refused, since that
image would be left without it and gc removes an image with no name, and
then no NAME is given; --force moves the name, as docker tag does.`,
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: completeTargets(g, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// Every NAME is checked before any is given, as the store
			// would check it, so that a bad one leaves none applied.
			for _, name := range args[1:] {
				if name == "" {
					return usageError{cmd, errors.New("an image name may not be empty")}
				}
				err := reference.CheckRefName(name)
				if err == nil {
					err = reference.CheckName(name)
				}
				if err != nil {
					return usageError{cmd, err}
				}
			}
			s, err := g.openToChange()
			if err != nil {
				return err
			}
			img, err := s.ImageOf(args[0])
			if err != nil {
				return suggestName(s, args[0], err)
			}
			names := args[1:]
			if force {
				for _, name := range names {
					if err := s.Tag(name, img.Manifest); err != nil {
						return err
					}
					printf("%s %s\n", output.Name(name), img.Manifest.Digest)
				}
				return nil
			}
			// All or none: a NAME in use stops the others too.
			if err := s.AddNames(img.Manifest, names...); err != nil {
				if errors.Is(err, store.ErrNameTaken) {
					err = fmt.Errorf("%w: give --force to move it; no NAME was given", err)
				}
				return err
			}
			for _, name := range names {
				printf("%s %s\n", output.Name(name), img.Manifest.Digest)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "move a NAME that stands for another image")
	return cmd
}

func rmCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm NAME|DIGEST...",
		Short: "Remove images by name or digest, or bare layers by digest (gc frees what nothing uses any more)",
		Long: `Remove images by name or by manifest or index digest (or a unique
prefix of one), or layers imported with import --layer by digest (gc
frees what nothing uses any more). A digest removes the image under its
name, or unnamed (<none>); one that several names share is refused
unless --force, which removes it under every name, as docker rmi does.

An image a live mount or virtio-fs server serves is refused unless
--force; with it, the view keeps working, and gc frees its data once the
view ends.

Each argument is removed on its own, as docker rmi does: what is removed
is printed, every argument that fails is reported, and the others are
still removed; the exit code is then 1.`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: completeTargets(g, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.openToChange()
			if err != nil {
				return err
			}
			// Each argument on its own, as docker rmi: one that fails
			// stops none of the others.
			var errs []error
			for _, name := range args {
				removed, err := removeOne(s, name, force)
				for _, r := range removed {
					printLine(output.Name(r))
				}
				if err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "remove an image even while a mount serves it")
	return cmd
}

// removeOne removes the image or bare layer name gives, and returns what
// it removed, by name, or by digest what has none.
func removeOne(s *store.Store, name string, force bool) ([]string, error) {
	img, err := s.ImageNamed(name)
	if errors.Is(err, store.ErrNotFound) {
		t, terr := s.Resolve([]string{name})
		if terr == nil && t.Single {
			if err := s.RemoveBareLayer(t.Layers[0].Digest, force); err != nil {
				return nil, err
			}
			return []string{t.Layers[0].Digest.String()}, nil
		}
		if removed, ok, err := removeByDigest(s, name, force); ok {
			if err != nil {
				return nil, err
			}
			return removed, nil
		}
		if terr != nil {
			// A target's not-found says what is wrong with a digest
			// too: none has it, its digits, its algorithm.
			err = terr
		}
	}
	if err != nil {
		return nil, suggestName(s, name, err)
	}
	if !force {
		if err := s.CheckNotServed(img); err != nil {
			return nil, err
		}
	}
	if err := s.Untag(img.Name); err != nil {
		return nil, err
	}
	return []string{img.Name}, nil
}

// removeByDigest removes the image whose manifest or index digest arg
// gives, printing its names, or its digest when it has none. ok is false
// when arg is no image's digest.
func removeByDigest(s *store.Store, arg string, force bool) (removed []string, ok bool, err error) {
	img, err := s.ImageOf(arg)
	if err != nil {
		return nil, false, nil
	}
	images, err := s.Images()
	if err != nil {
		return nil, true, err
	}
	var entries []store.Image
	for _, other := range images {
		if other.Manifest.Digest == img.Manifest.Digest {
			entries = append(entries, other)
			removed = append(removed, nameOrDigest(other))
		}
	}
	switch {
	case len(entries) == 0:
		return nil, true, fmt.Errorf("%s is the manifest of one platform of an image index: rm the index", arg)
	case len(entries) > 1 && !force:
		return nil, true, fmt.Errorf("image %s has several names (%s): rm them by name, or rm --force to remove every one", img.Manifest.Digest, strings.Join(removed, ", "))
	case !force:
		if err := s.CheckNotServed(entries[0]); err != nil {
			return nil, true, err
		}
	}
	return removed, true, s.UntagDigest(img.Manifest.Digest)
}

func nameOrDigest(img store.Image) string {
	if img.Name == "" {
		return img.Manifest.Digest.String()
	}
	return img.Name
}

func verifyCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "verify [TARGET...]",
		Short: "Re-hash blobs and objects and check layer indexes; exit 1 naming every bad digest",
		Long: `Re-hash blobs and objects and check layer indexes, of TARGETs or of
every image. A store that verifies prints one line: "ok: N
blobs, N objects, N indexes" on stdout. Otherwise every problem is a line on
stderr, then the images it affects, and the exit code is 1.

A layer's links (the names mount --kernel reads its objects through) are
the one thing verify repairs: a broken link is made again from its object,
and said so in the problem's line.

` + stackHelp,
		ValidArgsFunction: completeTargets(g, 0),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := g.open()
			if err != nil {
				return err
			}
			var targets []store.Target
			for _, a := range args {
				parts, err := splitStack(a)
				if err != nil {
					return err
				}
				t, err := resolve(s, parts)
				if err != nil {
					return err
				}
				targets = append(targets, t)
			}
			checked, problems, err := s.Verify(targets)
			if err != nil {
				return err
			}
			for _, p := range problems {
				fmt.Fprintf(os.Stderr, "layerfs: verify: %s\n", p)
			}
			if len(problems) == 0 {
				printf("ok: %d blobs, %d objects, %d indexes\n", checked.Blobs, checked.Objects, checked.Indexes)
				return nil
			}
			affected, err := affectedImages(s, problems)
			if err != nil {
				return err
			}
			for _, name := range affected {
				fmt.Fprintf(os.Stderr, "layerfs: verify: image %s is affected\n", output.Name(name))
			}
			return exitError{code: exitFailure}
		},
	}
}

// affectedImages names the images that use a blob, layer or object of
// problems, sorted.
func affectedImages(s *store.Store, problems []store.Problem) ([]string, error) {
	bad := map[string]bool{}
	for _, p := range problems {
		bad[p.ID] = true
	}
	images, err := s.Images()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, img := range images {
		m, _, err := s.ImageLayers(img.Manifest.Digest)
		uses := err != nil || bad[img.Manifest.Digest.String()] || bad[m.Config.Digest.String()]
		for _, l := range m.Layers {
			if uses {
				break
			}
			uses = bad[l.Digest.String()] || layerUsesObject(s, l.Digest, bad)
		}
		if uses {
			out = append(out, nameOrNone(img.Name))
		}
	}
	sort.Strings(out)
	return out, nil
}

// layerUsesObject reports whether layer d's index names an object in bad;
// an index that does not open is a problem of its own, named already.
func layerUsesObject(s *store.Store, d digest.Digest, bad map[string]bool) bool {
	l, err := s.OpenLayer(d)
	if err != nil {
		return false
	}
	defer l.Index.Close()
	for rec := uint32(0); rec < uint32(l.Index.Len()); rec++ {
		if e, err := l.Index.Entry(rec); err == nil && e.Object != "" && bad[e.Object.String()] {
			return true
		}
	}
	return false
}

func gcCmd(g *globals) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove blobs, layers and objects no image and no live mount uses, and stale temp files",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// A dry run only reads: it works on a store it cannot write.
			open := g.openToChange
			if dryRun {
				open = g.open
			}
			s, err := open()
			if err != nil {
				return err
			}
			// What gc removed is said even when it could not remove all.
			f, err := s.GC(dryRun)
			verb := "removed"
			if dryRun {
				verb = "would remove"
			}
			printf("%s %d blobs, %d layers, %d objects, %d meta files, %d temp files: %d bytes\n", verb, f.Blobs, f.Layers, f.Objects, f.Metas, f.Temps, f.Bytes)
			return err
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "say what would be removed, and remove nothing")
	return cmd
}
