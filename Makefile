# Every target creates/uses the local venv, so a fresh machine needs only python3 and make.
VENV      ?= .venv
PY        := $(VENV)/bin/python
AISLE     := $(VENV)/bin/aisle
ART       ?= artifacts
PIP       := PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -q

.PHONY: install test demo lint bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	# CPU torch first: the pinned CPU wheel, so nothing pulls a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -rs

demo: install
	$(AISLE) data --out $(ART)/data --preset small --seed 0

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(ART) .pytest_cache
