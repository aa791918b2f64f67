# ddpm-lessons: the commands a newcomer needs are `make train`, `make test` and `make lab`.
#   make train           set up .venv if needed, train end to end on the shipped data (lesson 09,
#                        headless); running it again continues the newest unfinished run
#                        PROFILE=tiny|cpu|gpu picks the size, FRESH=1 starts a new run,
#                        STEPS=N changes the number of steps, INIT=reference starts from the shipped weights,
#                        RUNS=dir keeps run folders somewhere else than runs/
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

PROFILE ?=
FRESH ?= 0
STEPS ?= 0
INIT ?=
RUNS ?= runs

.PHONY: setup train test test-unit test-gpu lab notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# Lesson 09 headless: papermill streams the notebook's output here and saves the executed copy in
# the run folder (runs/<timestamp>/), next to its checkpoints, samples.png and loss.png.
train: $(STAMP)
	@run=$$(DDPM_PROFILE=$(PROFILE) $(BIN)/python -c "from ddpm_lessons.training import run_folder; \
	from ddpm_lessons.profiles import get_profile; \
	print(run_folder('$(RUNS)', fresh=$(FRESH) == 1, tag=get_profile().name))") && echo "run folder: $$run" && \
	DDPM_PROFILE=$(PROFILE) $(BIN)/papermill notebooks/09_full_training.ipynb $$run/09_full_training.ipynb \
	  --cwd notebooks --log-output --no-progress-bar -p run_dir "$$(cd $$run && pwd)" -p train_steps $(STEPS) \
	  -p init_from "$(INIT)"

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
