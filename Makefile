# ELITE for ComfyUI: environment, demo and tests. Everything installs under .cache/ (git-ignored).
PY := .cache/venv/bin/python

.PHONY: env demo test clean

env:
	bash scripts/bootstrap.sh

demo: env
	$(PY) scripts/demo.py

test: env
	$(PY) -m pytest -q

clean:
	rm -rf .cache
