# ddpm-lessons: the commands a newcomer needs are `make train`, `make test` and `make lab`.
#   make train           set up .venv if needed, train end to end on the shipped data (lesson 09,
#                        headless); running it again continues the unfinished run on the same data
#                        DATA=folder trains on your own pictures (sub-folders are read too)
#                        PROFILE=tiny|cpu|gpu picks the size, SIZE=64 the image size, FRESH=1 starts
#                        a new run, CONTINUE=1 goes on although the folder's files changed,
#                        STEPS=N changes the number of steps (default: by the folder's size),
#                        INIT= where to start (default auto: your own folder fine-tunes the shipped
#                        general prior, the cpu profile at 32 px; the shipped portraits, other
#                        profiles, sizes and CONDITIONAL=1 train from scratch; the plan says which
#                        and why): INIT=scratch, INIT=general, INIT=reference (the emoji weights),
#                        AUGMENT=p the non-leaking augmentation's probability (default: 0.2 on a
#                        fine-tune of the general prior, else 0; lesson 10: the network is told
#                        each transform, and samples without any),
#                        OBJECTIVE=flow trains with flow matching instead of the profile's v-prediction
#                        (lesson 15; from scratch, logit-normal times, sampled with DPM-Solver++(2M)-10),
#                        PRECISION=float32 turns bfloat16 training off (default auto: bfloat16
#                        where the CPU has AVX512_BF16 or AMX),
#                        COMPILE=function|xla forces how the training step is compiled (default auto:
#                        XLA on a GPU and on CPUs without AVX-512, tf.function on AVX-512 CPUs),
#                        RUNS=dir keeps run folders somewhere else than runs/,
#                        DISTRIBUTE=off trains on one device where there are several GPUs (default auto:
#                        MirroredStrategy over all of them),
#                        CONDITIONAL=1 trains a class-conditional U-Net for guidance (lesson 13):
#                        classes from the folder's sub-folders (shipped data: subcategory, skin tone),
#                        PROGRESS=lines|bar: training progress as a line every 10 s or one line that
#                        updates (default: bar in a terminal, lines into a file or a pipe)
#   make generate RUN=runs/<run> N=100   N new PNG files from a run's EMA weights (SEED=0)
#                        CLASS=name of a conditional run (CONDITIONAL=1): pictures of that class; a name
#                        of any kind, several of different kinds comma-separated (CLASS=person-role,dark),
#                        or a number (a class of the first kind); GUIDANCE=w the guidance scale (default 2:
#                        lesson 13's measured choice, 82-87% of the samples show the class asked for)
#   make edit RUN=runs/<run> IMAGE=picture.png   SDEdit (lesson 16): N=4 variants of the picture in
#                        <run>/edits/, from seeds SEED=0 .. SEED+N-1, beside the picture as the network
#                        sees it; STRENGTH=0.5 how far they may go (0: the picture, 1: a new sample),
#                        ETA=0 DDIM's eta (1: fresh noise at every step)
#   make inpaint RUN=runs/<run> IMAGE=picture.png MASK=centre-square   fill a hole (lesson 16): N=4
#                        pictures in <run>/inpainted/ (SEED=0), beside the picture with its hole grey;
#                        MASK=left-half|centre-square|strokes or a PNG of the picture's size (white =
#                        keep, black = fill), RESAMPLE=5 RePaint's passes (about 80 network evaluations;
#                        RESAMPLE=1: plain replacement on 50 steps)
#   make test            set up .venv if needed, run the unit tests and every notebook (tiny profile)
#   make lab             set up .venv if needed, open JupyterLab at the course
#   make test-gpu        the unit tests and every notebook at full size (DDPM_PROFILE=gpu), on a machine
#                        with a GPU; MAX_STEPS=500 (default) caps every lesson's training steps
#                        (DDPM_MAX_STEPS): a test that everything runs, not a real training
#   make speed-check     one minute of the gpu profile's training on one device: img/s and its share of
#                        the float16 matmul speed; writes runs/bench/speed-check-gpu.json (PROFILE=gpu)
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
OBJECTIVE ?=
AUGMENT ?=
PRECISION ?=
COMPILE ?=
RUNS ?= runs
DATA ?=
SIZE ?= 0
CONTINUE ?= 0
CONDITIONAL ?= 0
DISTRIBUTE ?=
PROGRESS ?=
RUN ?=
MAX_STEPS ?= 500
N ?= 100
SEED ?= 0
CLASS ?=
GUIDANCE ?=
IMAGE ?=
STRENGTH ?=
MASK ?=
RESAMPLE ?=
ETA ?=
# N= for edit and inpaint only when it was given (their default is 4, not generate's 100)
EDIT_N = $(if $(filter file,$(origin N)),,-n $(N))

.PHONY: setup train generate edit inpaint test test-unit test-gpu speed-check lab notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(TF),dev]"
	@rm -f $(VENV)/.installed-*
	@touch $@

