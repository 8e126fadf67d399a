# The README's two commands: `make demo` and `make test`. Everything installs from this repo's files.
VENV   ?= .venv
# The venv is made from Debian's own Python 3.11 where present: the Triton Python-backend stub shipped
# with nvidia-pytriton links the system libpython3.11, and a venv from another build of 3.11 fails at
# model load ('_thread.RLock' object has no attribute '_recursion_count').
BASE_PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3)
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch: the pinned release that lies on this workplace's disk (pip's constraint file points there)
TORCH  := torch==2.14.1 torchvision==0.29.1
# Debian packages the tests drive as real peers (DICOM encoders/decoders, the kiosk's browser)
APT_PACKAGES := dcmtk libgdcm-tools chromium orthanc

.PHONY: setup system-deps demo test gpu-check demo-model demo-eval clean fuzz-seeds fuzz-regress fuzz-ci fuzz fuzz-atheris

$(VENV)/.installed: pyproject.toml Makefile
	$(BASE_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q '.[test]'
	touch $@

setup: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# worker + kiosk on the bundled demo model, a temporary hot folder, sample radiographs copied in
demo: setup
	$(VENV)/bin/hipcad demo

test: setup system-deps
	$(PY) -m pytest

# The shipped demo model (runtime/model/demo): TinyNet-C (a small EfficientNet) at 256 px, trained
# from scratch (no pretrained weights can be downloaded here) on 1600 synthetic phantoms with box
# supervision; about 70 minutes on 2 CPU cores. Check it with `make demo-eval`.
DEMO_DATA ?= .cache/demo-train
DEMO_EVAL ?= .cache/demo-eval
demo-model: setup
	$(VENV)/bin/hipcad synth --out $(DEMO_DATA) --count 1600 --seed 1000 --jobs 2 --force -q
	$(VENV)/bin/hipcad train $(DEMO_DATA) --out runtime/model/demo --arch tinynet_c --input-size 256 \
	  --epochs 30 --batch-size 16 --lr 2e-3 --seed 0 --no-torch --synthetic-demo --jobs 2 --cache .cache/halves

# The demo model on 500 fresh phantoms (a seed it never saw): the paper's figures and the heatmap check.
demo-eval: setup
	$(VENV)/bin/hipcad synth --out $(DEMO_EVAL) --count 500 --seed 777 --jobs 2 --force -q
	$(VENV)/bin/hipcad evaluate $(DEMO_EVAL) --json --out .cache/demo-eval-report

# Fuzzing the decode path (tests/fuzz): seeds and the regression corpus are made from recipes,
# never committed. The suite runs the corpus and a minute of mutants (tests/fuzz/test_fuzz.py).
FUZZ_DIR   ?= .cache/fuzz
FUZZ_COUNT ?= 100000
RUN_SEED   ?= $(shell date +%Y%m%d)

$(FUZZ_DIR)/seeds/.made: tests/fuzz/seeds.py $(VENV)/.installed
	$(PY) -m tests.fuzz.seeds $(FUZZ_DIR)/seeds
	touch $@

fuzz-seeds: $(FUZZ_DIR)/seeds/.made

# every recorded fault rebuilt and refused: in the decoding process, and in-process (fixed, not only contained)
fuzz-regress: fuzz-seeds
	$(PY) -m tests.fuzz.regress check --seeds $(FUZZ_DIR)/seeds --decoder pool
	$(PY) -m tests.fuzz.regress check --seeds $(FUZZ_DIR)/seeds --decoder inprocess

# what CI runs (also part of `make test`): the corpus and a minute of mutants
fuzz-ci: setup
	$(PY) -m pytest -q tests/fuzz

# the long run: FUZZ_COUNT mutants of run RUN_SEED through the isolated decoder (about 10 minutes
# per 100,000 on 2 cores); findings in $(FUZZ_DIR)/runs/long-RUN_SEED/findings.jsonl
fuzz: fuzz-regress
	nice -n 10 $(PY) -m tests.fuzz.harness --seeds $(FUZZ_DIR)/seeds --out $(FUZZ_DIR)/runs/long-$(RUN_SEED) \
	  --run-seed $(RUN_SEED) --count $(FUZZ_COUNT)

# coverage-guided (atheris / libFuzzer), 10 minutes, in-process; artifacts in $(FUZZ_DIR)/atheris-RUN_SEED/
fuzz-atheris: fuzz-seeds
	$(PIP) install -q '.[fuzz]'
	mkdir -p $(FUZZ_DIR)/atheris-$(RUN_SEED)/corpus
	HIPCAD_FUZZ_ARTIFACTS=$(FUZZ_DIR)/atheris-$(RUN_SEED) nice -n 10 $(PY) -m tests.fuzz.atheris_target \
	  -max_total_time=600 -timeout=5 -rss_limit_mb=3072 -max_len=65536 -artifact_prefix=$(FUZZ_DIR)/atheris-$(RUN_SEED)/ \
	  $(FUZZ_DIR)/atheris-$(RUN_SEED)/corpus $(FUZZ_DIR)/seeds

# On a machine with an NVIDIA GPU and PyTorch: one command, well under ten minutes.
gpu-check: setup
	@test -f .cache/gpu/b4/manifest.json || $(VENV)/bin/hipcad export --random-init --seed 0 --out .cache/gpu/b4
	$(VENV)/bin/hipcad gpu-check .cache/gpu/b4

clean:
	rm -rf $(VENV) .cache build *.egg-info
