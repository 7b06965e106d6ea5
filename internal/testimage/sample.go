package testimage

// SampleName is the ref name of the sample image in testdata/sample.
const SampleName = "sample"

// Sample is the image internal/cmd/mksample writes to testdata/sample: a
// tiny rootfs whose three gzip layers hold one of each kind of thing a view
// must get right. Tests that open testdata/sample can compare against it.
//
// Merged, it shows: /etc/motd and the directory /usr/share/doc whited out
// by the second layer; /var/log made opaque by the third so only app.log is
// left; /usr/bin/sh a hardlink of /usr/bin/busybox; /lib a
// symlink to usr/lib; /usr/bin/passwd setuid; /usr/bin/ping with a
// security.capability xattr and /home/user/notes.txt with a user.* xattr.
func Sample() Image {
	return Image{Name: SampleName, Layers: []Layer{
		{Entries: []Entry{
			Dir("./", 0o755),
			Dir("etc", 0o755),
			File("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n"),
			File("etc/group", "root:x:0:\nuser:x:1000:\n"),
			File("etc/hostname", "base\n"),
			File("etc/motd", "Welcome to the base layer.\n"),
			Dir("usr", 0o755),
			Dir("usr/bin", 0o755),
			File("usr/bin/busybox", "#!/bin/true\n# stands in for busybox\n").WithMode(0o755),
			Hardlink("usr/bin/sh", "usr/bin/busybox"),
			Symlink("usr/bin/ls", "busybox"),
			Dir("usr/lib", 0o755),
			File("usr/lib/libc.so.6", "not really a C library\n").WithMode(0o755),
			Symlink("lib", "usr/lib"),
			Dir("usr/share", 0o755),
			Dir("usr/share/doc", 0o755),
			Dir("usr/share/doc/base", 0o755),
			File("usr/share/doc/base/README", "Documentation the second layer removes.\n"),
			Dir("var", 0o755),
			Dir("var/log", 0o755),
			File("var/log/old.log", "an old log the third layer hides\n").WithMode(0o640),
			Dir("tmp", 0o1777),
			Dir("home", 0o755),
			Dir("home/user", 0o750).WithOwner(1000, 1000),
			File("home/user/.profile", "export PS1='$ '\n").WithOwner(1000, 1000),
		}},
		{Entries: []Entry{
			Whiteout("etc", "motd"),
			File("etc/os-release", "NAME=layerfs-sample\nID=sample\n"),
			Whiteout("usr/share", "doc"),
			File("usr/bin/passwd", "#!/bin/true\n# setuid like the real one\n").WithMode(0o4755),
			File("usr/bin/ping", "#!/bin/true\n# needs CAP_NET_RAW\n").WithMode(0o755).
				WithXattr("security.capability", FileCapability(13)),
		}},
		{Entries: []Entry{
			Dir("var/log", 0o755),
			Opaque("var/log"),
			File("var/log/app.log", "started\n").WithMode(0o640),
			File("etc/hostname", "sample\n"),
			File("home/user/notes.txt", "remember the milk\n").WithOwner(1000, 1000).
				WithXattr("user.origin", "layerfs sample"),
		}},
	}}
}