# Lesson 09 headless. First `runs prepare` reads the folder (a bad one stops here, before any run
# folder exists) and picks the run folder: the unfinished run on the same data, profile and size, or
# a new one. Then `runs execute` has papermill run the notebook: what it prints comes here as it is
# printed, and the executed copy (with its figures) is saved in the run folder, next to its
# checkpoints, samples and results. The notebook's kernel cannot see the terminal, so the training
# progress style goes to it in DDPM_PROGRESS: `test -t 1` says whether our output is a terminal.
train: $(STAMP)
	@run=$$(DDPM_PROFILE=$(PROFILE) $(BIN)/python -m ddpm_lessons.runs prepare --runs "$(RUNS)" \
	  --data "$(DATA)" --size $(SIZE) --steps $(STEPS) --init "$(INIT)" --augment "$(AUGMENT)" --precision "$(PRECISION)" \
	  --distribute "$(DISTRIBUTE)" --compile "$(COMPILE)" --objective "$(OBJECTIVE)" \
	  $(if $(filter 1,$(FRESH)),--fresh) $(if $(filter 1,$(CONTINUE)),--continue) \
	  $(if $(filter 1,$(CONDITIONAL)),--conditional)) || exit 2; \
	progress="$(PROGRESS)"; test -n "$$progress" || { test -t 1 && progress=bar || progress=lines; }; \
	echo "run folder: $$run" && \
	DDPM_PROFILE=$(PROFILE) DDPM_PROGRESS=$$progress $(BIN)/python -m ddpm_lessons.runs execute "$$run"

generate: $(STAMP)
	@test -n "$(RUN)" || { echo "error: name a run folder: make generate RUN=runs/<run> N=100" >&2; exit 2; }
	@$(BIN)/python -m ddpm_lessons.runs generate "$(RUN)" -n $(N) --seed $(SEED)$(if $(CLASS), --class "$(CLASS)")$(if $(GUIDANCE), --guidance "$(GUIDANCE)")

edit: $(STAMP)
	@test -n "$(RUN)" || { echo "error: name a run folder: make edit RUN=runs/<run> IMAGE=picture.png STRENGTH=0.5" >&2; exit 2; }
	@test -n "$(IMAGE)" || { echo "error: name a picture: make edit RUN=$(RUN) IMAGE=picture.png STRENGTH=0.5" >&2; exit 2; }
	@$(BIN)/python -m ddpm_lessons.runs edit "$(RUN)" --image "$(IMAGE)" --strength "$(STRENGTH)" --seed $(SEED) \
	  --eta "$(ETA)" $(EDIT_N)

inpaint: $(STAMP)
	@test -n "$(RUN)" || { echo "error: name a run folder: make inpaint RUN=runs/<run> IMAGE=picture.png MASK=centre-square" >&2; exit 2; }
	@test -n "$(IMAGE)" || { echo "error: name a picture: make inpaint RUN=$(RUN) IMAGE=picture.png MASK=centre-square" >&2; exit 2; }
	@test -n "$(MASK)" || { echo "error: name a mask: MASK=left-half|centre-square|strokes or a PNG of the picture's size (white = keep, black = fill)" >&2; exit 2; }
	@$(BIN)/python -m ddpm_lessons.runs inpaint "$(RUN)" --image "$(IMAGE)" --mask "$(MASK)" --seed $(SEED) \
	  --resample "$(RESAMPLE)" --eta "$(ETA)" $(EDIT_N)

# One pytest call runs the unit tests and every notebook (nbval costs ~4 s per call), on two workers that
# each take whole files (conftest.py: one worker left a core idle). DDPM_COMPILE=function:
# a Trainer without a compile choice uses tf.function, whose first trace costs half of XLA's (which "auto"
# picks on CPUs without AVX-512); tests/test_training.py checks that XLA takes the same step.
test: $(STAMP)
	DDPM_PROFILE=tiny DDPM_COMPILE=function $(BIN)/python -m pytest tests notebooks $(PYTEST_NB) -n 2 -q --durations=25

test-unit: $(STAMP)
	DDPM_PROFILE=tiny DDPM_COMPILE=function $(BIN)/python -m pytest tests -q

test-gpu: $(STAMP)
	DDPM_PROFILE=gpu DDPM_MAX_STEPS=$(MAX_STEPS) $(BIN)/python -m pytest tests notebooks $(PYTEST_NB) -q

speed-check: $(STAMP)
	$(BIN)/python -m ddpm_lessons.bench --speed-check --profile $(or $(PROFILE),gpu) --out runs/bench

lab: $(STAMP)
	cd notebooks && ../$(BIN)/jupyter lab

clean:
	rm -rf $(VENV) *.egg-info

# Re-run every lesson in the cpu profile and store its outputs for readers (slow: tens of minutes).
notebooks: $(STAMP)
	DDPM_PROFILE=cpu $(BIN)/python notebooks/store_outputs.py
