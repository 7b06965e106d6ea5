package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
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
