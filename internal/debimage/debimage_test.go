package debimage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/oracle"
	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

// requireIntegration ends, through testimage.Unavailable, a test that
// needs root and the build tools on a machine without them.
func requireIntegration(t *testing.T, tools ...string) {
	t.Helper()
	testimage.RequireRoot(t, "building the Debian image")
	for _, tool := range tools {
		if _, err := lookTool(tool); err != nil {
			testimage.Unavailable(t, "%v", err)
		}
	}
}

func command(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestBuild(t *testing.T) {
	requireIntegration(t, "debootstrap", "umoci", "skopeo", "setfattr", "tar")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cache := t.TempDir()

	start := time.Now()
	img, err := Build(ctx, cache)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built in %v", time.Since(start).Round(time.Second))
	var total int64
	for i, l := range img.Layers {
		t.Logf("layer %d: %s %s, %d bytes (%.1f MB)", i+1, l.Digest, l.MediaType, l.Size, float64(l.Size)/1e6)
		total += l.Size
	}
	t.Logf("compressed total %.1f MB", float64(total)/1e6)

	start = time.Now()
	again, err := Build(ctx, cache)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cached Build took %v", took)
	}
	if again.Layout != img.Layout || again.BigFileSHA256 != img.BigFileSHA256 || len(again.Layers) != 3 {
		t.Errorf("cached Build returned %+v, first %+v", again, img)
	}
	left, err := filepath.Glob(filepath.Join(cache, "*.tmp-*"))
	if err != nil || len(left) > 0 {
		t.Errorf("temp build dirs left: %q %v", left, err)
	}

	t.Run("tools", func(t *testing.T) {
		if out := command(t, "umoci", "ls", "--layout", img.Layout); !slices.Contains(strings.Fields(out), Ref) {
			t.Errorf("umoci ls: %q lacks %q", out, Ref)
		}
		for _, ref := range []string{"oci:" + img.Layout + ":" + img.Ref, "docker-archive:" + img.Archive} {
			var info struct{ Layers []string }
			if err := json.Unmarshal([]byte(command(t, "skopeo", "inspect", ref)), &info); err != nil {
				t.Fatal(err)
			}
			if len(info.Layers) != 3 {
				t.Errorf("skopeo inspect %s: %d layers, want 3", ref, len(info.Layers))
			}
		}
		out := command(t, "tar", "-tf", img.Archive)
		if !strings.Contains(out, "manifest.json") {
			t.Errorf("docker archive has no manifest.json: %q", out)
		}
		for _, l := range img.Layers {
			if l.MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
				t.Errorf("layer %s: media type %s, want gzip", l.Digest, l.MediaType)
			}
			sum := strings.Fields(command(t, "sha256sum", l.Path))[0]
			if "sha256:"+sum != l.Digest {
				t.Errorf("blob %s hashes to %s", l.Path, sum)
			}
		}
	})

	t.Run("merged", func(t *testing.T) {
		testMerged(t, img)
	})
}

