package debimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

// What the recipe puts where, for tests that check the result.
const (
	bigFile     = "opt/big.bin"
	bigFileSize = 64 << 20
	// bigFileSeed makes the big file the same bytes on every build, so
	// its digest can be checked and compared across machines.
	bigFileSeed = "layerfs debimage big.bin v1"

	dirToFile    = "usr/share/info"
	fileToDir    = "etc/motd"
	capFile      = "opt/netraw"
	setuidFile   = "opt/suid"
	setgidFile   = "opt/sgid"
	stickyDir    = "opt/sticky"
	fifoFile     = "opt/fifo"
	charDev      = "opt/null"
	xattrFile    = "opt/xattr.txt"
	linkDir      = "opt/links"
	recreatedDir = "usr/share/man"
	recreated    = "usr/share/man/man1/layerfs.1"
	chownedDir   = "home"
)

// hardlinks are the names of one inode that layer 2 adds; layer 3 removes
// the last, so the others must show one link fewer.
var hardlinks = []string{"opt/links/a", "opt/links/b", "opt/links-elsewhere/d", "opt/links/c"}

// capNetRawV2 is the security.capability value of "cap_net_raw+ep"
// (VFS_CAP_REVISION_2, effective, CAP_NET_RAW = bit 13 permitted), written
// with setfattr where setcap is not installed.
const capNetRawV2 = "0x0100000200200000000000000000000000000000"

// build makes the image in dir and returns its description with paths
// relative to dir.
func build(ctx context.Context, dir string) (*Image, error) {
	mirror, err := findMirror("/etc/apt/sources.list.d", "/etc/apt/sources.list")
	if err != nil {
		return nil, err
	}
	tools := map[string]string{}
	for _, t := range []string{"debootstrap", "umoci", "skopeo", "setfattr", "cp"} {
		p, err := lookTool(t)
		if err != nil {
			return nil, err
		}
		tools[t] = p
	}

	debootstrapped := filepath.Join(dir, "debootstrap")
	err = step("debootstrap", logrus.Fields{"mirror": mirror}, func() error {
		err := run(ctx, tools["debootstrap"], "--variant=minbase", suite, debootstrapped, mirror)
		// Its second stage mounts proc and sys in the target; never leave
		// them behind, whether it succeeded or not.
		if uerr := unmountUnder(debootstrapped); uerr != nil {
			err = errors.Join(err, uerr)
		}
		if err != nil {
			return fmt.Errorf("%w%s", err, debootstrapLog(debootstrapped))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}

	layout := filepath.Join(dir, "oci")
	bundle := filepath.Join(dir, "bundle")
	image := layout + ":" + Ref
	rootfs := filepath.Join(bundle, "rootfs")
	err = step("umoci unpack", nil, func() error {
		for _, args := range [][]string{
			{"init", "--layout", layout},
			{"new", "--image", image},
			{"unpack", "--image", image, bundle},
		} {
			if err := run(ctx, tools["umoci"], args...); err != nil {
				return err
			}
		}
		if err := run(ctx, tools["cp"], "-a", debootstrapped+"/.", rootfs); err != nil {
			return err
		}
		return removeTree(debootstrapped)
	})
	if err != nil {
		return nil, err
	}

	c := &changes{ctx: ctx, root: rootfs, removed: map[string]bool{}}
	layers := []struct {
		name  string
		apply func() error
	}{
		{"debootstrap --variant=minbase " + suite, func() error { return nil }},
		{"layerfs test changes, layer 2", c.layer2},
		{"layerfs test changes, layer 3", c.layer3},
	}
	for i, l := range layers {
		err := step(fmt.Sprintf("layer %d", i+1), nil, func() error {
			if err := l.apply(); err != nil {
				return err
			}
			return run(ctx, tools["umoci"], "repack", "--refresh-bundle",
				"--history.created_by", l.name, "--image", image, bundle)
		})
		if err != nil {
			return nil, err
		}
	}
	if err := run(ctx, tools["umoci"], "gc", "--layout", layout); err != nil {
		return nil, err
	}

	archive := filepath.Join(dir, "debian.tar")
	err = step("docker archive", nil, func() error {
		return run(ctx, tools["skopeo"], "copy", "--insecure-policy", "--quiet",
			"oci:"+image, "docker-archive:"+archive+":"+ArchiveRef)
	})
	if err != nil {
		return nil, err
	}

	blobs, err := readLayers(layout, Ref)
	if err != nil {
		return nil, err
	}
	if len(blobs) != len(layers) {
		return nil, fmt.Errorf("image %s has %d layers, want %d", image, len(blobs), len(layers))
	}
	var total int64
	for i, b := range blobs {
		logger.WithFields(logrus.Fields{"layer": i + 1, "digest": b.Digest, "bytes": b.Size}).Info("layer")
		total += b.Size
		if blobs[i].Path, err = filepath.Rel(dir, b.Path); err != nil {
			return nil, err
		}
	}
	logger.WithField("bytes", total).Info("compressed image size")

	rel := func(p string) string { r, _ := filepath.Rel(dir, p); return r }
	return &Image{
		Layout:        rel(layout),
		Ref:           Ref,
		Archive:       rel(archive),
		ArchiveRef:    ArchiveRef,
		Layers:        blobs,
		Rootfs:        rel(rootfs),
		BigFile:       bigFile,
		BigFileSHA256: c.bigSum,
		Removed:       c.gone(),
	}, nil
}

func step(name string, fields logrus.Fields, fn func() error) error {
	l := logger.WithFields(fields).WithField("step", name)
	l.Info("start")
	start := time.Now()
	if err := fn(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	l.WithField("took", time.Since(start).Round(100*time.Millisecond)).Info("done")
	return nil
}

func debootstrapLog(target string) string {
	b, err := os.ReadFile(filepath.Join(target, "debootstrap", "debootstrap.log"))
	if err != nil {
		return ""
	}
	return "\ndebootstrap.log ends:\n" + tail(string(b), 4000)
}

// changes edits the bundle's rootfs between repacks, remembering what it
// deletes so that a test can check that none of it shows.
type changes struct {
	ctx     context.Context
	root    string
	removed map[string]bool
	bigSum  string
}

func (c *changes) path(rel string) string { return filepath.Join(c.root, rel) }

// remove deletes rel and everything under it.
func (c *changes) remove(rel string) error {
	err := filepath.WalkDir(c.path(rel), func(p string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, err := filepath.Rel(c.root, p)
		if err != nil {
			return err
		}
		c.removed[filepath.ToSlash(r)] = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove %s: %w", rel, err)
	}
	return os.RemoveAll(c.path(rel))
}

// gone returns the removed paths that the final tree lacks; some, like the
// recreated man directory, came back in a later layer.
func (c *changes) gone() []string {
	var out []string
	for p := range c.removed {
		if _, err := os.Lstat(c.path(p)); err != nil {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func (c *changes) write(rel, content string, mode uint32) error {
	if err := os.MkdirAll(filepath.Dir(c.path(rel)), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(c.path(rel), []byte(content), 0o600); err != nil {
		return err
	}
	return unix.Chmod(c.path(rel), mode)
}

func (c *changes) mkdir(rel string, mode uint32) error {
	if err := os.MkdirAll(c.path(rel), 0o755); err != nil {
		return err
	}
	return unix.Chmod(c.path(rel), mode)
}

func (c *changes) copyFile(src, dst string, mode uint32) error {
	in, err := os.Open(c.path(src))
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(c.path(dst), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return err
	}
	return unix.Chmod(c.path(dst), mode)
}

func (c *changes) tool(name string, args ...string) error {
	p, err := lookTool(name)
	if err != nil {
		return err
	}
	return run(c.ctx, p, args...)
}

// everyOther returns the sorted names of every other subdirectory of rel,
// a deterministic "some of them".
func (c *changes) everyOther(rel string) ([]string, error) {
	ents, err := os.ReadDir(c.path(rel))
	if err != nil {
		return nil, err
	}
	var out []string
	n := 0
	for _, e := range ents {
		if e.IsDir() {
			if n%2 == 0 {
				out = append(out, rel+"/"+e.Name())
			}
			n++
		}
	}
	return out, nil
}

func (c *changes) layer2() error {
	docs, err := os.ReadDir(c.path("usr/share/doc"))
	if err != nil {
		return err
	}
	doomed := []string{"usr/share/man", dirToFile, fileToDir}
	for _, d := range docs {
		doomed = append(doomed, "usr/share/doc/"+d.Name())
	}
	locales, err := c.everyOther("usr/share/locale")
	if err != nil {
		return err
	}
	for _, p := range append(doomed, locales...) {
		if err := c.remove(p); err != nil {
			return err
		}
	}

	steps := []func() error{
		func() error { return c.write(dirToFile, "a directory in layer 1, a file in layer 2\n", 0o644) },
		func() error {
			return c.write(fileToDir+"/README", "a file in layer 1, a directory in layer 2\n", 0o644)
		},
		func() error {
			sum, err := writeBig(c.path(bigFile))
			c.bigSum = sum
			return err
		},
		func() error { return os.Symlink(filepath.Base(bigFile), c.path("opt/big.link")) },
		func() error { return c.write(hardlinks[0], "one file, four names\n", 0o640) },
		func() error {
			for _, l := range hardlinks[1:] {
				if err := os.MkdirAll(filepath.Dir(c.path(l)), 0o755); err != nil {
					return err
				}
				if err := os.Link(c.path(hardlinks[0]), c.path(l)); err != nil {
					return err
				}
			}
			return nil
		},
		func() error { return c.write(xattrFile, "has a user xattr\n", 0o644) },
		func() error { return c.tool("setfattr", "-n", "user.layerfs", "-v", "layer2", c.path(xattrFile)) },
		func() error { return c.tool("setfattr", "-n", "user.layerfs", "-v", "a directory", c.path(linkDir)) },
		func() error { return c.copyFile("usr/bin/true", capFile, 0o755) },
		func() error {
			if _, err := lookTool("setcap"); err == nil {
				return c.tool("setcap", "cap_net_raw+ep", c.path(capFile))
			}
			return c.tool("setfattr", "-n", "security.capability", "-v", capNetRawV2, c.path(capFile))
		},
		func() error { return c.copyFile("usr/bin/true", setuidFile, 0o4755) },
		func() error { return c.copyFile("usr/bin/true", setgidFile, 0o755) },
		// chown clears setgid, so the mode comes after the group.
		func() error { return os.Lchown(c.path(setgidFile), 0, 50) },
		func() error { return unix.Chmod(c.path(setgidFile), 0o2755) },
		func() error { return c.mkdir(stickyDir, 0o1777) },
		func() error { return unix.Mkfifo(c.path(fifoFile), 0o644) },
		func() error { return unix.Mknod(c.path(charDev), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))) },
		// mknod and mkfifo apply the umask.
		func() error { return unix.Chmod(c.path(charDev), 0o666) },
		func() error { return unix.Chmod(c.path(fifoFile), 0o644) },
		func() error { return c.write("opt/doomed/one", "deleted in layer 3\n", 0o644) },
		func() error { return c.write("opt/doomed/sub/two", "deleted in layer 3\n", 0o644) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("layer 2 changes: %w", err)
		}
	}
	return nil
}

func (c *changes) layer3() error {
	steps := []func() error{
		func() error { return c.remove("opt/doomed") },
		func() error { return c.remove(hardlinks[len(hardlinks)-1]) },
		func() error { return c.remove("etc/issue.net") },
		func() error { return os.Lchown(c.path(chownedDir), 1234, 1234) },
		func() error { return unix.Chmod(c.path(chownedDir), 0o750) },
		func() error { return c.write("etc/hostname", "layerfs-test\n", 0o644) },
		func() error { return c.write(recreated, ".TH LAYERFS 1\n", 0o644) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("layer 3 changes: %w", err)
		}
	}
	return nil
}

// writeBig writes bigFileSize pseudo-random bytes, which gzip cannot
// shrink, so the image is big enough to benchmark reads, and returns their
// hex sha256.
func writeBig(path string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	var seed [32]byte
	copy(seed[:], bigFileSeed)
	rng := rand.NewChaCha8(seed)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	w := io.MultiWriter(f, h)
	buf := make([]byte, 1<<20)
	for range bigFileSize / len(buf) {
		_, _ = rng.Read(buf) // never fails
		if _, err := w.Write(buf); err != nil {
			f.Close()
			return "", fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), unix.Chmod(path, 0o644)
}

// lookTool finds a program in PATH or, since a test runner may strip the
// sbin directories from root's PATH, where Debian installs root's tools.
func lookTool(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s is not installed (apt-get install %s)", name, debianPackage(name))
}

func debianPackage(tool string) string {
	switch tool {
	case "setfattr":
		return "attr"
	case "setcap":
		return "libcap2-bin"
	case "cp":
		return "coreutils"
	default:
		return tool
	}
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
