# Two commands for a fresh machine (each sets up .venv idempotently first):
#   make demo   - segment the example images with the bundled model (demo_out/), and score it on 40 test images
#   make test   - run the test-suite
# A GPU user: create .venv and install your own torch build first; `make` keeps any torch it finds.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.promptseg-installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/promptseg segment examples/shapes_test_1.png --model shapes --labels "circle,grass" --out demo_out
	$(BIN)/promptseg segment examples/shapes_test_2.png --model shapes --labels "square,sky" --out demo_out
	$(BIN)/promptseg segment examples/shapes_test_5.png --model shapes --labels "triangle,square,sand" --out demo_out
	$(BIN)/promptseg eval --dataset shapes --model shapes --method baseline --limit 40 --out demo_out/eval

test: $(STAMP)
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache
