# Two commands a new machine needs: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | cksum | cut -d' ' -f1)
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
DEMO_DIR ?= runs/demo
export FASHION_MNIST_DIR

.PHONY: demo test install data clean

$(PY):
	python3 -m venv $(VENV)

# torch is pinned to the CPU build that installs fast from local disk here;
# a range would pull a multi-GB CUDA build. It is only needed by the optional
# PyTorch import/cross-check code and the benchmark.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,torch]'
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

data:
	@bash scripts/ensure_data.sh

demo: install data
	$(PY) -m launch.rift --config=configs/quickstart.py --workdir=$(DEMO_DIR) \
	  --config.data.debian_dir=$(FASHION_MNIST_DIR)

test: install
	@bash scripts/ensure_data.sh || echo "(the torchattacks cross-check needs Fashion-MNIST and will be skipped)"
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs
