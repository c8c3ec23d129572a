# glimpse: the lab's entry points. Every target bootstraps .venv on first use.
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
# The roots may end in a slash or not: $(call under,ROOT,NAME) is ROOT/NAME either way.
under        = $(patsubst %/,%,$(1))/$(2)
DATA_ROOT   ?= data
STORE_ROOT  ?= stores
RUN_ROOT    ?= runs
DATASET     ?= synthetic
MODEL       ?= regattn
BACKBONE    ?= googlenet
WEIGHTS     ?= imagenet
RUN         ?= $(call under,$(RUN_ROOT),$(DATASET)-$(MODEL))
# STORE= names the store for train, table and evaluate; without it train and table take the one store of
# DATASET under STORE_ROOT, of BACKBONE when BACKBONE is given (make ... BACKBONE=, or the environment).
STORE       ?=
FIND_STORE   = $(if $(STORE),--store $(STORE),--dataset $(DATASET) --store-root $(STORE_ROOT) \
               $(if $(filter command line environment,$(origin BACKBONE)),--backbone $(BACKBONE)))
DEMO_DIR    ?= demo/
PYTEST_ARGS ?=
EXTRACT_ARGS ?=
TRAIN_ARGS  ?=
# CLASSES=a,b,c extracts only those classes of the dataset (recorded in the store's identity)
CLASSES     ?=

.PHONY: help install extract train evaluate table demo test test-fast reliability lint typecheck bench clean

help:
	@echo "make demo                         synthetic dataset -> store -> models -> comparison table"
	@echo "make test                         the whole test suite (make test-fast: every module, a few minutes)"
	@echo "make extract DATASET=ucf11        DATA_ROOT/ucf11 -> STORE_ROOT/ucf11 (BACKBONE=, WEIGHTS=, CLASSES=a,b)"
	@echo "make install                      .venv with glimpse and its tools (every target does it first)"
	@echo "make train MODEL=regattn [DATASET=ucf11] [STORE=path | BACKBONE=] [TRAIN_ARGS=...]"
	@echo "make evaluate [DATASET=ucf11 MODEL=regattn | RUN=runs/ucf11-regattn] [STORE=moved store]"
	@echo "make table DATASET=ucf11 [STORE= | BACKBONE=] [TRAIN_ARGS='--epochs 5']   every model, one table"
	@echo "make bench                        benchmarks under bench/ -> docs/benchmarks.md"

# The stamp is rebuilt when pyproject.toml changes. torch/torchvision are left unpinned so pip
# resolves a matching pair; a torchvision that cannot import (the CPU-only torch trap) fails here.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@$(PY) -c "import torch, torchvision, av, zarr, cv2, dask.distributed; \
		print('torch', torch.__version__, '| torchvision', torchvision.__version__, '| av', av.__version__, '| zarr', zarr.__version__, '| opencv', cv2.__version__)" \
		|| { echo "ERROR: the installed torch/torchvision pair does not import (see README, 'The torch trap')." >&2; exit 1; }
	touch $@

install: $(VENV)/.installed

# The store lands under STORE_ROOT/<dataset>/<backbone>-<config hash>: the same features are extracted once.
extract: install
	$(PY) -m glimpse.extract --dataset $(DATASET) --root $(call under,$(DATA_ROOT),$(DATASET)) --lab $(STORE_ROOT) \
		--backbone $(BACKBONE) --weights $(WEIGHTS) $(if $(CLASSES),--classes $(CLASSES)) $(EXTRACT_ARGS)

# train and table find the dataset's store in the STORE_ROOT catalog (or take STORE=); table and demo train, then
# evaluate (glimpse/experiments.py, above both stages). TRAIN_ARGS go to train and to table (--epochs, --set).
train: install
	$(PY) -m glimpse.train $(FIND_STORE) --model $(MODEL) --out $(RUN) $(TRAIN_ARGS)

evaluate: install
	$(PY) -m glimpse.evaluate --run $(RUN) $(if $(STORE),--store $(STORE))

table: install
	$(PY) -m glimpse table $(FIND_STORE) --runs $(RUN_ROOT) $(TRAIN_ARGS)

demo: install
	$(PY) -m glimpse demo --out $(DEMO_DIR)

# pytest exits 5 when it collected nothing: for this project that is a broken suite, not a pass.
PYTEST = rc=0; $(PY) -m pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests" >&2; exit 1; fi; exit $$rc

test: install
	@$(call PYTEST,)

# the fast tier: every module exercised, the long crash, concurrency and accuracy loops left to make test
test-fast: install
	@$(call PYTEST,-m "not slow")

# the whole suite, rewriting docs/reliability.md when every reliability case ran and passed
reliability: install
	@$(call PYTEST,--reliability-report)

lint: install
	$(VENV)/bin/ruff check .

# pyright (pyrightconfig.json): no unresolved import, and no more errors than .ci/pyright-baseline.json
typecheck: install
	$(PY) .ci/typecheck.py $(TYPECHECK_ARGS)

bench: install
	$(PY) -m bench

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
