# ddpm-lessons: the two commands a newcomer needs are `make test` and `make lab`.
#   make test            set up .venv if needed, run the unit tests and every notebook (tiny profile)
#   make lab             set up .venv if needed, open JupyterLab at the course
#   make test-gpu        the notebooks at full size (DDPM_PROFILE=gpu), on a machine with a GPU
#   TF=gpu make ...      install tensorflow[and-cuda] instead of tensorflow-cpu (Linux + NVIDIA)

PYTHON ?= python3
TF ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TF)
PYTEST_NB := --nbval-lax --nbval-current-env --nbval-cell-timeout=900

.PHONY: setup test test-unit test-gpu lab notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# One pytest call runs the unit tests and every notebook (nbval costs ~4 s per call).
test: $(STAMP)
	DDPM_PROFILE=tiny $(BIN)/python -m pytest tests notebooks $(PYTEST_NB) -q

test-unit: $(STAMP)
	DDPM_PROFILE=tiny $(BIN)/python -m pytest tests -q

test-gpu: $(STAMP)
	DDPM_PROFILE=gpu $(BIN)/python -m pytest tests notebooks $(PYTEST_NB) -q

lab: $(STAMP)
	cd notebooks && ../$(BIN)/jupyter lab

clean:
	rm -rf $(VENV) *.egg-info

# Re-run every lesson in the cpu profile and store its outputs for readers (slow: tens of minutes).
notebooks: $(STAMP)
	DDPM_PROFILE=cpu $(BIN)/python notebooks/store_outputs.py