// testMerged unpacks the layers with the oracle, mounts them with overlayfs
// and checks what the recipe did, then compares the whole view with the
// tree umoci packed.
func testMerged(t *testing.T, img *Image) {
	var dirs []string
	for i, l := range img.Layers {
		dst := filepath.Join(t.TempDir(), fmt.Sprintf("layer%d", i+1))
		start := time.Now()
		if err := oracle.UnpackLayer(l.Path, dst, dirs); err != nil {
			t.Fatal(err)
		}
		t.Logf("unpacked layer %d in %v", i+1, time.Since(start).Round(time.Millisecond))
		dirs = append(dirs, dst)
	}
	target := t.TempDir()
	unmount, err := oracle.Mount(dirs, target)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := unmount(); err != nil {
			t.Error(err)
		}
	}()
	start := time.Now()
	tree, err := oracle.Walk(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("walked %d entries in %v", len(tree), time.Since(start).Round(time.Millisecond))

	if len(img.Removed) < 100 {
		t.Errorf("only %d removed paths recorded", len(img.Removed))
	}
	for _, p := range img.Removed {
		if e, ok := tree[p]; ok {
			t.Errorf("%s: removed, but shows as %s", p, e.Type)
		}
	}
	get := func(p string) oracle.Entry {
		t.Helper()
		e, ok := tree[p]
		if !ok {
			t.Fatalf("%s: missing", p)
		}
		return e
	}
	if e := get(img.BigFile); e.Size != bigFileSize || e.SHA256 != img.BigFileSHA256 {
		t.Errorf("%s: size %d sha256 %s, want %d %s", img.BigFile, e.Size, e.SHA256, bigFileSize, img.BigFileSHA256)
	}
	if e := get(dirToFile); e.Type != oracle.TypeReg {
		t.Errorf("%s: %s, want a file", dirToFile, e.Type)
	}
	if e := get(fileToDir); e.Type != oracle.TypeDir {
		t.Errorf("%s: %s, want a directory", fileToDir, e.Type)
	}
	kept := slices.Sorted(slices.Values(hardlinks[:3]))
	for _, p := range kept {
		if e := get(p); e.HardlinkID != kept[0] || e.Nlink != 3 {
			t.Errorf("%s: hardlink %q nlink %d, want %q nlink 3", p, e.HardlinkID, e.Nlink, kept[0])
		}
	}
	if e := get(capFile); e.Xattrs["security.capability"] != string(capBytes(t)) {
		t.Errorf("%s: xattrs %q", capFile, e.Xattrs)
	}
	if e := get(xattrFile); e.Xattrs["user.layerfs"] != "layer2" {
		t.Errorf("%s: xattrs %q", xattrFile, e.Xattrs)
	}
	if e := get(linkDir); e.Xattrs["user.layerfs"] != "a directory" {
		t.Errorf("%s: xattrs %q", linkDir, e.Xattrs)
	}
	if e := get(setuidFile); e.Mode != 0o4755 {
		t.Errorf("%s: mode %04o", setuidFile, e.Mode)
	}
	if e := get(setgidFile); e.Mode != 0o2755 || e.GID != 50 {
		t.Errorf("%s: mode %04o gid %d", setgidFile, e.Mode, e.GID)
	}
	if e := get(stickyDir); e.Mode != 0o1777 || e.Type != oracle.TypeDir {
		t.Errorf("%s: %s mode %04o", stickyDir, e.Type, e.Mode)
	}
	if e := get(fifoFile); e.Type != oracle.TypeFIFO {
		t.Errorf("%s: %s", fifoFile, e.Type)
	}
	if e := get(charDev); e.Type != oracle.TypeChar || e.DevMajor != 1 || e.DevMinor != 3 {
		t.Errorf("%s: %+v", charDev, e)
	}
	if e := get(chownedDir); e.Mode != 0o750 || e.UID != 1234 || e.GID != 1234 {
		t.Errorf("%s: mode %04o owner %d:%d", chownedDir, e.Mode, e.UID, e.GID)
	}
	var man []string
	for p := range tree {
		if strings.HasPrefix(p, recreatedDir+"/") {
			man = append(man, p)
		}
	}
	slices.Sort(man)
	if want := []string{filepath.Dir(recreated), recreated}; !slices.Equal(man, want) {
		t.Errorf("%s holds %q, want only %q", recreatedDir, man, want)
	}

	// umoci packed the layers from img.Rootfs, so the merged view must be
	// exactly that tree, but for mtimes, which umoci's tar headers round to
	// the second.
	want, err := oracle.Walk(img.Rootfs)
	if err != nil {
		t.Fatal(err)
	}
	for p, e := range want {
		e.Mtime = oracle.Timespec{Sec: time.Unix(e.Mtime.Sec, e.Mtime.Nsec).Round(time.Second).Unix()}
		want[p] = e
	}
	if d := oracle.Diff(want, tree); len(d) > 0 {
		if len(d) > 400 {
			d = append(d[:400], fmt.Sprintf("... and %d more", len(d)-400))
		}
		t.Errorf("merged view differs from the packed rootfs:\n%s", strings.Join(d, "\n"))
	}
}

// capBytes decodes capNetRawV2, the value setfattr writes.
func capBytes(t *testing.T) []byte {
	var b []byte
	if _, err := fmt.Sscanf(capNetRawV2, "0x%x", &b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestCapabilityFallback checks that the setfattr fallback writes the same
// bytes as setcap.
func TestCapabilityFallback(t *testing.T) {
	requireIntegration(t, "setcap")
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	setcap, _ := lookTool("setcap")
	command(t, setcap, "cap_net_raw+ep", f)
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(f, "security.capability", buf)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := buf[:n], capBytes(t); string(got) != string(want) {
		t.Errorf("setcap wrote %x, the fallback writes %x", got, want)
	}
}

func TestBuildCancelledLeavesNothing(t *testing.T) {
	requireIntegration(t)
	cache := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Build(ctx, cache); err == nil {
		t.Fatal("a cancelled build succeeded")
	} else if !errors.Is(err, context.Canceled) {
		t.Logf("error (not context.Canceled, e.g. no bookworm source): %v", err)
	}
	ents, err := os.ReadDir(cache)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() != buildName+".lock" {
			t.Errorf("left %s behind", e.Name())
		}
	}
}

func TestBuildRejectsColon(t *testing.T) {
	if _, err := Build(context.Background(), filepath.Join(t.TempDir(), "a:b")); err == nil {
		t.Error("a cache dir with a colon was accepted")
	}
}

func TestLoadRejectsMissingFiles(t *testing.T) {
	dir := t.TempDir()
	if err := writeStamp(dir, &Image{Layout: "oci", Archive: "a.tar", Rootfs: "rootfs"}); err != nil {
		t.Fatal(err)
	}
	if _, err := load(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("load of a pruned build: %v, want not-exist", err)
	}
}
