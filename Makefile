# mwcomms: the entry points users and CI rely on.
#   make          .venv with the package installed (.venv/bin/mwcomms, .venv/bin/mwctl)
#   make test     every test (installs the Debian packages the tests need when run as root)
#   make demo     the main job
#   make bench    native vs forwarded benchmarks
#   make ins-image  the INS as a Xen PV image
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SRC := $(shell find xen mwcomms ins tools shim -type f \( -name '*.c' -o -name '*.h' -o -name '*.py' -o -name '*.cdef' -o -name '*.map' \) 2>/dev/null)
PYTEST_ARGS ?=
# The installed package is assembled from several folders; never let the source folder mwcomms/
# shadow it (python -m adds the current directory to sys.path unless told not to).
export PYTHONSAFEPATH := 1

.PHONY: all deps test demo bench ins-image clean
all: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py $(SRC)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Build from a private copy of the tree: setuptools would otherwise reuse build/ here,
	@# keeping objects of sources that left the extension, and two builds would share it.
	@tmp=$$(mktemp -d /tmp/mwbuild.XXXXXX) && \
	  tar --exclude=./.venv --exclude=./build --exclude=./.git -cf - . | tar -xf - -C $$tmp && \
	  $(PY) -m pip install -q --disable-pip-version-check "$$tmp[test]"; \
	  rc=$$?; rm -rf $$tmp; exit $$rc
	@touch $@

deps:
	@tools/install-deps.sh

test: all deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: all deps
	$(PY) -m mwcomms.tools.demo

# Native vs through the backbone (docs/bench.md). BENCH_ARGS=--quick for a short run. Its
# Debian packages and the bench extra are installed here, never by `make test`.
BENCH_ARGS ?=
bench: all
	@tools/bench/install-deps.sh $(PY)
	$(PY) -m mwcomms.tools.bench --out build/bench $(BENCH_ARGS)

# The INS as a Xen PV image in build/ins-image (docs/xen.md): Debian's kernel, an initramfs
# with only the INS, an xl config. Fetches its Debian packages with apt-get download.
ins-image: all
	$(PY) -m mwcomms.tools.insimage --out build/ins-image $(INS_IMAGE_ARGS)

clean:
	rm -rf build $(VENV) *.egg-info
