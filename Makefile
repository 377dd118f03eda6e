# Quick start: `make demo` runs the main job on built-in defaults, `make test` runs the tests.
# Both install into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions

.PHONY: install encoder browser typecheck test test-releases test-golden demo bench bench-quant bench-speed clean

# `make install`: the dependencies, then the demo's pretrained image encoder (as VisualGLM's users fetch
# EVA-CLIP's and BLIP-2's weights before fine-tuning; the tests need neither it nor its 4 minutes)
install: $(STAMP) encoder

encoder: $(STAMP)
	@$(PY) -m porter_visualglm.image_encoder >/dev/null

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	@# -qq: errors only; pip's warnings (about a machine's own index settings, an editable build) are not news
	$(PIP) install -qq --upgrade pip
	@# torch first and pinned: the CPU build comes from local disk; anything else pulls CUDA.
	$(PIP) install -qq -c constraints.txt torch==2.13.0 triton==3.8.0
	DS_BUILD_OPS=0 $(PIP) install -qq -c constraints.txt -e '.[sat,visualglm,test]'
	@# DS_BUILD_OPS=0 leaves DeepSpeed's ops to be compiled on first use; the shared-memory all-reduce that CPU
	@# workers use is compiled here instead, into the TORCH_EXTENSIONS_DIR this Makefile exports to what it runs
	@# (porter started by hand uses torch's default, ~/.cache/torch_extensions, and compiles it there once)
	@echo "compiling DeepSpeed's shared-memory op for CPU workers (once, about 35 s)"
	DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null
	touch $(STAMP)

# The lint and type gate first (seconds), then the suite.
test: $(STAMP) browser
	$(PY) -m ruff check .
	@$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest -q

# mypy over porter/, plugins/ and models/ under their import names (see [tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	@mkdir -p build/mypy
	@ln -sfn ../../plugins/sat build/mypy/porter_sat
	@ln -sfn ../../plugins/torch build/mypy/porter_torch
	@ln -sfn ../../models/visualglm build/mypy/porter_visualglm
	$(PY) -m mypy

# The chat page is tested in the system's Chromium (Playwright's own browser download needs the internet).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		echo "installing Chromium from the system packages, for the chat page's browser test"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# Every SAT release from 0.3.6 on: download, patch, verify, scan, revert (about 1.5 min each); rewrites
# docs/releases.md. `make test` runs three of them (oldest, middle, newest).
test-releases: $(STAMP)
	PORTER_SAT_RELEASES=all $(PY) -m pytest -q tests/releases
	$(PY) tests/releases/matrix.py render

# The plans of every SAT release and of transformers and DeepSpeed against tests/golden/plans.json (about 3 min):
# the planner may change, its output may not. `make test` checks the installed SAT and DeepSpeed.
test-golden: $(STAMP)
	$(PY) tests/golden/plans.py check

# Patch the installed SAT, train the tiny VisualGLM on 2 CPU processes, answer held-out images, revert.
demo: install
	$(VENV)/bin/porter run visualglm demo

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do case "$$b" in *bench_quant_*|*$(SPEED_BENCHES)) continue;; esac; \
		echo "== $$b"; $(PY) $$b || exit 1; done
	$(PY) benchmarks/report.py

# Decode, serving and training speed (about 45 min on 2 cores; 6 GB of stand-ins generated once into porter's
# cache). Upstream VisualGLM-6B's chat() is compared where PORTER_VISUALGLM_UPSTREAM names a checkout of it; the
# decode step is compared with SPEED_AGAINST (a commit) in a temporary worktree.
SPEED_AGAINST ?= c145832
SPEED_BENCHES := bench_decode.py|*bench_decode_step.py|*bench_serve_load.py|*bench_scaling.py|*bench_train_overhead.py|*bench_train_syscpu.py
bench-speed: $(STAMP)
	$(PY) benchmarks/bench_decode_step.py --against $(SPEED_AGAINST)
	$(PY) benchmarks/bench_serve_load.py
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_decode.py --dtype fp32 --modes greedy --rounds 2 --lengths
	$(PY) benchmarks/bench_train_overhead.py
	$(PY) benchmarks/bench_scaling.py
	$(PY) benchmarks/bench_train_syscpu.py
	$(PY) benchmarks/report.py

# --quant on the released 6B's layout (a 15.6 GB stand-in generated once into porter's cache: ~9 min and 32 GB of
# free disk the first time), then its accuracy on the demo's model (`make demo` first) and a heavy-tailed one
bench-quant: $(STAMP)
	$(PY) benchmarks/make_6b_standin.py
	$(PY) benchmarks/bench_quant_6b.py
	$(PY) benchmarks/bench_quant_accuracy.py
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) .cache build *.egg-info
