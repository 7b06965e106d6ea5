package integration

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/layerfs/layerfs/internal/testimage"
	"github.com/opencontainers/go-digest"
)

// nobody is the unprivileged user the test mounts as.
const nobody = 65534

// unprivileged runs commands as nobody, in a directory nobody owns.
type unprivileged struct {
	t       *testing.T
	setpriv string
	// home is nobody's: the store, the layouts and the mountpoints.
	home string
	bin  string
}

// asNobody prepares everything an unprivileged user needs: /dev/fuse open
// to all users, as distributions ship it (these machines have it 0600),
// user_allow_other in /etc/fuse.conf so root can walk the user's mount,
// and a directory of nobody's own, holding a copy of the binary, on a
// path nobody can reach. The machine's files are restored afterwards.
func asNobody(t *testing.T) *unprivileged {
	requireRoot(t)
	u := &unprivileged{t: t, setpriv: testimage.RequireTool(t, "setpriv")}
	testimage.RequireTool(t, "fusermount3")
	st, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Fatalf("no FUSE: %v", err)
	}
	if st.Mode().Perm() != 0o666 {
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod("/dev/fuse", st.Mode().Perm()) })
	}
	allowOther(t)

	u.home = t.TempDir()
	// t.TempDir makes its directories 0700.
	for d := u.home; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(u.home, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	u.bin = filepath.Join(u.home, "layerfs")
	copyFile(t, layerfsBin(t), u.bin, 0o755)
	return u
}

func mustStat(t testing.TB, p string) os.FileInfo {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// allowOther makes sure /etc/fuse.conf holds user_allow_other, restoring
// the file when the test ends.
func allowOther(t *testing.T) {
	const conf = "/etc/fuse.conf"
	old, err := os.ReadFile(conf)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(old), "\n") {
		if strings.TrimSpace(line) == "user_allow_other" {
			return
		}
	}
	if err := os.WriteFile(conf, append(bytes.Clone(old), "\nuser_allow_other\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if old == nil {
			_ = os.Remove(conf)
			return
		}
		_ = os.WriteFile(conf, old, 0o644)
	})
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// command returns name run as nobody with nobody's own environment.
func (u *unprivileged) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(u.setpriv, append([]string{"--reuid", "65534", "--regid", "65534", "--clear-groups", name}, args...)...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + u.home, "TMPDIR=" + u.home}
	cmd.Dir = u.home
	return cmd
}

// run runs the binary as nobody, against nobody's store unless args give
// another --root, returning its output.
func (u *unprivileged) run(args ...string) result {
	u.t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := u.command(u.bin, append([]string{"--root", filepath.Join(u.home, "store")}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	_, err := commandWithin(u.t, cmd, commandDeadline)
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		r.code = exit.ExitCode()
	} else if err != nil {
		u.t.Fatalf("layerfs %s as uid %d: %v", strings.Join(args, " "), nobody, err)
	}
	return r
}

// layerfs runs the binary as nobody and fails the test unless it exits 0.
func (u *unprivileged) layerfs(args ...string) string {
	u.t.Helper()
	r := u.run(args...)
	if r.code != 0 {
		u.t.Fatalf("layerfs %s as uid %d: exit %d\n%s", strings.Join(args, " "), nobody, r.code, r.stderr)
	}
	return r.stdout
}

// unmountAtEnd unmounts nobody's mount mnt when t ends, whatever the
// outcome: with nobody's layerfs umount, else by force.
func (u *unprivileged) unmountAtEnd(t *testing.T, mnt string) {
	t.Cleanup(func() {
		if !mountedAt(t, mnt) {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		umount := u.command(u.bin, "--root", filepath.Join(u.home, "store"), "umount", mnt)
		cmd := exec.CommandContext(ctx, umount.Path, umount.Args[1:]...)
		cmd.Env, cmd.Dir = umount.Env, umount.Dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("umount %s as uid %d: %v\n%s", mnt, nobody, err, out)
		}
		if mountedAt(t, mnt) {
			forceUnmount(t, mnt)
		}
	})
}

// mkdir makes a directory of nobody's.
func (u *unprivileged) mkdir(name string) string {
	u.t.Helper()
	d := filepath.Join(u.home, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Chown(d, nobody, nobody); err != nil {
		u.t.Fatal(err)
	}
	return d
}

// copyLayout copies img's layout where nobody can read it.
func (u *unprivileged) copyLayout(img layoutImage, name string) layoutImage {
	u.t.Helper()
	dst := filepath.Join(u.home, name)
	tool(u.t, "cp", "-r", img.layout, dst)
	tool(u.t, "chmod", "-R", "a+rX", dst)
	out := img
	out.layout, out.blobs = dst, nil
	for _, l := range img.layers {
		out.blobs = append(out.blobs, filepath.Join(dst, "blobs", digest.SHA256.String(), l.Encoded()))
	}
	return out
}

// TestUnprivilegedMount imports into a store of an unprivileged user's
// own and mounts through fusermount3 as that user: root, walking that
// mount, must see exactly what it sees in its own mount of the same image,
// and the user must be able to read through the mount without
// passthrough, which needs root.
func TestUnprivilegedMount(t *testing.T) {
	u := asNobody(t)
	images := map[string]layoutImage{"sample": sampleImage(t), "debian": debianLayoutImage(t)}
	for _, c := range extractableRuleCases() {
		if c.Rule == "attributes" || c.Rule == "10" {
			images["rule-"+c.Name] = ruleImage(t, c)
		}
	}
	for name, img := range images {
		t.Run(name, func(t *testing.T) {
			u.t = t
			mine := u.copyLayout(img, "layout-"+name)
			if out := u.layerfs("import", mine.layout); !strings.Contains(out, img.ref+" ") {
				t.Fatalf("import as uid %d: output %q does not name %s", nobody, out, img.ref)
			}
			mnt := u.mkdir("mnt-" + name)
			u.layerfs("mount", "--daemon", "--allow-other", img.ref, mnt)
			u.unmountAtEnd(t, mnt)
			if st := mustStat(t, filepath.Join(u.home, "store")); st.Sys().(*syscall.Stat_t).Uid != nobody {
				t.Fatalf("the store is owned by uid %d, not %d", st.Sys().(*syscall.Stat_t).Uid, nobody)
			}
			rootStore := t.TempDir()
			importInto(t, rootStore, img)
			requireSame(t, "uid 65534's mount, as root sees it", walk(t, mountDaemon(t, rootStore, img.ref)), walk(t, mnt))
			u.layerfs("umount", mnt)
			if mountedAt(t, mnt) {
				t.Errorf("%s is still mounted after uid %d's layerfs umount", mnt, nobody)
			}
		})
	}
	t.Run("read as the user", func(t *testing.T) {
		u.t = t
		mnt := u.mkdir("mnt-read")
		u.layerfs("mount", "--daemon", "sample", mnt)
		u.unmountAtEnd(t, mnt)
		var out bytes.Buffer
		cmd := u.command("cat", filepath.Join(mnt, "etc/hostname"), filepath.Join(mnt, "usr/bin/sh"))
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("cat as uid %d: %v\n%s", nobody, err, out.Bytes())
		}
		if want := "sample\n#!/bin/true\n# stands in for busybox\n"; out.String() != want {
			t.Errorf("cat as uid %d read %q, want %q", nobody, out.String(), want)
		}
	})
}

// TestUnprivilegedMountRefusalSaysWhy mounts as a user at directories
// fusermount3 refuses: one the user cannot write, and a sticky one of
// another user's that it can. In the foreground and with --daemon, each
// exits 1 with one line naming the mountpoint and the reason, in
// fusermount3's own words when fusermount3 gave it, and mounts nothing.
func TestUnprivilegedMountRefusalSaysWhy(t *testing.T) {
	u := asNobody(t)
	u.layerfs("import", u.copyLayout(sampleImage(t), "layout").layout)
	notWritable := filepath.Join(u.home, "not-writable")
	must(t, os.Mkdir(notWritable, 0o755))
	sticky := filepath.Join(u.home, "sticky")
	must(t, os.Mkdir(sticky, 0o755))
	must(t, os.Chmod(sticky, os.ModeSticky|0o777))
	for _, c := range []struct{ name, mnt, expect string }{
		{"not writable", notWritable, "mount " + notWritable + ": you (uid 65534) have no write access to the mountpoint, which fusermount3 requires"},
		{"sticky, of root", sticky, "fusermount3: mountpoint " + sticky + " not owned by user"},
	} {
		for _, mode := range [][]string{nil, {"--daemon"}} {
			t.Run(strings.TrimSpace(c.name+" "+strings.Join(mode, "")), func(t *testing.T) {
				u.t = t
				checkRefused(t, u.run(append(append([]string{"mount"}, mode...), "sample", c.mnt)...), c.expect)
				if mountedAt(t, c.mnt) {
					forceUnmount(t, c.mnt)
					t.Errorf("%s is mounted after a refused mount", c.mnt)
				}
			})
		}
	}
}

// TestDaemonShowsWarnings has a user mount, with --daemon, from root's
// store, which it may read but not write: the mount cannot be leased, and
// the warning saying so reaches the user's stderr once, as a foreground
// mount's does, not only the server's log.
func TestDaemonShowsWarnings(t *testing.T) {
	u := asNobody(t)
	root := filepath.Join(reachableDir(t), "store")
	importInto(t, root, sampleImage(t))
	tool(t, "chmod", "-R", "go+rX", root)
	mnt := u.mkdir("mnt")
	u.unmountAtEnd(t, mnt)
	r := u.run("--root", root, "mount", "--daemon", "sample", mnt)
	if r.code != 0 {
		t.Fatalf("mount --daemon of root's store as uid %d: exit %d\n%s", nobody, r.code, r.stderr)
	}
	const warning = "mount sample: not leased, so gc may remove what it serves"
	if strings.Count(r.stderr, warning) != 1 || r.stdout != "" {
		t.Errorf("mount --daemon of root's store as uid %d: stdout %q, stderr %q; want the warning %q once on stderr alone", nobody, r.stdout, r.stderr, warning)
	}
	u.layerfs("umount", mnt)
}

// TestUnprivilegedUmountOfAnothersMount has a user unmount root's mount:
// refused, exit 1, saying whose mount it is, and the mount stays served.
func TestUnprivilegedUmountOfAnothersMount(t *testing.T) {
	u := asNobody(t)
	root := filepath.Join(reachableDir(t), "store")
	importInto(t, root, sampleImage(t))
	mnt := filepath.Join(reachableDir(t), "mnt")
	must(t, os.Mkdir(mnt, 0o755))
	mustRun(t, root, "mount", "--daemon", "sample", mnt)
	t.Cleanup(func() { unmount(t, root, mnt) })
	checkRefused(t, u.run("umount", mnt), "unmount "+mnt+": the mount is uid 0's; only that user or root may unmount it")
	if _, err := os.Stat(filepath.Join(mnt, "etc/hostname")); err != nil || !mountedAt(t, mnt) {
		t.Errorf("root's mount after a user's refused umount: mounted %v, %v", mountedAt(t, mnt), err)
	}
}

// TestUnprivilegedOutputFile has a user export and build to files the
// output cannot replace: one in a directory the user cannot write, where
// the temp file it is written as cannot be made, and one of root's in
// the user's own directory, whose owner the user cannot give the file
// replacing it. Each is refused with one line saying why, and the file
// is left as it was, with nothing beside it. A new name in the directory
// the user cannot write is refused naming the directory too.
func TestUnprivilegedOutputFile(t *testing.T) {
	u := asNobody(t)
	u.layerfs("import", u.copyLayout(sampleImage(t), "layout").layout)
	locked := filepath.Join(u.home, "locked")
	must(t, os.Mkdir(locked, 0o755))
	usersFile := filepath.Join(locked, "users.out")
	must(t, os.WriteFile(usersFile, []byte("old"), 0o644))
	must(t, os.Chown(usersFile, nobody, nobody))
	mine := u.mkdir("mine")
	rootsFile := filepath.Join(mine, "roots.out")
	must(t, os.WriteFile(rootsFile, []byte("old"), 0o666))
	for _, c := range []struct {
		file, expect string
		uid          uint32
	}{
		{usersFile, usersFile + ": the output is written beside it in " + locked + " and renamed over it, and " + locked + " is not writable: permission denied", nobody},
		{rootsFile, rootsFile + ": keep its owner and group (0:0) in the file that replaces it: operation not permitted (nothing replaced)", 0},
	} {
		for _, cmd := range []string{"export", "build"} {
			t.Run(cmd+" "+filepath.Base(c.file), func(t *testing.T) {
				u.t = t
				checkRefused(t, u.run(cmd, "sample", "-o", c.file), c.expect)
				uid := mustStat(t, c.file).Sys().(*syscall.Stat_t).Uid
				if b, err := os.ReadFile(c.file); err != nil || string(b) != "old" || uid != c.uid {
					t.Errorf("%s after the refusal: %d bytes, old content %v (%v), uid %d; want it as it was, of uid %d", c.file, len(b), string(b) == "old", err, uid, c.uid)
				}
				if es, err := os.ReadDir(filepath.Dir(c.file)); err != nil || len(es) != 1 {
					t.Errorf("%s holds %d names (%v); want the file alone", filepath.Dir(c.file), len(es), err)
				}
			})
		}
	}
	newFile := filepath.Join(locked, "new.out")
	checkRefused(t, u.run("export", "sample", "-o", newFile), newFile+": the output is written in "+locked+" and renamed to it, and "+locked+" is not writable: permission denied")
}

// TestDemoUnprivileged runs make demo's script as a user other than
// root, as a newcomer may: it must exit 0 through the FUSE mounts, the
// layer a file came from and the EROFS disk, say that the kernel mounts
// need root instead of failing in mount(8), and leave nothing behind.
func TestDemoUnprivileged(t *testing.T) {
	u := asNobody(t)
	must(t, os.Mkdir(filepath.Join(u.home, "testdata"), 0o755))
	tool(t, "cp", "-r", sampleImage(t).layout, filepath.Join(u.home, "testdata", "sample"))
	tool(t, "chmod", "-R", "a+rX", filepath.Join(u.home, "testdata"))
	copyFile(t, "../scripts/demo.sh", filepath.Join(u.home, "demo.sh"), 0o644)
	var out bytes.Buffer
	cmd := u.command("bash", "demo.sh", u.bin)
	cmd.Stdout, cmd.Stderr = &out, &out
	if _, err := commandWithin(t, cmd, commandDeadline); err != nil {
		t.Fatalf("demo as uid %d: %v\n%s", nobody, err, out.Bytes())
	}
	_, m, _ := sampleLayout(t)
	for _, want := range []string{"app.log", ".wh.motd", m.Layers[1].Digest.String() + "\n", "sample.erofs: sha256:", "need root"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo as uid %d lacks %q:\n%s", nobody, want, out.Bytes())
		}
	}
	if left, err := mountsUnder(u.home); err != nil || len(left) > 0 {
		t.Errorf("demo as uid %d left mounts %v (%v)", nobody, left, err)
	}
	// TMPDIR is the user's home, which also holds the runtime directory.
	if left, err := filepath.Glob(filepath.Join(u.home, "tmp.*")); err != nil || len(left) > 0 {
		t.Errorf("demo as uid %d left %v (%v)", nobody, left, err)
	}
}
