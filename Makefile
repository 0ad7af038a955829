# The README's commands. `make demo` and `make test` each set up .venv first (once): the demo with what
# it needs (vae_lab and its launchers), `make setup` and `make test` with every extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_MNIST := ../shared/data/MNIST/raw
DATA := data/MNIST/raw
SHARED_CELEBA := ../shared/data/celeba
CELEBA := data/celeba
CELEBA_FILES := img_align_celeba list_attr_celeba.txt list_eval_partition.txt identity_CelebA.txt
MNIST_GZ := train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz

.PHONY: setup data demo test lint bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,launchers,tensorboard,wandb,mlflow,optuna]"
	touch $@ $(VENV)/.installed-demo

# The demo's share of the set-up (the launchers, not the trackers); `make setup` adds the rest.
$(VENV)/.installed-demo: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[launchers]"
	touch $@

# Copy the official MNIST files when they sit beside the project; else torchvision downloads them on first use.
# Link (never copy: CelebA's terms) the CelebA faces and files that sit beside it into data/celeba/, a real
# folder, so that its image cache is written into the project's data folder, not beside the shared files.
data:
	@mkdir -p $(DATA)
	@for f in $(MNIST_GZ); do \
	  if [ ! -f $(DATA)/$$f ] && [ -f $(SHARED_MNIST)/$$f ]; then cp $(SHARED_MNIST)/$$f $(DATA)/ && echo "copied $$f into $(DATA)"; fi; \
	done
	@if [ -d $(SHARED_CELEBA)/img_align_celeba ]; then \
	  mkdir -p $(CELEBA); \
	  for f in $(CELEBA_FILES); do \
	    if [ ! -e $(CELEBA)/$$f ] && [ -e $(SHARED_CELEBA)/$$f ]; then ln -s "$$(cd $(SHARED_CELEBA) && pwd)/$$f" $(CELEBA)/$$f && echo "linked $$f into $(CELEBA)"; fi; \
	  done; \
	fi

# A short ablation: 1 epoch over the 60,000 training images per run in batches of 64 (938 Adam steps, as
# many as 2 epochs in the article's batches of 128), a lighter evaluation (README, "make demo").
DEMO_ARGS ?= trainer.epochs=1 trainer.batch_size=64 evaluation.iwae_images=200 evaluation.prior_samples=2000 evaluation.quadrature_points=161

demo: $(VENV)/.installed-demo data
	@echo "Demo: the article's loss ablation (reconstruction only, KL only, both) with its VAE, shortened to"
	@echo "  $(DEMO_ARGS)"
	@echo "The full study (10 epochs of 60,000 images each): python -m vae_lab.train -m experiment=ablation"
	$(BIN)/python experiments/ablation.py $(DEMO_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup data lint
	$(BIN)/python -m pytest

# Training speed of vae_lab against a plain PyTorch loop, side by side (a few minutes on CPU).
bench: setup data
	$(BIN)/python -m vae_lab.bench --json bench.json

# On a machine with CUDA: the tests (tests/test_on_device.py on the GPU), the bench on the GPU and a
# 2-epoch ablation, reported in outputs/gpu_check/report.md (docs/speed.md, "On a GPU").
gpu-check: setup data
	$(BIN)/python experiments/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
