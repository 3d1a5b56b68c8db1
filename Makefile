# Two commands for a fresh Debian/Ubuntu machine: `make demo` and `make test`.
# Each one installs what is missing (Debian packages, a virtualenv) and then runs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: FUSE and its headers (pyfuse3 builds against them), the reference tools
# the tests compare layerfs with or build test images with, and podman (with
# newuidmap/newgidmap for rootless runs), which the tests drive with layerfs as its mount program.
DEB_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv attr zstd \
	fuse-overlayfs umoci skopeo busybox-static runc docker-registry apache2-utils \
	buildah containerd stargz-snapshotter strace podman uidmap

# Where `make install` puts the `layerfs` command.
PREFIX ?= /usr/local

.PHONY: demo test lint typecheck bench bench-lazy bench-start bench-cache bytecode deps venv clean install uninstall install-helper

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) deps
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[fuse,test]'
	touch $(STAMP)

venv: $(STAMP)

# Puts `layerfs` on the PATH of every user, root's, sudo's and systemd's (PREFIX/bin, a link
# to this checkout's virtualenv): mount.fuse3 finds it there for `mount -t fuse.layerfs` and
# fstab lines, and podman can name it as its mount_program.
install: bytecode
	$(SUDO) mkdir -p "$(PREFIX)/bin"
	$(SUDO) ln -sfn "$(CURDIR)/$(VENV)/bin/layerfs" "$(PREFIX)/bin/layerfs"

uninstall:
	$(SUDO) rm -f "$(PREFIX)/bin/layerfs"

# The other route of mount(8): its own helper, which it finds without PATH, in /sbin.
install-helper: | $(STAMP)
	$(SUDO) ln -sf "$(CURDIR)/$(VENV)/bin/mount.fuse.layerfs" /sbin/mount.fuse.layerfs

demo: bytecode
	$(PY) -m layerfs.cli.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check layerfs fuse_mount tests benchmarks
	$(VENV)/bin/ruff format --check layerfs fuse_mount tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: bytecode deps
	$(MAKE) lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: bytecode deps
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# Lazy pull against full pull + mount over a throttled loopback link (docs/lazy.md).
bench-lazy: bytecode deps
	$(PY) -m benchmarks.lazy $(BENCH_ARGS)

# How long `layerfs mount` takes to give a usable mount, beside the kernel and fuse-overlayfs.
bench-start: bytecode deps
	$(PY) -m benchmarks.mount_start $(BENCH_ARGS)

# Page cache taken by one image file read through two mounts, beside the kernel and fuse-overlayfs.
bench-cache: bytecode deps
	$(PY) -m benchmarks.page_cache $(BENCH_ARGS)

# Every `layerfs` command is a new interpreter. Where Python may not write its bytecode cache
# (PYTHONDONTWRITEBYTECODE, a read-only checkout) each one would compile the package from
# source again, which more than doubles the start of a mount; compileall writes the cache
# regardless and skips what is up to date.
bytecode: $(STAMP)
	$(PY) -m compileall -q layerfs fuse_mount benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
