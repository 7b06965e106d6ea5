#!/usr/bin/env bash
# The demo: import the sample image the repository carries into a fresh
# store, mount it, show a merged directory and one layer's markers, tell
# which layer a file came from, write the view as an EROFS disk and
# mount it, mount the view with the kernel (mount --kernel), unmount.
# The two kernel mounts need root; another user sees the rest.
set -euo pipefail
bin=$(realpath "$1")
work=$(mktemp -d)
export LAYERFS_ROOT=$work/store
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() { "$bin" umount "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
run() { printf '\n$ %s\n' "$*"; "$@"; }

run "$bin" import testdata/sample
run "$bin" images
run "$bin" layers
run "$bin" mount --daemon sample "$mnt"
run ls -la "$mnt" "$mnt/etc" "$mnt/var/log" "$mnt/usr/bin"
run cat "$mnt/etc/hostname"
run "$bin" umount "$mnt"
run "$bin" which sample /etc/os-release
# A VM root disk: the kernel's EROFS mount of it shows the same tree.
run "$bin" build -v sample -o "$work/sample.erofs"
if [ "$(id -u)" = 0 ]; then
  run mount -t erofs -o ro "$work/sample.erofs" "$mnt"
  run ls -la "$mnt/etc"
  run umount "$mnt"
  # The same view from the kernel, its files read from the store's objects.
  run "$bin" mount --kernel sample "$mnt"
  run "$bin" mounts
  run cat "$mnt/etc/hostname"
  run "$bin" umount "$mnt"
else
  printf '\n(not root: mounting the EROFS disk and mount --kernel need root, and are left out; the FUSE mounts need none)\n'
fi
# The second layer, as built: its whiteout markers are plain files.
layer=$("$bin" layers | awk 'NR==3 {print $1}')
run "$bin" mount --daemon "$layer" "$mnt"
run ls -la "$mnt/etc" "$mnt/usr/share"
run "$bin" umount "$mnt"
