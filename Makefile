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

# The main job on a fresh machine: shop data, fast training, ONNX export behind its parity gate,
# the embedded Triton repository, a served search/recommendation session, and a short benchmark.
DEMO_DATA := $(ART)/data/small
DEMO_CKPT := $(ART)/checkpoints/fast
demo: install
	test -f $(DEMO_DATA)/manifest.json || $(AISLE) data --out $(DEMO_DATA) --preset small --seed 0
	test -f $(DEMO_CKPT)/metrics.json || $(AISLE) train --data $(DEMO_DATA) --out $(DEMO_CKPT) --preset fast
	$(AISLE) export onnx --checkpoint $(DEMO_CKPT) --data $(DEMO_DATA) --out $(ART)/onnx
	rm -rf $(ART)/repo
	$(AISLE) export repo --checkpoint $(DEMO_CKPT) --data $(DEMO_DATA) --target embedded \
		--onnx-dir $(ART)/onnx --out $(ART)/repo
	$(PY) scripts/demo.py --repo $(ART)/repo --data $(DEMO_DATA)
	$(AISLE) bench --repo $(ART)/repo --checkpoint $(DEMO_CKPT) --data $(DEMO_DATA) --quick --duration 3 \
		--out $(ART)/bench-quick

lint: install
	$(VENV)/bin/ruff check .

# The benchmark suite on the small shop; data, fast checkpoint and embedded repository are made if
# missing (or stale). Override e.g. BENCH_CKPT=... BENCH_DURATION=... ; report in $(BENCH_OUT)/results.
bench: BENCH_DATA ?= $(ART)/data/small
bench: BENCH_CKPT ?= $(ART)/checkpoints/fast
bench: BENCH_OUT ?= $(ART)/bench
bench: BENCH_DURATION ?= 6
bench: install
	test -f $(BENCH_DATA)/manifest.json || $(AISLE) data --out $(BENCH_DATA) --preset small --seed 0
	test -f $(BENCH_CKPT)/metrics.json || $(AISLE) train --data $(BENCH_DATA) --out $(BENCH_CKPT) --preset fast
	test $(BENCH_OUT)/repo/aisle_repo.json -nt $(BENCH_CKPT)/metrics.json \
		-a $(BENCH_OUT)/repo/aisle_repo.json -nt $(BENCH_DATA)/manifest.json || \
		{ rm -rf $(BENCH_OUT)/repo && $(AISLE) export repo --checkpoint $(BENCH_CKPT) --data $(BENCH_DATA) \
			--target embedded --out $(BENCH_OUT)/repo; }
	$(AISLE) bench --repo $(BENCH_OUT)/repo --checkpoint $(BENCH_CKPT) --data $(BENCH_DATA) \
		--duration $(BENCH_DURATION) --out $(BENCH_OUT)/results

clean:
	rm -rf $(ART) .pytest_cache
