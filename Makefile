# make demo: build, import the sample image, mount it, show it, unmount.
# make test: install what the tests need (apt-get, as root), then run them all,
# and the packages' own tests again under the race detector.
# make install: build, then install to $(DESTDIR)$(PREFIX)/bin.
GO ?= go
BIN := bin/layerfs
PREFIX ?= /usr/local
# layerfs --version tells these; without git they are left to the go command.
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT := $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Tests that mount for real fail, rather than skip, when they cannot run.
export LAYERFS_INTEGRATION ?= 1
TEST_PACKAGES := fuse3 fuse-overlayfs umoci skopeo docker-registry debootstrap e2fsprogs erofs-utils attr rsync zstd libcap2-bin qemu-system-x86 linux-image-amd64 busybox-static xz-utils gcc libc6-dev

.PHONY: build install demo test deps lint race bench fuzz soak clean

# Static, without cgo: no libc mapped into every server (2 MB of its RSS).
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/layerfs

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/layerfs

demo: build
	@bash scripts/demo.sh $(BIN)

deps:
	@bash scripts/install-deps.sh $(TEST_PACKAGES)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: the files above need formatting"; exit 1; }
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

test: deps build lint
	$(GO) test -count=1 -timeout 75m ./...
	$(MAKE) race

# make race: the packages' own tests again under the race detector, which
# needs cgo (gcc). The integration suite is left out: it drives the binary,
# which is built without cgo.
race:
	$(GO) test -race -count=1 -timeout 30m $$($(GO) list ./... | grep -v /integration)

clean:
	rm -rf bin

# make bench: every case against its reference in one run; writes bench/results.
# Then a guest over virtio-fs against the same guest on an ext4 disk made
# from the mount (LAYERFS_VIRTIOFS_BENCH=debian for the Debian image).
bench: build
	$(GO) run ./bench -layerfs $(BIN) -out bench/results
	$(GO) test -count=1 -timeout 0 -run '^$$' -bench BenchmarkVirtiofsGuest -benchtime 1x -v ./integration/

# make fuzz: each fuzz target for FUZZTIME.
FUZZTIME ?= 60s
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

# make soak: the mount under 16 readers and cache drops for SOAK (default 5m).
SOAK ?= 5m
soak: build
	LAYERFS_SOAK=$(SOAK) $(GO) test -count=1 -timeout 0 -run TestSoak -v ./integration/
