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
# Debian packages the tests drive as real peers (DICOM encoders/decoders, the kiosk's browser, the
# systemd tools that check the units, openssl for the Triton TLS certificates)
APT_PACKAGES := dcmtk libgdcm-tools chromium orthanc systemd openssl
# The Triton server side (`hipcad serve` and the tests that start a real tritonserver) lives in a venv of
# its own: NVIDIA PyTriton's Python backend needs numpy<2, the product venv has numpy 2 (opencv, via grad-cam).
# It is made from the same base Python: the backend's stub links that interpreter's libpython3.X.so
# (`hipcad serve --check` verifies it and the rest of the set-up).
TRITON_VENV ?= .venv-triton
# Where the base Python is Debian's: its venv module (ensurepip) and its shared libpython (the stub's).
# Installed before any venv is made (base-deps); `make test` installs the peers above as well.
BASE_APT_PACKAGES := $(shell test -x /usr/bin/python3.11 && echo python3.11-venv libpython3.11)

.PHONY: setup triton-env base-deps system-deps demo test gpu-check demo-model sign-demo-model demo-eval lock sbom clean \
  fuzz-seeds fuzz-regress fuzz-ci fuzz fuzz-atheris

$(VENV)/.installed: pyproject.toml Makefile | base-deps
	$(BASE_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q '.[test]'
	touch $@

setup: $(VENV)/.installed

$(TRITON_VENV)/.installed: pyproject.toml Makefile | base-deps
	rm -rf $(TRITON_VENV)
	$(BASE_PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q -e '.[serve]'
	$(TRITON_VENV)/bin/hipcad serve --check
	touch $@

triton-env: $(TRITON_VENV)/.installed

# apt-get install what of $(1) is not installed yet (as root, else through sudo)
define apt_install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

base-deps:
	$(call apt_install,$(BASE_APT_PACKAGES))

system-deps: base-deps
	$(call apt_install,$(APT_PACKAGES))

# worker + kiosk on the bundled demo model, a temporary hot folder, sample radiographs copied in
demo: setup
	$(VENV)/bin/hipcad demo

test: setup system-deps triton-env
	HIPCAD_TRITON_ENV=$(abspath $(TRITON_VENV)) $(PY) -m pytest

# The device install's hashed lock (x86_64 Linux, CPython 3.11: Debian 12's python3): the runtime and
# the appliance extra, every distribution pinned with its sha256s. Regenerate after changing pyproject.toml.
lock:
	$(PIP) install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra appliance --extra cpu --generate-hashes --python-version 3.11 \
	  --python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock" --no-header \
	  -o requirements/appliance.lock

# CycloneDX SBOM of what a device installs (the lock: every component with its version, purl and hashes)
SBOM_DIR ?= build/sbom
sbom:
	@mkdir -p $(SBOM_DIR)
	$(VENV)/bin/cyclonedx-py requirements --pyproject pyproject.toml --output-reproducible --of JSON \
	  -o $(SBOM_DIR)/hipcad-appliance.cdx.json requirements/appliance.lock

# The shipped demo model (runtime/model/demo): TinyNet-C (a small EfficientNet) at 256 px, trained
# from scratch (no pretrained weights can be downloaded here) on 1600 synthetic phantoms with box
# supervision; about 70 minutes on 2 CPU cores; then calibrated (Platt) on 400 other phantoms. Check it
# with `make demo-eval`.
DEMO_DATA ?= .cache/demo-train
DEMO_EVAL ?= .cache/demo-eval
DEMO_VAL ?= .cache/demo-val
demo-model: setup
	$(VENV)/bin/hipcad synth --out $(DEMO_DATA) --count 1600 --seed 1000 --jobs 2 --force -q
	$(VENV)/bin/hipcad train $(DEMO_DATA) --out runtime/model/demo --arch tinynet_c --input-size 256 \
	  --epochs 30 --batch-size 16 --lr 2e-3 --seed 0 --no-torch --synthetic-demo --jobs 2 --cache .cache/halves
	$(VENV)/bin/hipcad synth --out $(DEMO_VAL) --count 400 --seed 31337 --jobs 2 --force -q
	$(VENV)/bin/hipcad calibrate runtime/model/demo $(DEMO_VAL) --method platt
	$(MAKE) sign-demo-model

# The demo bundle is signed by a key made for it alone: the public half ships (runtime/model/keys), the
# private half is destroyed once it has signed, so that key can never vouch for anything else.
sign-demo-model:
	@key=$$(mktemp -d) && trap 'rm -rf "$$key"' EXIT && \
	$(VENV)/bin/hipcad keygen --out "$$key" --name demo-development --no-passphrase >/dev/null && \
	HIPCAD_SIGNER="hipcad demo model (development key; private half destroyed after signing)" \
	  $(VENV)/bin/hipcad sign runtime/model/demo --key "$$key/demo-development.key" && \
	cp "$$key/demo-development.pub" runtime/model/keys/demo-development.pub

# The demo model on 500 fresh phantoms (a seed it never saw): the paper's figures and the heatmap check,
# subgroups, calibration, and the site acceptance report (.cache/demo-eval-html/report.html).
demo-eval: setup
	$(VENV)/bin/hipcad synth --out $(DEMO_EVAL) --count 500 --seed 777 --jobs 2 --force -q
	$(VENV)/bin/hipcad evaluate $(DEMO_EVAL) --json --out .cache/demo-eval-report --report .cache/demo-eval-html

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

# On a machine with an NVIDIA GPU (x86): the first thing to run. A virtualenv of its own, because
# onnxruntime-gpu must never share one with the CPU onnxruntime that `setup` installs; an
# EfficientNet-B4 bundle; then `hipcad gpu-check`, whose JSON report is .cache/gpu/gpu-check.json
# (exit status 0 all measured and within tolerance, 1 a failure, 3 something not measured). The
# default wheels (torch 2.14, onnxruntime-gpu 1.3x) are built for CUDA 13 (NVIDIA driver R580 or
# newer); for an older driver point GPU_PIP_ARGS at CUDA 12 builds. pycuda compiles against the CUDA
# toolkit; without one the TensorRT rows are reported as not measured.
GPU_VENV     ?= .venv-gpu
GPU_TORCH    ?= $(TORCH)
GPU_PIP_ARGS ?=
GPU_CHECK_ARGS ?=
$(GPU_VENV)/.installed: pyproject.toml Makefile
	$(BASE_PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q $(GPU_PIP_ARGS) $(GPU_TORCH)
	$(GPU_VENV)/bin/python -m pip install -q $(GPU_PIP_ARGS) '.[export,gpu]'
	$(GPU_VENV)/bin/python -m pip install -q $(GPU_PIP_ARGS) '.[tensorrt]' || \
	  echo "warning: TensorRT or pycuda could not be installed; gpu-check will report the TensorRT rows as not measured"
	@! $(GPU_VENV)/bin/python -m pip show -q onnxruntime 2>/dev/null || \
	  { echo "error: the CPU onnxruntime got into $(GPU_VENV) beside onnxruntime-gpu"; exit 1; }
	touch $@

gpu-check: $(GPU_VENV)/.installed
	@test -f .cache/gpu/b4/manifest.json || $(GPU_VENV)/bin/hipcad export --random-init --seed 0 --out .cache/gpu/b4
	$(GPU_VENV)/bin/hipcad gpu-check .cache/gpu/b4 --out .cache/gpu/gpu-check.json --cache-dir .cache/gpu/engines $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) $(GPU_VENV) $(TRITON_VENV) .cache build *.egg-info
