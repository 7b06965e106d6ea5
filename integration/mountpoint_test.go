package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestMountpointThroughSymlink mounts at a symlink to a directory, with
// --daemon, in the foreground and with --kernel: the mount is at the
// directory, mounts lists it there as ours, and umount of the symlink
// unmounts it. A symlink to a directory already mounted, to a file or to
// nothing is refused as what it names would be.
func TestMountpointThroughSymlink(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	for _, mode := range []string{"--daemon", "foreground", "--kernel"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			mnt, link := filepath.Join(dir, "mnt"), filepath.Join(dir, "link")
			must(t, os.Mkdir(mnt, 0o755))
			must(t, os.Symlink("mnt", link))
			t.Cleanup(func() { unmount(t, root, mnt) })
			wantState := "serving"
			switch mode {
			case "foreground":
				startMount(t, root, "sample", link)
				waitFor(t, "layerfs mounts "+mnt, func() bool { return mountedAt(t, mnt) })
			case "--kernel":
				wantState = "mounted"
				fallthrough
			default:
				mustRun(t, root, "mount", mode, "sample", link)
			}
			var listed []struct {
				Mountpoint, State string
				PID               int
			}
			must(t, json.Unmarshal([]byte(mustRun(t, root, "mounts", "--format", "json")), &listed))
			found := false
			for _, m := range listed {
				if m.Mountpoint == mnt {
					found = true
					if m.State != wantState || (wantState == "serving") != (m.PID > 0) {
						t.Errorf("mounts lists %+v; want state %s, with a pid if serving", m, wantState)
					}
				}
			}
			if !found {
				t.Errorf("mounts does not list %s: %+v", mnt, listed)
			}
			mustRun(t, root, "umount", link)
			if mountedAt(t, mnt) {
				t.Errorf("%s is still mounted after layerfs umount %s", mnt, link)
			}
		})
	}

	busy := mountDaemon(t, root, "sample")
	file := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(file, nil, 0o644))
	for _, c := range []struct{ name, target, expect string }{
		{"to a mountpoint", busy, "already a mountpoint"},
		{"to a file", file, "not a directory"},
		{"to nothing", filepath.Join(t.TempDir(), "missing"), "no such file or directory"},
	} {
		for _, mode := range []string{"--daemon", "--kernel"} {
			t.Run(c.name+" "+mode, func(t *testing.T) {
				link := filepath.Join(t.TempDir(), "link")
				must(t, os.Symlink(c.target, link))
				r := run(t, root, "mount", mode, "sample", link)
				checkRefused(t, r, c.expect)
				if r.code == 0 && c.target == busy {
					// Stacked on the mount there.
					unmount(t, root, busy)
				}
			})
		}
	}
}

// TestMountpointSwappedForASymlink resolves a mountpoint inside a
// directory its owner controls, then, while the mount waits for the
// store's lock, has that directory swapped for a symlink to another
// (standing for "/", with "etc" in it): the mount, made by path again,
// would land on the other directory's "etc". It must be refused, in the
// foreground, with --daemon and with --kernel, and nothing mounted.
func TestMountpointSwappedForASymlink(t *testing.T) {
	requireRoot(t)
	root := sampleStore(t)
	for name, flags := range map[string][]string{"foreground": nil, "--daemon": {"--daemon"}, "--kernel": {"--kernel"}} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			users, decoy := filepath.Join(dir, "users"), filepath.Join(dir, "decoy")
			for _, d := range []string{users, decoy} {
				must(t, os.MkdirAll(filepath.Join(d, "etc"), 0o755))
			}
			t.Cleanup(func() {
				for _, m := range []string{filepath.Join(decoy, "etc"), filepath.Join(dir, "moved", "etc")} {
					if mountedAt(t, m) {
						unmount(t, root, m)
					}
				}
			})
			lock, err := os.OpenFile(filepath.Join(root, ".gc.lock"), os.O_RDWR|os.O_CREATE, 0o600)
			must(t, err)
			defer lock.Close()
			must(t, unix.Flock(int(lock.Fd()), unix.LOCK_EX))
			args := append(append([]string{"--root", root, "mount"}, flags...), "sample", filepath.Join(users, "etc"))
			cmd := exec.Command(layerfsBin(t), args...)
			stderr := &lockedBuffer{}
			cmd.Stderr = stderr
			must(t, cmd.Start())
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					_ = cmd.Process.Kill()
				}
			})
			waitFor(t, "the mount waiting for the store's lock", func() bool { return strings.Contains(stderr.String(), "waiting for") })
			must(t, os.Rename(users, filepath.Join(dir, "moved")))
			must(t, os.Symlink(decoy, users))
			must(t, unix.Flock(int(lock.Fd()), unix.LOCK_UN))
			select {
			case err := <-exited:
				if err == nil || !strings.Contains(stderr.String(), "symlink") {
					t.Errorf("mount through a mountpoint swapped for a symlink: %v, stderr %q; want it refused", err, stderr.String())
				}
			case <-time.After(20 * time.Second):
				t.Errorf("mount still running 20s after the swap: stderr %q", stderr.String())
			}
			if mountedAt(t, filepath.Join(decoy, "etc")) {
				t.Errorf("the mount landed on %s, through the symlink swapped in", filepath.Join(decoy, "etc"))
			}
		})
	}
}
