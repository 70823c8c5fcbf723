# Two commands on a fresh machine: `make run` (the default pipeline, live) and `make test`.
# Both go through `make setup`, which is quick when nothing changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Every extra that installs on a CPU-only machine; `gpu` (TensorRT, pycuda) needs a CUDA GPU.
EXTRAS := audio,lidar,depth,train,record,ros,bench,dev
# System libraries: Open3D needs libusb at import; PyAudio builds against PortAudio.
APT_PACKAGES := libusb-1.0-0 portaudio19-dev
PIPELINE ?= pipelines/sim.yaml
PYTEST_ARGS ?=

.PHONY: setup run test lint typecheck bench model clean

setup: $(VENV)/.deps-stamp

$(VENV)/.system-stamp:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@touch $@

# torch is installed first and pinned to the CPU wheel: an unpinned torch pulls a CUDA build.
# pip's output goes to .venv/setup.log; it is shown only when a step fails.
PIP := $(PY) -m pip install -q --disable-pip-version-check
$(VENV)/.deps-stamp: pyproject.toml $(VENV)/.system-stamp
	@echo "installing Python packages into $(VENV) (log: $(VENV)/setup.log)"
	@( $(PIP) --upgrade "pip>=24" && $(PIP) torch==2.13.0 && $(PIP) -e ".[$(EXTRAS)]" ) \
	  >$(VENV)/setup.log 2>&1 || { tail -40 $(VENV)/setup.log; exit 1; }
	@$(PY) -c "import edgefuse, zmq, cv2, torch, onnxruntime, pyaudio, open3d, zenoh, iceoryx2, pytest"
	@touch $@

run: setup
	$(VENV)/bin/edgefuse run $(PIPELINE)

lint: setup
	$(VENV)/bin/ruff check edgefuse tests
	$(VENV)/bin/ruff format --check edgefuse tests

typecheck: setup
	$(VENV)/bin/mypy

test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/edgefuse bench transport --json

# Retrain the shipped model from scratch (docs/MODEL.md): simulate the training and held-out
# sessions, train, evaluate, export into the package. About 2 h on 2 cores; DATA holds ~200 MB.
DATA   ?= data
FUSION ?= attention
EPOCHS ?= 6
EF     := $(VENV)/bin/edgefuse
model: setup
	$(EF) dataset sim --scenario day --seeds 100:128 -o $(DATA)/shards/train
	$(EF) dataset sim --scenario night --seeds 200:228 -o $(DATA)/shards/train
	$(EF) dataset sim --scenario day,night --seeds 900:912 -o $(DATA)/shards/test
	$(EF) train $(DATA)/shards/train -o $(DATA)/runs/$(FUSION) --fusion $(FUSION) --epochs $(EPOCHS) --resume
	$(EF) eval $(DATA)/runs/$(FUSION)/checkpoint.pt $(DATA)/shards/test --out $(DATA)/runs/$(FUSION)/eval.json --plot $(DATA)/runs/$(FUSION)/eval.png
	$(EF) export $(DATA)/runs/$(FUSION)/checkpoint.pt -o edgefuse/assets/model/fusion.onnx --metrics $(DATA)/runs/$(FUSION)/eval.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
