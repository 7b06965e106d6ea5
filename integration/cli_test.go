package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
)

var (
	shortHex = regexp.MustCompile(`^[0-9a-f]{12}$`)
	fullHex  = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
)

// sampleLayout reads the sample image's manifest and config from its OCI
// layout, the reference the store's listings are checked against.
func sampleLayout(t *testing.T) (ocispec.Descriptor, ocispec.Manifest, ocispec.Image) {
	t.Helper()
	idx, err := testimage.ReadIndex("../testdata/sample")
	if err != nil {
		t.Fatal(err)
	}
	m, c, err := testimage.ReadImage("../testdata/sample", idx.Manifests[0])
	if err != nil {
		t.Fatal(err)
	}
	return idx.Manifests[0], m, c
}

// mustRunWithin runs layerfs as mustRun does, killing it after d: a
// command that lists mounts can block on a mount another test hangs on
// purpose.
func mustRunWithin(t *testing.T, d time.Duration, root string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, layerfsBin(t), append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("layerfs %s: %v (deadline %v)\n%s", strings.Join(args, " "), err, d, errb.String())
	}
	return out.String()
}

// sampleStore is a new store holding the sample image.
func sampleStore(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	mustRun(t, root, "import", "../testdata/sample")
	return root
}

// gnuTarCounts is what GNU tar lists of a layer blob: how many paths,
// each once however often the tar has it, with the root and every
// directory a path implies, and the bytes of its regular files, a
// hardlink's counted once.
func gnuTarCounts(t *testing.T, blob string) (paths int, contentBytes int64) {
	t.Helper()
	listing := testimage.RunTool(t, "tar", "--numeric-owner", "--quoting-style=literal", "-tvf", blob)
	seen := map[string]bool{".": true}
	for _, line := range strings.Split(strings.TrimSuffix(string(listing), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 {
			t.Fatalf("tar -tvf %s: line %q", blob, line)
		}
		if f[0][0] == '-' {
			size, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil {
				t.Fatalf("tar -tvf %s: line %q: %v", blob, line, err)
			}
			contentBytes += size
		}
		name, _, _ := strings.Cut(strings.Join(f[5:], " "), " -> ")
		name, _, _ = strings.Cut(name, " link to ")
		for p := path.Clean("/" + name); p != "/"; p = path.Dir(p) {
			seen[strings.TrimPrefix(p, "/")] = true
		}
	}
	return len(seen), contentBytes
}

// tableRows splits a table into its header's fields and each row's,
// failing t unless every row has exactly as many fields as the header.
func tableRows(t *testing.T, out string, header ...string) [][]string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if got := strings.Fields(lines[0]); strings.Join(got, " ") != strings.Join(header, " ") {
		t.Fatalf("header %q, want %q", lines[0], header)
	}
	var rows [][]string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) != len(header) {
			t.Fatalf("row %q has %d fields, want %d", l, len(f), len(header))
		}
		rows = append(rows, f)
	}
	return rows
}

// humanBytes reads a size as the tables print it, "1.91kB", to bytes.
func humanBytes(t *testing.T, s string) float64 {
	t.Helper()
	m := regexp.MustCompile(`^([0-9.]+)(B|kB|MB|GB|TB)$`).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("size %q is not a human size", s)
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v * map[string]float64{"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[m[2]]
}

func nearSize(t *testing.T, what, human string, raw int64) {
	t.Helper()
	if h := humanBytes(t, human); h < float64(raw)*0.99 || h > float64(raw)*1.01 {
		t.Errorf("%s: table says %s, the raw size is %d bytes", what, human, raw)
	}
}

// TestCLIListings checks images, layers and mounts in every output form
// against the sample layout's own manifest and config and the live mount.
func TestCLIListings(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	desc, m, c := sampleLayout(t)
	size := m.Config.Size
	layerSize := map[string]int64{}
	for _, l := range m.Layers {
		size += l.Size
		layerSize[l.Digest.String()] = l.Size
	}

	t.Run("images", func(t *testing.T) {
		rows := tableRows(t, mustRun(t, root, "images"), "NAME", "DIGEST", "PLATFORM", "CREATED", "LAYERS", "SIZE")
		if len(rows) != 1 {
			t.Fatalf("%d rows", len(rows))
		}
		r := rows[0]
		wantCreated := c.Created.UTC().Format(time.RFC3339)
		if r[0] != "sample" || r[1] != desc.Digest.Encoded()[:12] || r[2] != c.OS+"/"+c.Architecture || r[3] != wantCreated || r[4] != fmt.Sprint(len(m.Layers)) {
			t.Errorf("row %q; want sample, %s, %s/%s, %s, %d layers", r, desc.Digest.Encoded()[:12], c.OS, c.Architecture, wantCreated, len(m.Layers))
		}
		nearSize(t, "images SIZE", r[5], size)
		if rows := tableRows(t, mustRun(t, root, "images", "--no-trunc"), "NAME", "DIGEST", "PLATFORM", "CREATED", "LAYERS", "SIZE"); rows[0][1] != desc.Digest.String() {
			t.Errorf("--no-trunc digest %q, want %s", rows[0][1], desc.Digest)
		}
		var got []struct {
			Name, Digest, Platform string
			Created                time.Time
			Layers                 int
			Size                   int64
		}
		if err := json.Unmarshal([]byte(mustRun(t, root, "images", "--format", "json")), &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Name != "sample" || got[0].Digest != desc.Digest.String() || got[0].Platform != "linux/amd64" ||
			!got[0].Created.Equal(*c.Created) || got[0].Layers != len(m.Layers) || got[0].Size != size {
			t.Errorf("json %+v; want sample %s linux/amd64 %v %d layers %d bytes", got, desc.Digest, c.Created, len(m.Layers), size)
		}
		if out := mustRun(t, root, "images", "--format", "{{.Name}} {{.Digest}}"); out != "sample "+desc.Digest.String()+"\n" {
			t.Errorf("template: %q", out)
		}
		if out := strings.TrimSpace(mustRun(t, root, "images", "-q")); !shortHex.MatchString(out) || !strings.HasPrefix(desc.Digest.Encoded(), out) {
			t.Errorf("-q: %q", out)
		}
		if out := strings.TrimSpace(mustRun(t, root, "images", "-q", "--no-trunc")); out != desc.Digest.String() {
			t.Errorf("-q --no-trunc: %q", out)
		}
	})

	t.Run("layers", func(t *testing.T) {
		rows := tableRows(t, mustRun(t, root, "layers"), "DIGEST", "MEDIA-TYPE", "COMPRESSED", "EXTRACTED", "ENTRIES", "IMAGES")
		var got []struct {
			Digest         string
			MediaType      string
			CompressedSize int64
			Extracted      bool
			ContentBytes   int64
			Entries        int
			Images         []string
		}
		if err := json.Unmarshal([]byte(mustRun(t, root, "layers", "--format", "json")), &got); err != nil {
			t.Fatal(err)
		}
		if len(rows) != len(m.Layers) || len(got) != len(m.Layers) {
			t.Fatalf("%d rows, %d json items, want %d layers", len(rows), len(got), len(m.Layers))
		}
		for i, l := range got {
			want, ok := layerSize[l.Digest]
			if !ok || l.CompressedSize != want || !l.Extracted || l.Entries == 0 || len(l.Images) != 1 || l.Images[0] != "sample" {
				t.Errorf("layer %+v: not one of the manifest's (%d bytes) as imported", l, want)
			}
			r := rows[i]
			if r[0] != strings.TrimPrefix(l.Digest, "sha256:")[:12] || r[1] != l.MediaType || r[4] != fmt.Sprint(l.Entries) || r[5] != "sample" {
				t.Errorf("row %q does not show %+v", r, l)
			}
			nearSize(t, "COMPRESSED", r[2], l.CompressedSize)
			nearSize(t, "EXTRACTED", r[3], l.ContentBytes)
			blob := testimage.BlobPath("../testdata/sample", digest.Digest(l.Digest))
			if paths, contentBytes := gnuTarCounts(t, blob); l.Entries != paths || l.ContentBytes != contentBytes {
				t.Errorf("layer %s: %d entries, %d content bytes; GNU tar lists %d paths (the root and implied directories included) and %d bytes of regular files", l.Digest, l.Entries, l.ContentBytes, paths, contentBytes)
			}
		}
		for _, line := range strings.Split(strings.TrimSpace(mustRun(t, root, "layers", "-q")), "\n") {
			if !shortHex.MatchString(line) {
				t.Errorf("layers -q line %q is not a short digest", line)
			}
		}
		for _, line := range strings.Split(strings.TrimSpace(mustRun(t, root, "layers", "-q", "--no-trunc")), "\n") {
			if _, ok := layerSize[line]; !ok || !fullHex.MatchString(line) {
				t.Errorf("layers -q --no-trunc line %q is not a layer digest of the manifest", line)
			}
		}
		if out := mustRun(t, root, "layers", "--format", "{{.Digest}} {{.Entries}}"); strings.Count(out, "\n") != len(m.Layers) {
			t.Errorf("template: %q", out)
		}
		if out := mustRun(t, root, "layers", "--format", `{{join .Images "+"}}`); out != strings.Repeat("sample\n", len(m.Layers)) {
			t.Errorf("template with join: %q", out)
		}
		// A template that names no field of the items, or does not
		// parse, is a bad flag value: exit 2, the fields named, and
		// nothing on stdout.
		for _, bad := range []string{"{{.Digest}} {{.Name}}", "{{.Digest"} {
			r := run(t, root, "layers", "--format", bad)
			if r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, ".Entries") {
				t.Errorf("layers --format %q: exit %d, stdout %q, stderr %q; want exit 2, nothing on stdout, the fields on stderr", bad, r.code, r.stdout, r.stderr)
			}
		}
	})

	// With a TARGET, layers lists its layers in the order skopeo reads
	// from the layout, lowest first, not in the store's order; a stack
	// in the order given.
	t.Run("layers of a target", func(t *testing.T) {
		var inspected struct{ Layers []string }
		if err := json.Unmarshal(testimage.RunTool(t, "skopeo", "inspect", "oci:../testdata/sample:sample"), &inspected); err != nil {
			t.Fatal(err)
		}
		want := strings.Join(inspected.Layers, "\n") + "\n"
		for _, target := range []string{"sample", desc.Digest.String()[:len("sha256:")+12]} {
			if got := mustRun(t, root, "layers", "-q", "--no-trunc", target); got != want {
				t.Errorf("layers -q --no-trunc %s:\n%swant skopeo's order:\n%s", target, got, want)
			}
		}
		last, first := inspected.Layers[len(inspected.Layers)-1], inspected.Layers[0]
		if got := mustRun(t, root, "layers", "-q", "--no-trunc", last+","+first); got != last+"\n"+first+"\n" {
			t.Errorf("layers of the stack %s,%s: %q", last, first, got)
		}
		rows := tableRows(t, mustRun(t, root, "layers", "sample"), "DIGEST", "MEDIA-TYPE", "COMPRESSED", "EXTRACTED", "ENTRIES", "IMAGES")
		if len(rows) != len(inspected.Layers) || rows[0][0] != strings.TrimPrefix(first, "sha256:")[:12] {
			t.Errorf("layers sample: rows %q, want the %d layers from %s", rows, len(inspected.Layers), first)
		}
		if r := run(t, root, "layers", "sampel"); r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, `did you mean "sample"?`) {
			t.Errorf("layers sampel: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("mounts", func(t *testing.T) {
		mnt := mountDaemon(t, root, "sample")
		var got []struct {
			Mountpoint, Target, State string
			PID                       int
		}
		if err := json.Unmarshal([]byte(mustRunWithin(t, time.Minute, root, "mounts", "--format", "json")), &got); err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, m := range got {
			if m.Mountpoint != mnt {
				continue
			}
			found = true
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", m.PID))
			if m.State != "serving" || !bytes.Contains(cmdline, []byte(mnt)) {
				t.Errorf("mount %+v: want serving, by a process serving %s (cmdline %q)", m, mnt, cmdline)
			}
		}
		if !found {
			t.Fatalf("mounts --format json does not list %s: %+v", mnt, got)
		}
		var row []string
		for _, r := range tableRows(t, mustRunWithin(t, time.Minute, root, "mounts"), "MOUNTPOINT", "TARGET", "STORE", "PID", "STATE", "TYPE") {
			if r[0] == mnt {
				row = r
			}
		}
		if row == nil || row[4] != "serving" {
			t.Errorf("mounts table row %q", row)
		}
		// A stack of layers is one field too: its digests joined by
		// commas, shortened as images and layers shorten them unless
		// --no-trunc, a target that mounts the same view again: kernel
		// overlayfs over those layers.
		layers := strings.Fields(mustRun(t, root, "layers", "-q", "--no-trunc"))
		stackMnt := mountDaemon(t, root, layers[0], layers[1])
		stackRow := func(args ...string) []string {
			for _, r := range tableRows(t, mustRunWithin(t, time.Minute, root, append([]string{"mounts"}, args...)...), "MOUNTPOINT", "TARGET", "STORE", "PID", "STATE", "TYPE") {
				if r[0] == stackMnt {
					return r
				}
			}
			return nil
		}
		if want := layers[0] + "," + layers[1]; stackRow("--no-trunc") == nil || stackRow("--no-trunc")[1] != want {
			t.Errorf("mounts --no-trunc row %q, want target %s", stackRow("--no-trunc"), want)
		}
		row = stackRow()
		if want := strings.TrimPrefix(layers[0], "sha256:")[:12] + "," + strings.TrimPrefix(layers[1], "sha256:")[:12]; row == nil || row[1] != want {
			t.Fatalf("mounts table row %q, want target %s", row, want)
		}
		var blobs []string
		for _, d := range layers[:2] {
			blobs = append(blobs, testimage.BlobPath("../testdata/sample", digest.Digest(d)))
		}
		requireSame(t, "layerfs mount "+row[1], oracleTree(t, blobs), walkMount(t, root, row[1]))
		if out := mustRunWithin(t, time.Minute, root, "mounts", "-q"); !strings.Contains("\n"+out, "\n"+mnt+"\n") {
			t.Errorf("mounts -q does not list %s:\n%s", mnt, out)
		}
	})

	t.Run("empty fields", func(t *testing.T) {
		// A layer with no image and no media type, whose index is gone:
		// every field it lacks prints as "-".
		other := writeFaultLayout(t, testimage.Image{Name: "dash", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f", "x")}}}})
		r2 := t.TempDir()
		mustRun(t, r2, "import", other)
		mustRun(t, r2, "rm", "dash")
		idx, _ := filepath.Glob(filepath.Join(r2, "layers", "sha256", "*", "index"))
		if len(idx) != 1 {
			t.Fatalf("indexes %q", idx)
		}
		if err := os.Remove(idx[0]); err != nil {
			t.Fatal(err)
		}
		rows := tableRows(t, mustRun(t, r2, "layers"), "DIGEST", "MEDIA-TYPE", "COMPRESSED", "EXTRACTED", "ENTRIES", "IMAGES")
		if len(rows) != 1 || rows[0][1] != "-" || rows[0][3] != "-" || rows[0][4] != "-" || rows[0][5] != "-" {
			t.Errorf("rows %q: want - for media type, extracted, entries and images", rows)
		}
	})
}

// TestCLIArguments checks exit codes, usage errors, suggestions,
// inspect of several images and the version.
func TestCLIArguments(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	other := writeFaultLayout(t, testimage.Image{Name: "other", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f", "x")}}}})
	mustRun(t, root, "import", other)
	fuse, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/hanwen/go-fuse/v2").Output()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"inspect", "sampel"}, 1, `did you mean "sample"?`},
		{[]string{"inspect", "othr"}, 1, `did you mean "other"?`},
		{[]string{"imags"}, 2, "unknown command \"imags\" for \"layerfs\"\n\nDid you mean this?\n\timages\n"},
		// cobra's help and completion print the help for these, exit 0.
		{[]string{"help", "bogus"}, 2, `unknown help topic "bogus" for "layerfs"`},
		{[]string{"help", "imags"}, 2, "unknown help topic \"imags\" for \"layerfs\"\n\nDid you mean this?\n\timages\n"},
		{[]string{"help", "mounts", "extra"}, 2, `unknown help topic "extra" for "layerfs mounts"`},
		{[]string{"completion", "bogus"}, 2, `unknown command "bogus" for "layerfs completion"`},
		{[]string{"inspect"}, 2, "Usage: layerfs inspect TARGET... [flags]"},
		{[]string{"layers", "sample", "extra"}, 2, "Usage: layerfs layers [TARGET] [flags]"},
		{[]string{"which", "sample"}, 2, "Usage: layerfs which TARGET PATH"},
		{[]string{"images", "--no-such-flag"}, 2, "unknown flag"},
		// An unset variable in a script: never the default store.
		{[]string{"images", "--root", ""}, 2, "--root is empty"},
		{[]string{"layers", "--root="}, 2, "--root is empty"},
		{[]string{"pull", "--jobs", "0", "x"}, 2, "--jobs 0"},
		{[]string{"pull", "--jobs", "-3", "x"}, 2, "--jobs -3"},
		{[]string{"pull", "--jobs", "many", "x"}, 2, "invalid argument"},
		{[]string{"import", "--platform", "linux", "../testdata/sample"}, 2, "want os/arch"},
		{[]string{"ls", "--platform", "linux", "sample"}, 2, "want os/arch"},
		{[]string{"build", "--platform", "amd64", "sample", "-o", "-"}, 2, "want os/arch"},
		{[]string{"pull", "--platform", "a/b/c/d", "x"}, 2, "want os/arch"},
		{[]string{"import", "--all-platforms", "--platform", "linux/amd64", "../testdata/sample"}, 2, "[platform all-platforms]"},
		{[]string{"pull", "--platform", "linux/amd64", "--all-platforms", "x"}, 2, "[platform all-platforms]"},
		// Layouts and archives, written as paths or there on disk
		// (this test's own source), are import's, not a registry's.
		{[]string{"pull", "./sample"}, 1, "with layerfs import"},
		{[]string{"pull", "../testdata/sample"}, 1, "with layerfs import"},
		{[]string{"pull", "/no/such/sample"}, 1, "with layerfs import"},
		{[]string{"pull", "cli_test.go"}, 1, "with layerfs import, or pull docker://cli_test.go"},
		{[]string{"pull", "cli_test.go:v1"}, 1, "with layerfs import, or pull docker://cli_test.go:v1"},
		{[]string{"which", "sample", "/no/such/path"}, 3, "not in the view"},
		{[]string{"rm", "no-such-image"}, 1, "not found"},
		// What is wrong with a digest is said.
		{[]string{"inspect", "887DE7C1B19C"}, 1, "hex digits of a digest must be lowercase"},
		{[]string{"inspect", "sha256:887DE7C1B19C"}, 1, "hex digits of a digest must be lowercase"},
		{[]string{"inspect", "SHA256:887de7c1b19c"}, 1, "a digest's algorithm must be lowercase (sha256:)"},
		{[]string{"inspect", "sha512:" + strings.Repeat("ab", 64)}, 1, "only sha256 digests are stored, not sha512"},
		{[]string{"inspect", "md5:" + strings.Repeat("ab", 16)}, 1, "only sha256 digests are stored, not md5"},
		{[]string{"inspect", "000000000000"}, 1, "no image's or layer's digest starts with it"},
		{[]string{"rm", "sha256:" + strings.Repeat("0", 64)}, 1, "no image or layer has that digest"},
		{[]string{"inspect", "887de7c1b19c,"}, 1, `target "887de7c1b19c," has an empty element`},
		{[]string{"ls", ",,887de7c1b19c"}, 1, `target ",,887de7c1b19c" has an empty element`},
		{[]string{"verify", "73417749b3ad,,f300a35215b6"}, 1, `target "73417749b3ad,,f300a35215b6" has an empty element`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			r := run(t, root, c.args...)
			if r.code != c.code || !strings.Contains(r.stderr, c.stderr) || !strings.HasPrefix(r.stderr, "layerfs: ") || strings.Contains(r.stderr, "; ;") {
				t.Errorf("exit %d, stderr %q; want exit %d saying %q", r.code, r.stderr, c.code, c.stderr)
			}
			if c.code == 2 && !strings.Contains(r.stderr, "\nUsage: layerfs") {
				t.Errorf("usage error without the usage line: %q", r.stderr)
			}
		})
	}

	t.Run("inspect several", func(t *testing.T) {
		var got []struct {
			Name   string
			Layers []json.RawMessage
		}
		if err := json.Unmarshal([]byte(mustRun(t, root, "inspect", "sample", "other")), &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Name != "sample" || got[1].Name != "other" || len(got[0].Layers) != 3 || len(got[1].Layers) != 1 {
			t.Errorf("inspect sample other: %+v", got)
		}
	})

	t.Run("help", func(t *testing.T) {
		for _, args := range [][]string{{"help"}, {"help", "mounts"}, {"help", "completion", "bash"}, {"completion"}} {
			if out := mustRun(t, root, args...); !strings.Contains(out, "Usage:") {
				t.Errorf("%q printed %q; want the help", args, out)
			}
		}
	})

	t.Run("version", func(t *testing.T) {
		v1, v2 := mustRun(t, root, "--version"), mustRun(t, root, "version")
		if v1 != v2 || !strings.HasPrefix(v1, "layerfs ") || !strings.Contains(v1, "commit ") || !strings.Contains(v1, "go-fuse "+strings.TrimSpace(string(fuse))) {
			t.Errorf("--version %q, version %q; want both naming the commit and go-fuse %s", v1, v2, fuse)
		}
	})
}

// TestDockerNamesOfStoredNames: a command given a docker-style name
// finds the image stored under a short one (an OCI layout's ref name) as
// images lists it for that name, as docker takes both for one name; one
// that stands for several stored images so is refused, naming them.
func TestDockerNamesOfStoredNames(t *testing.T) {
	requireRoot(t)
	layer := func(content string) []testimage.Layer {
		return []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f", content)}}}
	}
	root := t.TempDir()
	mustRun(t, root, "import", writeFaultLayout(t,
		testimage.Image{Name: "x", Layers: layer("x")},
		testimage.Image{Name: "y", Layers: layer("y")},
		testimage.Image{Name: "library/y", Layers: layer("library/y")},
	))
	inspected := func(ref string) string {
		var got []struct{ Name string }
		if err := json.Unmarshal([]byte(mustRun(t, root, "inspect", ref)), &got); err != nil || len(got) != 1 {
			t.Fatalf("inspect %s: %v %+v", ref, err, got)
		}
		return got[0].Name
	}
	for _, ref := range []string{"x", "x:latest", "library/x", "docker.io/library/x", "docker.io/library/x:latest"} {
		listed := strings.Fields(mustRun(t, root, "images", "--format", "{{.Name}}", ref))
		if got := inspected(ref); !slices.Equal(listed, []string{"x"}) || got != "x" {
			t.Errorf("%s: inspect finds %q, images lists %q; want both x", ref, got, listed)
		}
	}
	if got := mustRun(t, root, "cat", "docker.io/library/x", "f"); got != "x" {
		t.Errorf("cat docker.io/library/x f: %q, want x's", got)
	}
	if got := inspected("y") + " " + inspected("library/y"); got != "y library/y" {
		t.Errorf("y and library/y find %q, each its own image as listed", got)
	}
	if r := run(t, root, "inspect", "docker.io/library/y"); r.code != 1 || !strings.Contains(r.stderr, `"docker.io/library/y" stands for several images, as docker reads names: library/y, y;`) {
		t.Errorf("inspect of a name of two stored images: exit %d, stderr %q; want it refused naming both", r.code, r.stderr)
	}
}

// TestMountsTellsTheStore mounts from two stores, FUSE and kernel
// mounts: mounts lists all of them whichever --root it is given, each
// with the store it reads, in the table and in JSON. One store's path
// has a comma, which the kernel escapes in a mount's options.
func TestMountsTellsTheStore(t *testing.T) {
	requireRoot(t)
	a, b := sampleStore(t), filepath.Join(t.TempDir(), "b,store")
	mustRun(t, b, "import", "../testdata/sample")
	want := map[string]string{
		mountDaemon(t, a, "sample"): a,
		mountDaemon(t, b, "sample"): b,
		kernelMount(t, b, "sample"): b,
	}
	for _, root := range []string{a, b} {
		stores := map[string]string{}
		for _, r := range tableRows(t, mustRun(t, root, "mounts", "--no-trunc"), "MOUNTPOINT", "TARGET", "STORE", "PID", "STATE", "TYPE") {
			stores[r[0]] = r[2]
		}
		var listed []struct{ Mountpoint, Store string }
		must(t, json.Unmarshal([]byte(mustRun(t, root, "mounts", "--format", "json")), &listed))
		for _, m := range listed {
			if stores[m.Mountpoint] != m.Store {
				t.Errorf("mounts --root %s: %s's store is %q in the table, %q in JSON", root, m.Mountpoint, stores[m.Mountpoint], m.Store)
			}
		}
		for mnt, store := range want {
			if stores[mnt] != store {
				t.Errorf("mounts --root %s lists %s of store %q, want %s", root, mnt, stores[mnt], store)
			}
		}
	}
}

// TestCLICompletion asks the shell completion for image names, digests,
// live mountpoints and platforms.
func TestCLICompletion(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	desc, m, _ := sampleLayout(t)
	mnt := mountDaemon(t, root, "sample")
	complete := func(args ...string) []string {
		out := mustRunWithin(t, time.Minute, root, append([]string{"__complete"}, args...)...)
		var words []string
		for _, l := range strings.Split(out, "\n") {
			if l != "" && !strings.HasPrefix(l, ":") {
				words = append(words, strings.SplitN(l, "\t", 2)[0])
			}
		}
		return words
	}
	has := func(what string, words []string, want ...string) {
		t.Helper()
		for _, w := range want {
			found := false
			for _, x := range words {
				found = found || x == w
			}
			if !found {
				t.Errorf("%s: %q lacks %q", what, words, w)
			}
		}
	}
	has("inspect", complete("inspect", ""), "sample", desc.Digest.String(), m.Layers[0].Digest.String())
	has("mount", complete("mount", ""), "sample")
	has("umount", complete("umount", ""), mnt)
	has("import --platform", complete("import", "--platform", ""), "linux/amd64", "linux/arm64")
	has("pull --platform", complete("pull", "--platform", ""), "linux/arm/v7")
	for _, shell := range []string{"bash", "zsh", "fish"} {
		if out := mustRun(t, root, "completion", shell); !strings.Contains(out, "__complete") {
			t.Errorf("completion %s does not ask layerfs to complete", shell)
		}
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	// A terminal has a size; progress bars are drawn to its width.
	if err := unix.IoctlSetWinsize(int(tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 160}); err != nil {
		t.Fatal(err)
	}
	return master, tty
}

// runOnTTY runs layerfs with stdout and stderr as picked, and returns
// what the terminal showed, stderr when not on it, and the exit code.
func runOnTTY(t *testing.T, root string, stdoutTTY, stderrTTY bool, args ...string) (shown, stderr string, code int) {
	t.Helper()
	master, tty := openPTY(t)
	cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...)
	var errb, outb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &outb, &errb
	if stdoutTTY {
		cmd.Stdout = tty
	}
	if stderrTTY {
		cmd.Stderr = tty
	}
	var screen bytes.Buffer
	copied := make(chan struct{})
	go func() { io.Copy(&screen, master); close(copied) }()
	err := cmd.Run()
	tty.Close()
	select {
	case <-copied:
	case <-time.After(10 * time.Second):
		t.Fatal("the terminal did not drain")
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return screen.String(), errb.String(), code
}

// TestCLIExportOutput exports to every kind of -o: a regular file is
// replaced whole, keeping its owner, group and mode, a FIFO and a character device made here (standing in
// for /dev/null) are written into and stay what they were, a symlink is
// followed and stays, "-" is stdout, and a directory, a dangling
// symlink, a socket, a terminal and a path inside the store are refused
// with nothing changed.
func TestCLIExportOutput(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	want := mustRun(t, root, "export", "sample")
	if _, err := tar.NewReader(strings.NewReader(want)).Next(); err != nil {
		t.Fatalf("export to a pipe is no tar: %v", err)
	}
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	entries := func() []string {
		es, _ := os.ReadDir(dir)
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		return names
	}
	mode := func(name string) os.FileMode {
		st, err := os.Lstat(p(name))
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode()
	}
	readFile := func(name string) string {
		b, err := os.ReadFile(p(name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	t.Run("regular file", func(t *testing.T) {
		if err := os.WriteFile(p("old.tar"), []byte("old"), 0o640); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p("old.tar"), 0o640)
		mustRun(t, root, "export", "sample", "-o", p("old.tar"))
		mustRun(t, root, "export", "sample", "-o", p("new.tar"))
		if readFile("old.tar") != want || readFile("new.tar") != want || mode("old.tar") != 0o640 {
			t.Errorf("old.tar (mode %v) or new.tar is not the export", mode("old.tar"))
		}
	})
	t.Run("owner", func(t *testing.T) {
		// Root replacing a user's file leaves it the user's; the rename
		// replaces the name, so a hardlink keeps the old content.
		must(t, os.WriteFile(p("users.tar"), []byte("old"), 0o600))
		must(t, os.Chown(p("users.tar"), 1234, 1234))
		must(t, os.Link(p("users.tar"), p("users-link.tar")))
		mustRun(t, root, "export", "sample", "-o", p("users.tar"))
		var st unix.Stat_t
		must(t, unix.Stat(p("users.tar"), &st))
		if st.Uid != 1234 || st.Gid != 1234 || st.Mode&0o7777 != 0o600 || readFile("users.tar") != want {
			t.Errorf("users.tar replaced as root: %d:%d mode %04o, the export: %v; want 1234:1234 0600", st.Uid, st.Gid, st.Mode&0o7777, readFile("users.tar") == want)
		}
		if readFile("users-link.tar") != "old" {
			t.Errorf("the old file's other name no longer has the old content")
		}
	})
	t.Run("fifo", func(t *testing.T) {
		if err := unix.Mkfifo(p("fifo"), 0o600); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		go func() {
			f, err := os.Open(p("fifo"))
			if err != nil {
				got <- err.Error()
				return
			}
			b, _ := io.ReadAll(f)
			f.Close()
			got <- string(b)
		}()
		mustRun(t, root, "export", "sample", "-o", p("fifo"))
		select {
		case b := <-got:
			if b != want {
				t.Errorf("the FIFO's reader got %d bytes, want the export's %d", len(b), len(want))
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the FIFO's reader got no end of file")
		}
		if mode("fifo")&os.ModeNamedPipe == 0 {
			t.Errorf("fifo is now %v", mode("fifo"))
		}
	})
	t.Run("character device", func(t *testing.T) {
		if err := unix.Mknod(p("null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
		mustRun(t, root, "export", "sample", "-o", p("null"))
		var st unix.Stat_t
		if err := unix.Lstat(p("null"), &st); err != nil {
			t.Fatal(err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
			t.Errorf("the device is now mode %o rdev %x", st.Mode, st.Rdev)
		}
	})
	t.Run("symlinks", func(t *testing.T) {
		os.WriteFile(p("target.tar"), []byte("old"), 0o644)
		os.Symlink("target.tar", p("link.tar"))
		mustRun(t, root, "export", "sample", "-o", p("link.tar"))
		if dest, _ := os.Readlink(p("link.tar")); dest != "target.tar" || readFile("target.tar") != want {
			t.Errorf("link now points at %q; the target has the export: %v", dest, readFile("target.tar") == want)
		}
		os.Symlink("null", p("link-to-null"))
		mustRun(t, root, "export", "sample", "-o", p("link-to-null"))
		if mode("link-to-null")&os.ModeSymlink == 0 || mode("null")&os.ModeCharDevice == 0 {
			t.Errorf("link-to-null is %v, null is %v", mode("link-to-null"), mode("null"))
		}
	})
	refused := []struct {
		name, want string
		make       func(string) error
	}{
		{"dir", "is a directory", func(n string) error { return os.Mkdir(n, 0o755) }},
		{"dangling", "symlink to nothing", func(n string) error { return os.Symlink("nowhere", n) }},
		{"sock", "socket", func(n string) error {
			l, err := net.Listen("unix", n)
			if err == nil {
				t.Cleanup(func() { l.Close() })
			}
			return err
		}},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			if err := c.make(p(c.name)); err != nil {
				t.Fatal(err)
			}
			before, m := entries(), mode(c.name)
			r := run(t, root, "export", "sample", "-o", p(c.name))
			if r.code != 1 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, stderr %q; want 1 saying %q", r.code, r.stderr, c.want)
			}
			if after := entries(); strings.Join(after, " ") != strings.Join(before, " ") || mode(c.name) != m {
				t.Errorf("the directory changed: %q, then %q", before, after)
			}
		})
	}
	// A file in a missing directory is named as given, not as the temp
	// file beside it.
	if r := run(t, root, "export", "sample", "-o", p("nodir/x.tar")); r.code != 1 || !strings.Contains(r.stderr, p("nodir/x.tar")+": no such file or directory") {
		t.Errorf("export into a missing directory: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Run("inside the store", func(t *testing.T) {
		// export and build never write over the store's own files, nor
		// beside them, also through a symlink to the store.
		index, err := os.ReadFile(filepath.Join(root, "index.json"))
		if err != nil {
			t.Fatal(err)
		}
		must(t, os.Symlink(root, p("store-link")))
		for _, args := range [][]string{
			{"export", "sample", "-o", filepath.Join(root, "index.json")},
			{"export", "sample", "-o", p("store-link/new.tar")},
			{"build", "sample", "-o", filepath.Join(root, "new.erofs")},
		} {
			r := run(t, root, args...)
			if r.code != 1 || !strings.Contains(r.stderr, args[3]+": inside the store at "+root) {
				t.Errorf("%q: exit %d, stderr %q; want exit 1 naming the output and the store", args, r.code, r.stderr)
			}
		}
		if got, _ := os.ReadFile(filepath.Join(root, "index.json")); string(got) != string(index) {
			t.Error("export -o the store's index.json changed it")
		}
		for _, name := range []string{"new.tar", "new.erofs"} {
			if _, err := os.Lstat(filepath.Join(root, name)); err == nil {
				t.Errorf("%s written into the store", name)
			}
		}
		os.Remove(p("store-link"))
	})
	t.Run("dash", func(t *testing.T) {
		// -o - is stdout, as for build, not a file named "-" in the
		// working directory.
		cmd := exec.Command(layerfsBin(t), "--root", root, "export", "sample", "-o", "-")
		cmd.Dir = dir
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil || out.String() != want {
			t.Errorf("export -o -: %v, %d bytes on stdout, want the export's %d; stderr %q", err, out.Len(), len(want), errb.String())
		}
		if _, err := os.Lstat(p("-")); err == nil {
			os.Remove(p("-"))
			t.Error(`export -o - wrote a file named "-"`)
		}
	})
	t.Run("terminal", func(t *testing.T) {
		for _, c := range []struct {
			to   string
			args []string
		}{
			{"stdout", []string{"export", "sample"}},
			{"stdout", []string{"export", "sample", "-o", "-"}},
			{"/dev/stdout", []string{"export", "sample", "-o", "/dev/stdout"}},
		} {
			shown, stderr, code := runOnTTY(t, root, true, false, c.args...)
			if code != 1 || !strings.Contains(stderr, "terminal") || !strings.Contains(stderr, "export to "+c.to+":") || shown != "" {
				t.Errorf("%q to a terminal: exit %d, stderr %q, %d bytes shown; want refused, naming the output", c.args, code, stderr, len(shown))
			}
		}
	})
	if strings.Contains(strings.Join(entries(), " "), ".tmp-") {
		t.Errorf("temp files left: %q", entries())
	}
}

// interruptAt starts layerfs with args, sends SIGINT after delay, and
// returns what it did and how long it ran; landed says the signal came
// while it ran, early that it came before the Go runtime had started main,
// and so killed it the default way, before it could do anything.
func interruptAt(t *testing.T, root string, delay time.Duration, args ...string) (r result, landed, early bool, ran time.Duration) {
	t.Helper()
	cmd := exec.Command(layerfsBin(t), append([]string{"--root", root}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(delay):
		landed = true
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err = <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("layerfs %s still runs 30s after SIGINT", strings.Join(args, " "))
		}
	}
	ran = time.Since(start)
	r = result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
		if ws := ee.Sys().(syscall.WaitStatus); ws.Signaled() && ws.Signal() == syscall.SIGINT && r.stderr == "" {
			return r, false, true, ran
		}
	} else if err != nil {
		t.Fatal(err)
	}
	if landed && r.code == 0 {
		landed = false // it had finished by the time the signal came
	}
	return r, landed, false, ran
}

// tmpFiles lists the store's tmp/.
func tmpFiles(t *testing.T, root string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(root, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// checkNoHalfLayers fails unless every layer `layers` lists is extracted,
// used by an image, or a whole blob in the store (a pull interrupted
// between a layer's download and its extraction keeps the download).
func checkNoHalfLayers(t *testing.T, root string) {
	t.Helper()
	var layers []struct {
		Digest         string
		CompressedSize int64
		Extracted      bool
		Images         []string
	}
	if err := json.Unmarshal([]byte(mustRun(t, root, "layers", "--format", "json")), &layers); err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if l.Extracted || len(l.Images) > 0 {
			continue
		}
		st, err := os.Stat(filepath.Join(root, "blobs", "sha256", strings.TrimPrefix(l.Digest, "sha256:")))
		if err != nil || st.Size() != l.CompressedSize || st.Size() == 0 {
			t.Errorf("layers lists %s (%d bytes), neither extracted, nor used by an image, nor a whole blob (%v)", l.Digest, l.CompressedSize, err)
		}
	}
}

// interruptRepeatedly interrupts layerfs args at n random points of a run
// that takes about took; check runs after every interrupt that landed,
// and reset after every run, so that each starts from the same store.
func interruptRepeatedly(t *testing.T, root string, n int, took time.Duration, args []string, check func(r result), reset func()) {
	w := newKillWindow(took)
	landed, finished, early := 0, 0, 0
	for landed < n && landed+finished+early < 8*n {
		delay := w.point()
		r, ok, before, ran := interruptAt(t, root, delay, args...)
		switch {
		case before:
			early++
			check(r)
		case !ok:
			if r.code != 0 {
				t.Fatalf("layerfs %s: exit %d\n%s", strings.Join(args, " "), r.code, r.stderr)
			}
			finished++
			w.ended(ran)
		default:
			landed++
			if r.code != 130 || !strings.HasSuffix(r.stderr, "layerfs: interrupted\n") || strings.Contains(r.stderr, "level=error") {
				t.Fatalf("interrupted after %v: exit %d, stderr %q; want 130 and \"interrupted\", and no error logged", delay, r.code, r.stderr)
			}
			check(r)
		}
		reset()
	}
	if landed < n {
		t.Fatalf("only %d of %d interrupts landed while the command ran", landed, n)
	}
	t.Logf("%s: %d interrupts (%d runs finished first, %d were killed before main ran)", args[0], landed, finished, early)
}

// TestCLIInterrupt sends SIGINT to import, to pull from a real registry
// and to export at random points: each exits 130 saying "interrupted",
// the store verifies, no half-extracted layer is listed, tmp/ is empty
// but for the partial downloads pull keeps and says it keeps, and an
// export's -o target is as it was, with nothing left beside it.
func TestCLIInterrupt(t *testing.T) {
	requireRoot(t)
	img := faultImage("cli/interrupt", 9, testimage.Gzip)
	layout := writeFaultLayout(t, img)

	t.Run("import", func(t *testing.T) {
		root := t.TempDir()
		took := timed(t, root, "import", layout)
		mustRun(t, root, "rm", "cli/interrupt")
		mustRun(t, root, "gc")
		interruptRepeatedly(t, root, 12, took, []string{"import", layout}, func(r result) {
			if tmp := tmpFiles(t, root); len(tmp) != 0 {
				t.Fatalf("tmp/ after an interrupted import: %q", tmp)
			}
			checkStore(t, root, "after an interrupted import")
			checkNoHalfLayers(t, root)
		}, emptyStore(t, root, "cli/interrupt"))
		mustRun(t, root, "import", layout)
		checkStore(t, root, "after the import completed")
	})

	t.Run("pull", func(t *testing.T) {
		reg := startRegistry(t, registryOptions{})
		ref := reg.host + "/cli/interrupt:1"
		push(t, layout, "cli/interrupt", ref)
		root := t.TempDir()
		took := timed(t, root, "pull", "--quiet", ref)
		mustRun(t, root, "rm", ref)
		mustRun(t, root, "gc")
		partial := regexp.MustCompile(`^partial-[0-9a-f]{64}(\.lock)?$`)
		var keptTimes int
		interruptRepeatedly(t, root, 12, took, []string{"pull", "--quiet", ref}, func(r result) {
			var kept bool
			for _, name := range tmpFiles(t, root) {
				if !partial.MatchString(name) {
					t.Fatalf("tmp/ after an interrupted pull holds %s", name)
				}
				if st, err := os.Stat(filepath.Join(root, "tmp", name)); err == nil && st.Size() > 0 && !strings.HasSuffix(name, ".lock") {
					kept = true
				}
			}
			if kept && !strings.Contains(r.stderr, `"layerfs gc" frees them`) {
				t.Errorf("partial downloads kept without saying so: %q", r.stderr)
			}
			if kept {
				keptTimes++
			}
			checkStore(t, root, "after an interrupted pull")
			checkNoHalfLayers(t, root)
		}, emptyStore(t, root, ref))
		t.Logf("pull kept partial downloads after %d interrupts", keptTimes)
		mustRun(t, root, "pull", "--quiet", ref)
		checkStore(t, root, "after the pull completed")
	})

	t.Run("export", func(t *testing.T) {
		root, _ := importedDebian(t)
		dir := t.TempDir()
		target := filepath.Join(dir, "rootfs.tar")
		const mine = "the user's own file\n"
		writeMine := func() { must(t, os.WriteFile(target, []byte(mine), 0o644)) }
		writeMine()
		args := []string{"export", debianImage(t).Ref, "-o", target}
		timed(t, root, args...) // the first run reads the store cold
		took := timed(t, root, args...)
		writeMine()
		interruptRepeatedly(t, root, 12, took, args, func(r result) {
			if b, err := os.ReadFile(target); err != nil || string(b) != mine {
				t.Fatalf("the -o target after an interrupted export: %q, %v", b, err)
			}
			if es, err := os.ReadDir(dir); err != nil || len(es) != 1 {
				t.Fatalf("an interrupted export left %v beside its target (%v)", es, err)
			}
		}, writeMine)
	})
}

// emptyStore returns a reset for interruptRepeatedly: image name is
// removed and gc run, so that the next run starts from an empty store.
func emptyStore(t *testing.T, root, name string) func() {
	return func() {
		run(t, root, "rm", name)
		mustRun(t, root, "gc")
	}
}

// checkProgress runs layerfs with args on a terminal and checks that
// the terminal showed the progress of each of layers, with a count of
// the entries extracted.
func checkProgress(t *testing.T, layers []ocispec.Descriptor, root string, args ...string) {
	t.Helper()
	shown, _, code := runOnTTY(t, root, false, true, args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, shown)
	}
	for _, l := range layers {
		if !strings.Contains(shown, l.Digest.Encoded()[:12]) {
			t.Errorf("no progress of layer %s on the terminal:\n%s", l.Digest, shown)
		}
	}
	if !strings.Contains(shown, "entries") {
		t.Errorf("no entry count on the terminal:\n%s", shown)
	}
}

// TestCLIProgressAndSummaries checks import's progress bars on a
// terminal, verify's summary against the store's own files and its
// naming of the images a damaged object affects, and what serve
// --virtiofs says at the default log level.
func TestCLIProgressAndSummaries(t *testing.T) {
	requireRoot(t)
	_, m, _ := sampleLayout(t)

	t.Run("import progress", func(t *testing.T) {
		checkProgress(t, m.Layers, t.TempDir(), "import", "../testdata/sample")
		if _, stderr, _ := runOnTTY(t, t.TempDir(), true, false, "import", "../testdata/sample"); stderr != "" {
			t.Errorf("import with stderr not a terminal printed %q", stderr)
		}
	})

	t.Run("pull progress", func(t *testing.T) {
		reg := startRegistry(t, registryOptions{})
		ref := reg.host + "/cli/progress:1"
		push(t, "../testdata/sample", "sample", ref)
		checkProgress(t, m.Layers, t.TempDir(), "pull", ref)
	})

	t.Run("verify", func(t *testing.T) {
		root := sampleStore(t)
		objects, _ := filepath.Glob(filepath.Join(root, "objects", "sha256", "*", "*"))
		want := fmt.Sprintf("ok: %d blobs, %d objects, %d indexes\n", 2+len(m.Layers), len(objects), len(m.Layers))
		if out := mustRun(t, root, "verify"); out != want {
			t.Errorf("verify: %q, want %q", out, want)
		}
		other := writeFaultLayout(t, testimage.Image{Name: "other", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("f", "other's own")}}}})
		mustRun(t, root, "import", other)
		// Damage an object of the sample's only.
		hex := digest.FromString("other's own").Encoded()
		var victim string
		for _, o := range objects {
			if filepath.Base(o) != hex {
				victim = o
				break
			}
		}
		if err := os.WriteFile(victim, []byte("damaged"), 0o644); err != nil {
			t.Fatal(err)
		}
		r := run(t, root, "verify")
		if r.code != 1 || !strings.Contains(r.stderr, filepath.Base(victim)) || !strings.Contains(r.stderr, "image sample is affected") || strings.Contains(r.stderr, "image other is affected") {
			t.Errorf("verify of a damaged object: exit %d\n%s\nwant 1, naming the object and the sample image only", r.code, r.stderr)
		}
	})

	// Counts are plain integers, as the help gives them, however many:
	// a script reads the line with one pattern.
	t.Run("verify counts", func(t *testing.T) {
		var entries []testimage.Entry
		for i := range 1200 {
			entries = append(entries, testimage.File(fmt.Sprintf("f%d", i), fmt.Sprintf("file %d\n", i)))
		}
		root := t.TempDir()
		mustRun(t, root, "import", writeFaultLayout(t, testimage.Image{Name: "many", Layers: []testimage.Layer{{Entries: entries}}}))
		objects, _ := filepath.Glob(filepath.Join(root, "objects", "sha256", "*", "*"))
		if len(objects) < 1000 {
			t.Fatalf("%d objects, want 1000 or more", len(objects))
		}
		if out, want := mustRun(t, root, "verify"), fmt.Sprintf("ok: 3 blobs, %d objects, 1 indexes\n", len(objects)); out != want {
			t.Errorf("verify: %q, want %q", out, want)
		}
	})

	// A stack of layers is one TARGET, digests joined by commas, as
	// every other command takes it: its layers' blobs, indexes and the
	// objects their links/ directories hold.
	t.Run("verify a stack", func(t *testing.T) {
		root := sampleStore(t)
		objects := map[string]bool{}
		var stack []string
		for _, l := range m.Layers {
			links, err := os.ReadDir(filepath.Join(root, "layers", "sha256", l.Digest.Encoded(), "links"))
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range links {
				objects[e.Name()] = true
			}
			stack = append(stack, l.Digest.Encoded()[:12])
		}
		want := fmt.Sprintf("ok: %d blobs, %d objects, %d indexes\n", len(m.Layers), len(objects), len(m.Layers))
		if out := mustRun(t, root, "verify", strings.Join(stack, ",")); out != want {
			t.Errorf("verify %s: %q, want %q", strings.Join(stack, ","), out, want)
		}
	})

	t.Run("serve says where", func(t *testing.T) {
		root := sampleStore(t)
		// Given relative, the socket is named whole, for a qemu started
		// elsewhere; qemu reads a doubled comma as one.
		dir := t.TempDir()
		sock := filepath.Join(dir, "fs,1.sock")
		cmd := exec.Command(layerfsBin(t), "--root", root, "serve", "--virtiofs", filepath.Base(sock), "--tag", "sampletag", "sample")
		cmd.Dir = dir
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
			}
		})
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
			done <- cmd.Wait()
		}()
		var listening, qemu bool
		deadline := time.After(20 * time.Second)
		for !(listening && qemu) {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("serve exited before saying where it listens")
				}
				listening = listening || (strings.Contains(l, "serving") && strings.Contains(l, sock))
				qemu = qemu || (strings.Contains(l, "path="+strings.ReplaceAll(sock, ",", ",,")+" ") && strings.Contains(l, "vhost-user-fs-pci,chardev=layerfs,tag=sampletag"))
			case <-deadline:
				t.Fatal("serve said nothing of where it listens within 20s")
			}
		}
	})
}

// TestCLINamesEscaped imports an image whose name and paths hold a
// newline, a tab and a backslash: line-oriented output quotes them, so
// each thing is still one line, and JSON keeps them exact.
func TestCLINamesEscaped(t *testing.T) {
	requireRoot(t)
	name := "evil\nname"
	paths := []string{"new\nline", "tab\there", `back\slash`}
	lower := testimage.Layer{Entries: []testimage.Entry{testimage.File("gone\nfile", "x"), testimage.File("plain", "y")}}
	upper := testimage.Layer{Entries: []testimage.Entry{testimage.Whiteout("", "gone\nfile")}}
	for _, p := range paths {
		upper.Entries = append(upper.Entries, testimage.File(p, p))
	}
	layout := writeFaultLayout(t,
		testimage.Image{Name: "base", Layers: []testimage.Layer{lower}},
		testimage.Image{Name: name, Layers: []testimage.Layer{lower, upper}})
	root := t.TempDir()
	out := mustRun(t, root, "import", layout)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[1], strconv.Quote(name)+" sha256:") {
		t.Errorf("import printed %q; want two lines, the second for %s", out, strconv.Quote(name))
	}
	if rows := tableRows(t, mustRun(t, root, "images"), "NAME", "DIGEST", "PLATFORM", "CREATED", "LAYERS", "SIZE"); len(rows) != 2 || rows[1][0] != strconv.Quote(name) {
		t.Errorf("images rows %q", rows)
	}
	var images []struct{ Name string }
	if err := json.Unmarshal([]byte(mustRun(t, root, "images", "--format", "json")), &images); err != nil || len(images) != 2 || images[1].Name != name {
		t.Errorf("images json %+v (%v); want the name exact", images, err)
	}
	imgDigest := strings.TrimSpace(strings.Split(lines[1], " ")[1])
	diff := mustRun(t, root, "diff", "base", imgDigest)
	want := []string{"D " + strconv.Quote("gone\nfile")}
	for _, p := range paths {
		want = append(want, "A "+strconv.Quote(p))
	}
	got := strings.Split(strings.TrimSuffix(diff, "\n"), "\n")
	if len(got) != len(want) {
		t.Fatalf("diff printed %q; want %q", got, want)
	}
	for _, w := range want {
		if !strings.Contains(diff, w+"\n") {
			t.Errorf("diff printed %q; want a line %q", diff, w)
		}
	}
	r := run(t, root, "which", imgDigest, "gone\nfile")
	if r.code != 3 || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, strconv.Quote("/gone\nfile")) {
		t.Errorf("which of the whited-out path: exit %d, stderr %q; want 3 and one line quoting the path", r.code, r.stderr)
	}
	if out := mustRun(t, root, "which", imgDigest, "plain"); strings.Count(out, "\n") != 1 {
		t.Errorf("which plain: %q", out)
	}
}

