# ELITE for ComfyUI: environment, demo and tests. Everything installs under .cache/ (git-ignored).
PY := .cache/venv/bin/python

.PHONY: env demo test clean

env:
	bash scripts/bootstrap.sh

demo: env
	$(PY) scripts/demo.py

test: env
	bash scripts/run_tests.sh

clean:
	rm -rf .cache
