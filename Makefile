# ELITE for ComfyUI: environment, demo and tests. Everything installs under .cache/ (git-ignored).
CACHE := $(if $(ELITE_CACHE),$(ELITE_CACHE),.cache)
PY := $(CACHE)/venv/bin/python

.PHONY: env demo test lint clean

env:
	bash scripts/bootstrap.sh

demo:
	bash scripts/bootstrap.sh demo
	$(PY) scripts/demo.py

test: env lint
	bash scripts/run_tests.sh

lint: env
	$(PY) -m ruff check .

clean:
	rm -rf .cache