// TestDemo runs make demo's script, as the README's first command does:
// it must exit 0, show the sample's merged view, one layer's whiteout
// markers, the layer a file came from, the EROFS disk's digest and the
// kernel mount, and leave nothing mounted or on disk behind.
func TestDemo(t *testing.T) {
	requireRoot(t)
	tmp := t.TempDir()
	cmd := exec.Command("bash", "scripts/demo.sh", layerfsBin(t))
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	_, m, _ := sampleLayout(t)
	for _, want := range []string{
		"app.log",                          // the merged view's /var/log
		".wh.motd",                         // the second layer's marker
		m.Layers[1].Digest.String() + "\n", // which: /etc/os-release
		"sample.erofs: sha256:",            // build -v
		"kernel\n",                         // mounts lists the kernel mount
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	left, err := mountsUnder(tmp)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Errorf("demo left mounts: %v", left)
	}
	if entries, err := os.ReadDir(tmp); err != nil || len(entries) > 0 {
		t.Errorf("demo left %d entries in its temp directory (%v)", len(entries), err)
	}
}

// TestNotFoundInAnEmptyStoreSaysWhere looks an image up in a directory
// that holds no store, as a mistyped --root or the other user's default
// store gives: the error names that directory, where a store with images
// answers with the nearest name instead.
func TestNotFoundInAnEmptyStoreSaysWhere(t *testing.T) {
	requireRoot(t)
	empty := filepath.Join(t.TempDir(), "typo")
	for _, args := range [][]string{{"ls", "sample"}, {"cat", "sample", "/etc/hostname"}, {"inspect", "sample"}, {"rm", "sample"}} {
		r := run(t, empty, args...)
		if want := "the store at " + empty + " holds no images"; r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, want) {
			t.Errorf("layerfs --root %s %q: exit %d, stdout %q, stderr %q; want exit 1 and %q", empty, args, r.code, r.stdout, r.stderr, want)
		}
	}
	if _, err := os.Stat(empty); !os.IsNotExist(err) {
		t.Errorf("the lookups made %s: %v", empty, err)
	}
	root := sampleStore(t)
	if r := run(t, root, "ls", "sampel"); r.code != 1 || strings.Contains(r.stderr, "holds no images") || !strings.Contains(r.stderr, `did you mean "sample"?`) {
		t.Errorf("layerfs ls sampel in the sample's store: exit %d, stderr %q", r.code, r.stderr)
	}
}

