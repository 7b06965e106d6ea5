package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/layerfs/layerfs/internal/testimage"
	"golang.org/x/sys/unix"
)

const committed = "../../../testdata/sample"

// TestReproducible writes the sample twice and checks both copies and the
// committed one are byte for byte the same.
func TestReproducible(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, dir := range []string{a, b} {
		if err := write(dir); err != nil {
			t.Fatal(err)
		}
	}
	testimage.RunTool(t, "diff", "-r", a, b)
	testimage.RunTool(t, "diff", "-r", "--exclude=README.md", a, committed)
	var total int64
	err := filepath.Walk(a, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			total += info.Size()
		}
		return err
	})
	if err != nil || total > 100<<10 {
		t.Errorf("sample is %d bytes (%v), want well under 100 KiB", total, err)
	}
}

// TestRewriteReplaces checks that regenerating over an old layout drops
// its blobs, so stale files cannot make the committed copy irreproducible,
// and keeps the README.
func TestRewriteReplaces(t *testing.T) {
	dir := t.TempDir()
	if _, err := testimage.WriteLayout(dir, testimage.Image{Name: "old", Layers: []testimage.Layer{{Entries: []testimage.Entry{testimage.File("old", "old")}}}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("readme"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := write(dir); err != nil {
		t.Fatal(err)
	}
	testimage.RunTool(t, "diff", "-r", "--exclude=README.md", dir, committed)
	if b, err := os.ReadFile(filepath.Join(dir, "README.md")); err != nil || string(b) != "readme" {
		t.Errorf("README.md is %q (%v) after rewriting", b, err)
	}
}

// TestUnpacksAsDocumented unpacks the committed sample with umoci and
// checks the merged tree shows what testimage.Sample's comment promises.
func TestUnpacksAsDocumented(t *testing.T) {
	testimage.RequireRoot(t, "umoci unpack restoring owners and xattrs")
	bundle := filepath.Join(t.TempDir(), "bundle")
	testimage.RunTool(t, "umoci", "unpack", "--image", committed+":"+testimage.SampleName, bundle)
	root := filepath.Join(bundle, "rootfs")
	at := func(p string) string { return filepath.Join(root, p) }

	for _, gone := range []string{"etc/motd", "usr/share/doc", "var/log/old.log"} {
		if _, err := os.Lstat(at(gone)); !os.IsNotExist(err) {
			t.Errorf("%s should be hidden, lstat says %v", gone, err)
		}
	}
	if logs, err := os.ReadDir(at("var/log")); err != nil || len(logs) != 1 || logs[0].Name() != "app.log" {
		t.Errorf("var/log holds %v (%v), want only app.log", logs, err)
	}
	if b, err := os.ReadFile(at("etc/hostname")); err != nil || string(b) != "sample\n" {
		t.Errorf("etc/hostname is %q (%v), want the top layer's", b, err)
	}
	var sh, busybox unix.Stat_t
	if unix.Lstat(at("usr/bin/sh"), &sh) != nil || unix.Lstat(at("usr/bin/busybox"), &busybox) != nil || sh.Ino != busybox.Ino || sh.Nlink != 2 {
		t.Errorf("usr/bin/sh is inode %d with %d links, busybox inode %d: want one file", sh.Ino, sh.Nlink, busybox.Ino)
	}
	if target, err := os.Readlink(at("lib")); err != nil || target != "usr/lib" {
		t.Errorf("lib -> %q (%v), want usr/lib", target, err)
	}
	if info, err := os.Stat(at("usr/bin/passwd")); err != nil || info.Mode()&os.ModeSetuid == 0 {
		t.Errorf("usr/bin/passwd is not setuid: %v %v", info, err)
	}
	var home unix.Stat_t
	if err := unix.Lstat(at("home/user"), &home); err != nil || home.Uid != 1000 || home.Gid != 1000 {
		t.Errorf("home/user owned by %d:%d (%v), want 1000:1000", home.Uid, home.Gid, err)
	}
	for _, x := range []struct{ file, name, value string }{
		{"usr/bin/ping", "security.capability", testimage.FileCapability(13)},
		{"home/user/notes.txt", "user.origin", "layerfs sample"},
	} {
		buf := make([]byte, 256)
		n, err := unix.Lgetxattr(at(x.file), x.name, buf)
		if err != nil || string(buf[:n]) != x.value {
			t.Errorf("%s of %s is %q (%v), want %q", x.name, x.file, buf[:max(n, 0)], err, x.value)
		}
	}
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"etc", "home", "lib", "tmp", "usr", "var"}; !slices.Equal(names, want) {
		t.Errorf("root holds %q, want %q", names, want)
	}
}
