# Two commands a new machine needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HASH := $(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
# What the demo needs (JAX, Flax, TFDS, ...), and on top of it what the tests
# need (pytest, and PyTorch + torchattacks for the cross-checks).
BASE_STAMP := $(VENV)/.installed-base-$(HASH)
TEST_STAMP := $(VENV)/.installed-test-$(HASH)
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo
# The demo's config; CI runs the same target with configs/quickstart.py:smoke.
DEMO_CONFIG ?= configs/quickstart.py
export FASHION_MNIST_DIR
# pytest-xdist workers for `make test` (compilation is single-threaded, so two
# workers keep both cores of a small machine busy).
TEST_WORKERS ?= 2

.PHONY: demo test test-slow install install-test data clean

$(PY):
	python3 -m venv $(VENV)

$(BASE_STAMP): setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	rm -f $(VENV)/.installed-base-*
	touch $@

# The cross-checks run PyTorch on the CPU, so a CPU build of torch is enough:
# where pip's find-links folder holds one for this Python, install it rather
# than the multi-GB CUDA build from PyPI (override: make test TORCH_WHEEL=).
PYTAG := $(shell python3 -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
TORCH_WHEEL ?= $(lastword $(sort $(wildcard /opt/wheels/torch-*+cpu-$(PYTAG)-*.whl)))

$(TEST_STAMP): $(BASE_STAMP)
	$(PIP) install -q -e '.[test,torch]' $(TORCH_WHEEL)
	rm -f $(VENV)/.installed-test-*
	touch $@

install: $(BASE_STAMP)

install-test: $(TEST_STAMP)

data:
	@bash scripts/ensure_data.sh

demo: install data
	$(PY) -m launch.rift --config=$(DEMO_CONFIG) --workdir=$(DEMO_DIR) \
	  --config.data.debian_dir=$(FASHION_MNIST_DIR)

test: install-test
	@bash scripts/ensure_data.sh || echo "(the torchattacks cross-checks need Fashion-MNIST and will be skipped)"
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15 tests

# The minutes-long runs `make test` leaves out (pytest -m slow, about 10
# minutes): the benchmark's phases against PyTorch, launch/evaluate end to
# end, launch/rift from a PyTorch file, the standard-budget AutoAttack suite.
test-slow: install-test
	@bash scripts/ensure_data.sh || true
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m slow tests

clean:
	rm -rf $(VENV) runs