// TestInspectFormat prints the sample through inspect --format templates,
// as docker inspect --format does, and checks each line against the
// sample layout's own manifest and config; the JSON stays the default,
// and a template that names no field is a usage error naming them.
func TestInspectFormat(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	desc, m, c := sampleLayout(t)
	var layers []string
	for _, l := range m.Layers {
		layers = append(layers, l.Digest.String())
	}
	for format, want := range map[string]string{
		"{{.Name}} {{.Digest}} {{len .Layers}}":   fmt.Sprintf("sample %s %d\n", desc.Digest, len(m.Layers)),
		"{{.Config.OS}}/{{.Config.Architecture}}": c.OS + "/" + c.Architecture + "\n",
		"{{range .Layers}}{{.Digest}} {{end}}":    strings.Join(layers, " ") + " \n",
		"{{range .Manifest.Layers}}{{.Size}} {{end}}": func() string {
			var b strings.Builder
			for _, l := range m.Layers {
				fmt.Fprintf(&b, "%d ", l.Size)
			}
			return b.String() + "\n"
		}(),
	} {
		if got := mustRun(t, root, "inspect", "--format", format, "sample"); got != want {
			t.Errorf("inspect --format %q: %q, want %q", format, got, want)
		}
	}
	if got := mustRun(t, root, "inspect", "--format", "{{.Digest}}", "sample", desc.Digest.String()); got != desc.Digest.String()+"\n"+desc.Digest.String()+"\n" {
		t.Errorf("inspect --format of two targets: %q", got)
	}
	var objects []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, root, "inspect", "sample")), &objects); err != nil || len(objects) != 1 {
		t.Errorf("inspect without --format is no JSON array of one object: %v", err)
	}
	// Every name of the image, whichever target named it, as docker
	// inspect's RepoTags.
	mustRun(t, root, "tag", "sample", "again")
	for _, target := range []string{"sample", "again", desc.Digest.String()} {
		if got := mustRun(t, root, "inspect", "--format", "{{.Names}}", target); got != "[again sample]\n" {
			t.Errorf("inspect --format {{.Names}} %s: %q, want both names", target, got)
		}
	}
	for _, bad := range []string{"{{.Nope}}", "{{.Name", "table", ""} {
		if r := run(t, root, "inspect", "--format", bad, "sample"); r.code != 2 || r.stdout != "" || !strings.Contains(r.stderr, "--format") {
			t.Errorf("inspect --format %q: exit %d, stdout %q, stderr %q; want exit 2 and nothing on stdout", bad, r.code, r.stdout, r.stderr)
		}
	}
}

