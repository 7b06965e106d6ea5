#!/usr/bin/env bash
# Run every Fuzz* target of the repository for FUZZTIME each (go test's
# -fuzztime syntax: 60s, 10m, 100000x), one after another, and print the
# executions each one reached. A crash stops the run with go test's report
# and leaves the failing input under the package's testdata/fuzz/.
# FUZZPARALLEL sets the fuzzing workers (default: every core).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${1:-60s}
parallel=${FUZZPARALLEL:-$(nproc)}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
summary=()
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target for $fuzztime"
		# -fuzzminimizetime bounds how long a crash is shrunk. go test
		# reports an input that runs 10s as a hang; memory is bounded
		# by the targets, which stream their input and buffer at most
		# store's 1 MiB small-file limit.
		if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime 30s \
			-parallel "$parallel" "$pkg" 2>&1 | tee "$log"; then
			# go test can report its own deadline as a failure when the
			# time runs out mid-run; that is not a crash of the target.
			if grep -q 'Failing input written' "$log" || ! grep -q 'context deadline exceeded' "$log"; then
				echo "fuzz: $pkg $target failed" >&2
				exit 1
			fi
		fi
		execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
		summary+=("$(printf '%-45s %-20s %s execs' "$pkg" "$target" "${execs:-?}")")
	done
done
printf '%s\n' "${summary[@]}"
