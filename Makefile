# Fresh machine: `make demo` (set up + run) and `make test` (set up + tests). Python >= 3.10.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch for the training half. 2.13.0 is a CPU build where a local wheel of it is provided; elsewhere
# take the CPU build from PyTorch's CPU index: make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test setup setup-dev system-deps clean

# The main job on built-in defaults: self-check, a rendered dash-cam clip read through `infer`, then latency.
demo: setup
	$(BIN)/edgeguard doctor
	$(BIN)/edgeguard demo --out demo-output
	$(BIN)/edgeguard bench --frames 20 --threads 1

test: setup-dev
	$(BIN)/python -m pytest -q

setup: $(VENV)/.runtime
setup-dev: $(VENV)/.dev

# libturbojpeg is a system library: install it when we are root with apt, else the opencv backend is used.
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q libturbojpeg; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && apt-get install -y -qq libturbojpeg0 >/dev/null; \
	else echo "note: libturbojpeg not found and cannot apt-get it; EdgeGuard will use its opencv JPEG backend"; fi

$(VENV)/.runtime: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# torch first, as $(TORCH): a looser spec would fetch a multi-GB CUDA build from the default index.
$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[train,dev]"
	@# torchattacks (benchmarks' reference) declares torchvision, which it does not import here.
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	$(BIN)/pip install -q scipy tqdm requests
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