// TestRmCarriesOn removes several arguments, some of which fail: as
// docker rmi, each is removed on its own, what was removed is printed,
// every failure is reported, and the exit code is 1.
func TestRmCarriesOn(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	mustRun(t, root, "tag", "sample", "a", "b")
	r := run(t, root, "rm", "a", "nope", "b", "sampel")
	if r.code != 1 || r.stdout != "a\nb\n" {
		t.Errorf("rm a nope b sampel: exit %d, stdout %q; want exit 1 and a, b removed", r.code, r.stdout)
	}
	if !strings.HasPrefix(r.stderr, "layerfs: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, `"nope"`) || !strings.Contains(r.stderr, `did you mean "sample"?`) {
		t.Errorf("stderr %q; want one error line naming nope and sampel", r.stderr)
	}
	if got := mustRun(t, root, "images", "--format", "{{.Name}}"); got != "sample\n" {
		t.Errorf("images after rm: %q, want only sample", got)
	}
}

// TestInspectCarriesOn: inspect of TARGETs some of which are not there
// prints those that are, as docker inspect does, then reports the others
// on one error line and exits 1.
func TestInspectCarriesOn(t *testing.T) {
	root := sampleStore(t)
	r := run(t, root, "inspect", "nope", "sample", "sampel")
	var got []struct{ Name string }
	if err := json.Unmarshal([]byte(r.stdout), &got); r.code != 1 || err != nil || len(got) != 1 || got[0].Name != "sample" {
		t.Errorf("inspect nope sample sampel: exit %d, stdout %q (%v); want exit 1 and sample's object alone", r.code, r.stdout, err)
	}
	if !strings.HasPrefix(r.stderr, "layerfs: ") || strings.Count(r.stderr, "\n") != 1 || !strings.Contains(r.stderr, `"nope"`) || !strings.Contains(r.stderr, `did you mean "sample"?`) {
		t.Errorf("stderr %q; want one error line naming nope and sampel", r.stderr)
	}
	if r := run(t, root, "inspect", "nope"); r.code != 1 || r.stdout != "" {
		t.Errorf("inspect of nothing there: exit %d, stdout %q; want exit 1 and nothing, not an empty array", r.code, r.stdout)
	}
}
