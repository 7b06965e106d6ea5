#!/usr/bin/env bash
# The demo: import the sample image the repository carries into a fresh
# store, mount it, show a merged directory and one layer's markers, unmount.
set -euo pipefail
bin=$(realpath "$1")
work=$(mktemp -d)
export LAYERFS_ROOT=$work/store
mnt=$work/mnt
mkdir -p "$mnt"
cleanup() { "$bin" umount "$mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
run() { printf '\n$ %s\n' "$*"; "$@"; }

run "$bin" import testdata/sample
run "$bin" images
run "$bin" layers
run "$bin" mount --daemon sample "$mnt"
run ls -la "$mnt" "$mnt/etc" "$mnt/var/log" "$mnt/usr/bin"
run cat "$mnt/etc/hostname"
run "$bin" umount "$mnt"
# The second layer, as built: its whiteout markers are plain files.
layer=$("$bin" layers | awk 'NR==3 {print $1}')
run "$bin" mount --daemon "$layer" "$mnt"
run ls -la "$mnt/etc" "$mnt/usr/share"
run "$bin" umount "$mnt"
