"""Lessons 09 and 10 — a training run on a folder of pictures, from one command.

A *run folder* (``runs/<YYYYmmdd-HHMMSS>-<profile>-<data>/``) holds everything of one training
run: ``settings.json`` (the profile's knobs, the data folder and a fingerprint of its files),
``checkpoints/``, ``previews/``, and at the end ``samples.png``, ``samples/`` (one PNG per sample),
``results.json`` and ``finished.json``.

    prepare_run          check the folder first (no run folder is made for a bad one), then
                         continue the unfinished run on the *same* folder, profile and image size,
                         or start a new one; a folder whose files changed is said plainly
    default_train_steps  how many steps for a folder of N images (a cap on passes over the data)
    estimate_seconds     the run's time from a few measured steps and sampler evaluations
    generate_pngs        N new PNG files from a run's EMA weights, finished or not
    execute_notebook     lesson 09 headless on a prepared run folder: what it prints, as it prints it

The command line is what ``make train`` and ``make generate`` call::

    python -m ddpm_lessons.runs prepare [--data DIR] [--size S] [--steps N] [--precision P] [--conditional]
                                        [--fresh] [--continue]
    python -m ddpm_lessons.runs execute RUN [--progress bar|lines]
    python -m ddpm_lessons.runs generate RUN [-n 100] [--seed 0] [--out DIR]

A user mistake (a missing or empty folder, no usable picture, a changed folder) ends the command
with a message that names the path and what to do, and exit status 2: never a traceback.
This module imports neither matplotlib nor ipywidgets. It is the command-line layer (about 660 lines):
each part is a step in one run folder's life, and they share its settings and its checks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from .profiles import (PROFILES, Profile, describe_sampler, get_profile, network_evaluations, sampler_options,
                       with_objective)
from .locks import locked_by_another

# The default number of steps is the profile's train_steps, but never more than MAX_PASSES passes
# over the data: a small folder is otherwise seen hundreds of times and the network learns to
# give its pictures back (measured in lesson 10, section 5:
# notebooks/studies/folder_size/folder_size_study.py).
MAX_PASSES = 200
MIN_STEPS = 200          # fewer steps than this give blurs on any folder (lesson 09's previews)
MIN_PICTURES = 10       # fewer: nothing to learn but the pictures themselves, no halves to judge


class UserError(Exception):
    """A mistake in what was asked (bad folder, changed folder): shown as a message, not a traceback."""


class FolderChanged(UserError):
    """The folder of an unfinished run has other files now than when the run started."""


# ----------------------------------------------------------------------------- the folder

def list_folder(path) -> dict:
    """{relative path: size in bytes} of every file under ``path`` that the loader reads."""
    from .data import _list_files
    root = Path(path)
    return {rel: (root / rel).stat().st_size for rel in _list_files(root)}


def fingerprint(files: dict) -> str:
    """sha256 over the sorted 'relative path <tab> size' lines: changes when a file is added,
    removed, renamed or rewritten with another size."""
    text = "".join(f"{rel}\t{size}\n" for rel, size in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe_change(old: dict, new: dict, k: int = 3) -> str:
    """'2 files added (a.png, b.png), 1 removed (c.png)' for two ``list_folder`` results."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    resized = sorted(f for f in set(old) & set(new) if old[f] != new[f])
    parts = []
    for words, names in (("added", added), ("removed", removed), ("changed", resized)):
        if names:
            more = f", ... {len(names) - k} more" if len(names) > k else ""
            parts.append(f"{len(names)} file{'s' * (len(names) != 1)} {words} ({', '.join(names[:k])}{more})")
    return ", ".join(parts) or "no file added or removed"


def read_training_folder(path, image_size: int):
    """``data.read_image_folder`` with a user mistake turned into ``UserError``: (images, report)."""
    from .data import read_image_folder
    try:
        return read_image_folder(path, image_size)
    except (FileNotFoundError, NotADirectoryError, ValueError, PermissionError) as err:
        raise UserError(str(err)) from None


def is_grayscale(images) -> bool:
    """True when every pixel has R = G = B (a folder of grayscale pictures, read as RGB)."""
    images = np.asarray(images)
    return bool(np.all(images[..., 0] == images[..., 1]) and np.all(images[..., 1] == images[..., 2]))


# ----------------------------------------------------------------------------- the plan

def default_train_steps(num_images: int, batch_size: int, profile_steps: int,
                        max_passes: int = MAX_PASSES, min_steps: int = MIN_STEPS) -> int:
    """steps = min(profile_steps, max(min_steps, ceil(max_passes * N / batch))).

    The profile's steps are what a large folder needs; a small folder stops after ``max_passes``
    passes over its N images (e.g. 100 images, batch 32: 625 steps instead of 1,800).
    """
    by_passes = math.ceil(max_passes * num_images / batch_size)
    return int(min(profile_steps, max(min_steps, by_passes)))


# The default for a learner's own folder (lesson 10, section 7; notebooks/studies/own_folder/): fine-tune the
# shipped general prior for at most FINETUNE_STEPS steps with the non-leaking augmentation at
# FINETUNE_AUGMENT. INIT=scratch, STEPS=, AUGMENT= choose otherwise.
FINETUNE_STEPS = 429        # the study's 5-minute budget on a 2-core CPU
FINETUNE_AUGMENT = 0.2      # the probability the general prior was trained with
SHIPPED_NAMES = ("reference", "general")


def choose_init(shipped_data: bool, profile: Profile, conditional: bool = False) -> tuple[str, str]:
    """(init, reason) for a new run when ``INIT`` is not given: "general" (fine-tune the shipped broad
    prior) for your own folder where its network fits, else "" (from scratch), with the reason why."""
    if shipped_data:
        return "", "the shipped portraits train from scratch: that is the course's own recipe (lesson 09)"
    if conditional:
        return "", "a conditional U-Net trains from scratch (the shipped general prior is unconditional)"
    if profile.prediction == "flow":
        return "", "flow matching (OBJECTIVE=flow) trains from scratch: the shipped networks predict v"
    if profile.name != "cpu" or profile.image_size != PROFILES["cpu"].image_size:
        return "", (f"the shipped general prior is the cpu profile's U-Net at 32x32, not the {profile.name} "
                    f"profile's at {profile.image_size}x{profile.image_size}: from scratch")
    from .weights import SHIPPED
    if not (SHIPPED["general"] / "settings.json").exists():
        return "", "the shipped general prior is missing from the package's assets: from scratch"
    return "general", ("your own folder: fine-tuning the shipped general prior beat training from scratch at every "
                       "budget measured (lesson 10, section 7: on animal photographs it never saw, about a third of "
                       "the samples were animals, none from scratch); INIT=scratch trains from scratch instead")


VERDICT_SECONDS = 15     # scoring the final samples (measured: 12 s for 256 at 32x32 on 2 cores)


def estimate_seconds(settings: Profile, start_step: int, step_seconds: float,
                     eval_seconds_per_image: float, final_samples: int = 64,
                     preview_samples: int = 16, with_verdict: bool = True) -> dict:
    """Seconds still to go, by part: training steps, previews and final samples, the verdict.

    training = (train_steps - start_step) x step_seconds
    sampling = (previews x preview_samples + max(final_samples, verdict_samples)) x network evaluations
               x eval_seconds_per_image          (without the verdict: final_samples only)
    scoring  = VERDICT_SECONDS (0 without the verdict)
    """
    steps_left = max(0, settings.train_steps - start_step)
    previews = settings.train_steps // settings.preview_every - start_step // settings.preview_every
    evals = network_evaluations(settings.sampler, settings.sample_steps, settings.timesteps)
    final = max(final_samples, settings.verdict_samples) if with_verdict else final_samples
    scoring = VERDICT_SECONDS if with_verdict else 0.0
    sampling = (previews * preview_samples + final) * evals * eval_seconds_per_image
    training = steps_left * step_seconds
    return {"training": training, "sampling": sampling, "scoring": scoring,
            "total": training + sampling + scoring, "steps_left": steps_left, "previews": previews}


# ----------------------------------------------------------------------------- run folders

def _slug(text: str, limit: int = 32) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:limit].lower() or "data"


def read_settings(run) -> dict:
    """A run's ``settings.json`` with its profile as a ``Profile`` (under the key "profile").

    A knob missing from an older file takes the ``Profile`` default (e.g. prediction = "eps",
    loss_weighting = "none", snr_gamma = 5.0: how every run was trained before those knobs)."""
    saved = json.loads((Path(run) / "settings.json").read_text())
    p = dict(saved["profile"])
    for key in ("channel_mults", "attention_resolutions"):
        p[key] = tuple(p[key])
    if p.get("num_classes") is not None:
        p["num_classes"] = tuple(p["num_classes"])
    known = {f.name for f in dataclasses.fields(Profile)}
    saved["profile"] = Profile(**{k: v for k, v in p.items() if k in known})
    return saved


def _run_matches(run: Path, data_path: str, profile_name: str, image_size: int, conditional: bool,
                 prediction: str | None = None) -> bool:
    try:
        s = read_settings(run)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (s.get("data", {}).get("path") == data_path and s["profile"].name == profile_name
            and s["profile"].image_size == image_size and (s["profile"].num_classes is not None) == conditional
            and (prediction is None or s["profile"].prediction == prediction))


def find_unfinished_run(root, data_path: str, profile_name: str, image_size: int, conditional: bool = False,
                        prediction: str | None = None):
    """The newest run under ``root`` on the same folder, profile, image size, conditioning (and, when
    given, training target: OBJECTIVE=flow never continues a v run), if it is unfinished (no
    ``finished.json``) and no other process trains in it; else None."""
    root = Path(root)
    if not root.is_dir():
        return None
    runs = sorted((p for p in root.iterdir() if p.is_dir() and p.name[:8].isdigit()
                   and _run_matches(p, data_path, profile_name, image_size, conditional, prediction)),
                  key=lambda p: p.name)
    if runs and not (runs[-1] / "finished.json").exists() \
            and not locked_by_another(runs[-1] / "checkpoints" / "lock"):
        return runs[-1]
    return None


def new_run_folder(root, tag: str) -> Path:
    """A new, empty ``root/<YYYYmmdd-HHMMSS>-<tag>``."""
    root = Path(root)
    while True:
        path = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{tag}"
        if not path.exists():
            break
        time.sleep(1)
    path.mkdir(parents=True)
    return path


def prepare_run(root="runs", data=None, profile: Profile | None = None, image_size: int = 0,
                steps: int = 0, fresh: bool = False, continue_changed: bool = False,
                init_from: str = "", precision: str = "", conditional: bool = False, distribute: str = "",
                compile: str = "", augment: float | None = None, objective: str = ""):
    """Check the folder, then pick the run folder: returns ``(run_path, plan)``.

    data: a folder of pictures (None or "": the shipped emoji portraits). The folder is read
    *before* any run folder is made, so a bad one leaves nothing behind (``UserError``).
    An unfinished run on the same folder, profile and image size is continued unless ``fresh``;
    if the folder's files changed since it started, ``FolderChanged`` says what changed, unless
    ``continue_changed``. A new run gets the default step count for the folder's size
    (``default_train_steps``) unless ``steps`` is given, and a batch no larger than the folder.
    ``precision`` ("float32", "bfloat16", "auto"; "" keeps the profile's) sets the training compute
    of a new or a continued run (checkpoints hold float32 weights either way); ``compile`` ("function",
    "xla", "auto"; "" keeps the profile's) the training step's compilation, likewise.
    ``conditional``: train a class-conditional U-Net (lesson 13) on the folder's labels
    (``data.class_labels``: the shipped portraits' subcategory and skin tone, else the first level of
    sub-folders); ``settings.json`` records the class names under "labels".
    ``init_from``: "" (from scratch), "reference" or "general" (``training.SHIPPED``: a new run starts
    from those weights; "general" has the augmentation input), or "auto" (``make train``'s default:
    ``choose_init`` picks, and a fine-tune of the general prior gets ``FINETUNE_STEPS`` and
    ``FINETUNE_AUGMENT`` unless ``steps`` or ``augment`` say otherwise; the plan says which and why).
    ``augment``: the non-leaking augmentation's probability p (lesson 10; None keeps the profile's);
    p > 0 gives the U-Net the augmentation-label input.
    ``objective``: "" (the profile's target), "eps", "v" or "flow" (flow matching, lesson 15: trained
    from scratch with ``profiles.FLOW_TIME_SAMPLING``, sampled with ``profiles.FLOW_SAMPLING``).
    """
    from .data import default_dataset_path
    profile = with_objective(profile or get_profile(), objective)     # Profile validates the result
    if precision:
        profile = profile.replace(precision=precision)          # Profile validates the value
    if distribute:
        profile = profile.replace(distribute=distribute)        # "auto" (several GPUs) or "off"
    if compile:
        profile = profile.replace(compile=compile)              # "auto", "function" or "xla"
    if image_size:
        profile = profile.replace(image_size=int(image_size))   # Profile validates the size
    folder = Path(data).expanduser() if data else default_dataset_path()
    chosen = None
    if init_from == "auto":
        shipped = folder.resolve() == default_dataset_path().resolve()
        init_from, reason = choose_init(shipped, profile, conditional)
        chosen = {"init": init_from or "scratch", "reason": reason}
        if init_from == "general":
            augment = FINETUNE_AUGMENT if augment is None else augment
    if augment is not None:
        profile = profile.replace(augment_p=float(augment))     # Profile validates p
    if init_from:
        from .weights import shipped_settings
        profile = profile.replace(augment_dim=shipped_settings(init_from).get("augment_dim", 0))
        if profile.augment_p > 0 and not profile.augment_dim:
            raise UserError(f"AUGMENT={profile.augment_p:g} with INIT={init_from}: the shipped {init_from} network "
                            "has no augmentation input, so it could not be told the transforms and would learn "
                            "to draw them; use INIT=general, or no AUGMENT=")
    if profile.augment_p > 0 and not init_from:
        from .augment import AUGMENT_DIM
        profile = profile.replace(augment_dim=AUGMENT_DIM)      # the network is told the transforms
    images, report = read_training_folder(folder, profile.image_size)
    files = list_folder(folder)
    data_path = str(folder.resolve())
    n = report.num_images
    if n < MIN_PICTURES:
        raise UserError(f"the folder {folder} has only {n} usable picture{'s' * (n != 1)}: a diffusion model "
                        f"needs at least {MIN_PICTURES} (with fewer it can only learn them by heart, and the "
                        "verdict of lesson 11 cannot split them in two halves); add pictures of the same kind")
    plan = {"images": n, "report": report, "grayscale": is_grayscale(images), "notes": [], "chosen": chosen}
    kinds = None
    if conditional:
        from .data import class_labels
        try:
            labels, kinds = class_labels(report)
        except ValueError as err:
            raise UserError(f"{err}; or train without CONDITIONAL=1") from None
        profile = profile.replace(num_classes=tuple(len(names) for _, names in kinds))
        unlabelled = int(np.sum(labels[:, 0] == len(kinds[0][1])))
        if unlabelled:
            plan["notes"].append(f"{unlabelled} pictures lie at the folder's top level, in no sub-folder: "
                                 "they train with the 'no label' token")

    run = None if fresh else find_unfinished_run(root, data_path, profile.name, profile.image_size, conditional,
                                                 profile.prediction)
    if run is not None:
        saved = read_settings(run)
        old_files = json.loads((run / "data_files.json").read_text()) if (run / "data_files.json").exists() else {}
        if saved["data"]["fingerprint"] != fingerprint(files) and not continue_changed:
            raise FolderChanged(
                f"the folder {folder} has changed since the unfinished run {run.name} started on it: "
                f"{describe_change(old_files, files)}. Start over on the folder as it is now with FRESH=1 "
                f"(python -m ddpm_lessons.runs prepare --fresh), or go on training the run with CONTINUE=1 "
                f"(--continue).")
        settings = saved["profile"]
        changes = {k: v for k, v in (("train_steps", int(steps)), ("precision", precision),
                                     ("distribute", distribute), ("compile", compile)) if v}
        if any(getattr(settings, k) != v for k, v in changes.items()):
            settings = settings.replace(**changes)
            saved["profile"] = dataclasses.asdict(settings)
            (run / "settings.json").write_text(json.dumps(saved, indent=1))
        plan.update(run=run, settings=settings, continued=True)
        return run, plan

    batch = min(profile.batch_size, n)
    if batch < profile.batch_size:
        plan["notes"].append(f"only {n} images: the batch is {batch} instead of {profile.batch_size}")
    train_steps = int(steps) or default_train_steps(n, batch, profile.train_steps)
    if chosen and init_from == "general" and not steps and train_steps > FINETUNE_STEPS:
        train_steps = FINETUNE_STEPS
        plan["notes"].append(f"{train_steps} steps: a fine-tune of the general prior (STEPS= to change it)")
    elif not steps and train_steps < profile.train_steps:
        plan["notes"].append(f"{train_steps} steps instead of the profile's {profile.train_steps}: at most "
                             f"{MAX_PASSES} passes over {n} images (more would teach the network to copy them)")
    if plan["grayscale"]:
        plan["notes"].append("every picture is grayscale: it trains as RGB with R = G = B, and the new "
                             "images are saved as grayscale PNG files")
    settings = profile.replace(batch_size=batch, train_steps=train_steps,
                               preview_every=min(profile.preview_every, max(1, train_steps // 4)),
                               checkpoint_every=min(profile.checkpoint_every, max(1, train_steps // 4)))
    name = "emoji-portraits" if data_path == str(default_dataset_path().resolve()) else folder.resolve().name
    run = new_run_folder(root, f"{profile.name}-{_slug(name)}")
    (run / "data_files.json").write_text(json.dumps(files, indent=0))
    (run / "settings.json").write_text(json.dumps({
        "profile": dataclasses.asdict(settings), "init_from": init_from, "grayscale": plan["grayscale"],
        **({"chosen": chosen} if chosen else {}),
        "notes": plan["notes"],
        **({"labels": [{"kind": kind, "classes": names} for kind, names in kinds]} if kinds else {}),
        "data": {"path": data_path, "fingerprint": fingerprint(files), "files": len(files), "images": n},
    }, indent=1))
    plan.update(run=run, settings=settings, continued=False)
    return run, plan


def describe_run(run) -> str:
    """What this run will do, from its ``settings.json``, in a few lines."""
    run = Path(run)
    saved = read_settings(run)
    s, n = saved["profile"], saved["data"]["images"]
    continued = (run / "checkpoints" / "checkpoint").exists()
    lines = [f"{'continuing the' if continued else 'new'} run {run.name} on {Path(saved['data']['path']).name}"
             + (f" from the shipped {saved['init_from']} weights" if saved.get("init_from") else ""),
             f"  images      {n} (after de-duplication) at {s.image_size}x{s.image_size}",
             f"  training    {s.train_steps} steps of {s.batch_size} images = "
             f"{s.train_steps * s.batch_size / n:.0f} passes over the data",
             f"  previews    every {s.preview_every} steps with {describe_sampler(s)}; checkpoints every "
             f"{s.checkpoint_every} steps",
             *([f"  augment     each transform (quarter turns, shifts, scaling) with p = {s.augment_p:g}, "
                "the network told which (lesson 10)"] if s.augment_p else []),
             f"  network     base width {s.base_width}, width mults {','.join(map(str, s.channel_mults))}, "
             f"{s.num_res_blocks} res block{'s' * (s.num_res_blocks != 1)} per level; {s.schedule} schedule, "
             f"learning rate {s.learning_rate:g}, EMA decay {s.ema_decay:g}"]
    for kind in saved.get("labels", []):
        lines.append(f"  labels      {kind['kind']}: {len(kind['classes'])} class{'es' * (len(kind['classes']) != 1)} ({', '.join(kind['classes'][:6])}"
                     f"{', ...' if len(kind['classes']) > 6 else ''}), each dropped with p = {s.label_dropout:g}")
    if saved.get("chosen"):
        lines.append(f"  start       {saved['chosen']['init']}, chosen by default: {saved['chosen']['reason']}")
    lines += [f"  note: {note}" for note in saved.get("notes", [])]
    return "\n".join(lines)


def time_sampler_eval(model, schedule, batch: int = 16, prediction: str = "eps") -> float:
    """Seconds per image per network evaluation while sampling (DDIM loop, or Euler's for a flow network,
    after tracing it); ``prediction``: what ``model`` predicts (the run's ``settings.prediction``)."""
    from .sampling import generate
    sampler = "euler" if prediction == "flow" else "ddim"
    generate(model, schedule, batch, sampler, 2, 1.0, seed=0, prediction=prediction)   # traces the loop
    t0 = time.perf_counter()
    generate(model, schedule, batch, sampler, 4, 1.0, seed=0, prediction=prediction)
    return (time.perf_counter() - t0) / (4 * batch)


def format_estimate(est: dict, settings: Profile, step_seconds: float) -> str:
    """The estimate as a sentence, with how to change it."""
    s = settings
    return (f"estimate on this machine: {est['training'] / 60:.1f} min for {est['steps_left']} steps "
            f"(measured {step_seconds:.2f} s/step = {s.batch_size / step_seconds:.0f} img/s) + "
            f"{(est['sampling'] + est['scoring']) / 60:.1f} min of sampling and scoring = about "
            f"{math.ceil(est['total'] / 60)} min from now. "
            f"To change it: STEPS=N (now {s.train_steps}), SIZE=16 or a smaller folder.")


# ----------------------------------------------------------------------------- new pictures

def load_ema_model(run):
    """(EMA U-Net, schedule, settings) from a run folder's latest checkpoint, finished or not."""
    import tensorflow as tf
    from .schedule import NoiseSchedule
    from .unet import build_unet
    run = Path(run)
    if not (run / "settings.json").exists():
        raise UserError(f"{run} is not a run folder (it has no settings.json); give a folder under runs/")
    saved = read_settings(run)
    settings = saved["profile"]
    latest = tf.train.latest_checkpoint(str(run / "checkpoints"))
    if latest is None:
        raise UserError(f"the run {run} has no checkpoint yet (one is written every "
                        f"{settings.checkpoint_every} steps); train it longer first (make train)")
    ema = build_unet(settings, name="ema_unet")
    status = tf.train.Checkpoint(ema_model=ema).restore(latest).expect_partial()   # the rest: optimizer, raw model
    try:
        status.assert_existing_objects_matched()           # but every EMA weight must be in the checkpoint
    except AssertionError as e:
        raise UserError(f"the checkpoint {Path(latest).name} of {run} does not hold every weight of the network its "
                        f"settings.json describes ({str(e).splitlines()[0][:160]}): it was written by another "
                        "network; train the run again (make train FRESH=1)") from None
    return ema, NoiseSchedule.from_kind(settings.schedule, settings.timesteps), saved, Path(latest).name


def save_pngs(images, folder, prefix: str = "sample", grayscale: bool = False) -> list:
    """Write images in [-1, 1] (N, H, W, 3) as ``folder/<prefix>_0000.png`` ...; returns the paths."""
    from PIL import Image
    from .data import from_unit_range
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = from_unit_range(images)
    paths = []
    for i, img in enumerate(pixels):
        path = folder / f"{prefix}_{i:04d}.png"
        if grayscale:
            Image.fromarray(np.round(img.mean(-1)).astype(np.uint8), "L").save(path)
        else:
            Image.fromarray(img, "RGB").save(path)
        paths.append(path)
    return paths


def generate_pngs(run, num_images: int = 100, seed: int = 0, out=None, progress: bool = True) -> list:
    """``num_images`` new pictures from a run's EMA weights as PNG files in ``out``
    (default ``<run>/generated/``), named ``seed<seed>_step<step>_NNNN.png``; returns the paths."""
    from .sampling import generate
    ema, schedule, saved, ckpt = load_ema_model(run)
    s = saved["profile"]
    step = int(ckpt.rsplit("-", 1)[-1])
    if progress:
        print(f"drawing {num_images} images from {Path(run).name} ({ckpt}, {describe_sampler(s)}) ...",
              flush=True)
    images = generate(ema, schedule, num_images, seed=seed, **sampler_options(s))
    out = Path(out) if out else Path(run) / "generated"
    return save_pngs(images, out, prefix=f"seed{seed}_step{step}", grayscale=saved.get("grayscale", False))


# ----------------------------------------------------------------------------- lesson 09 headless

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "09_full_training.ipynb"

# TensorFlow logs these at start-up through absl before its log level is set up, so
# TF_CPP_MIN_LOG_LEVEL cannot silence them: "WARNING: All log messages before absl::InitializeLog()
# ..." and info lines such as "I0000 00:00:1795697619.978619  7672 port.cc:153] oneDNN custom ...".
TF_STARTUP_LINE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} [\d:. ]+\d+ \S+:\d+\] )")


class StartupLineFilter:
    """A writable stream for the notebook's stderr: passes whole lines on to ``out``, except
    TensorFlow's start-up lines (``TF_STARTUP_LINE``); its warnings and errors go through."""

    def __init__(self, out):
        self.out, self.pending = out, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        kept = [line for line in lines if not TF_STARTUP_LINE.match(line)]
        if kept:
            self.out.write("\n".join(kept) + "\n")
        return len(text)

    def flush(self):
        self.out.flush()

    def close(self):
        if self.pending and not TF_STARTUP_LINE.match(self.pending):
            self.out.write(self.pending)
        self.pending = ""
        self.out.flush()


class start_up_lines_discarded:
    """A context in which file descriptor 2 goes to /dev/null: TensorFlow's first import writes its
    start-up lines there (``TF_STARTUP_LINE``) before any log level applies. A Python exception raised
    inside still reaches the terminal: it is printed after the context has put stderr back."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)
        return False


def execute_notebook(run, notebook=NOTEBOOK, progress: str = "") -> int:
    """Run lesson 09 headless on a run folder made by ``prepare_run`` (what ``make train`` does).

    papermill executes ``notebook`` into ``<run>/09_full_training.ipynb`` with ``run_dir`` set.
    What the notebook prints reaches this process's stdout and stderr as it is printed (no cell
    markers; TensorFlow's start-up lines left out); its figures and the form stay in the saved
    notebook. The kernel's own log (e.g. jupyter's notice that it talks over local TCP) and the
    second copy of the native libraries' output that ipykernel writes there go to ``<run>/kernel.log``.
    ``progress`` ("bar" or "lines") is passed to the kernel in ``DDPM_PROGRESS`` (``Trainer.fit``);
    by default the environment's, else "bar" when stdout is a terminal. Returns the exit status:
    0, 1 when a cell failed (its traceback is printed), 130 when interrupted.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError
    shown_as = str(run)                                    # as the user named it
    run, notebook = Path(run).resolve(), Path(notebook).resolve()
    if not (run / "settings.json").exists():
        raise UserError(f"{run} is not a run folder (it has no settings.json): make one with "
                        "python -m ddpm_lessons.runs prepare")
    progress = progress or os.environ.get("DDPM_PROGRESS") or ("bar" if sys.stdout.isatty() else "lines")
    if progress not in ("bar", "lines"):
        raise UserError(f"progress {progress!r}: give bar (a line that updates) or lines (a line every 10 s)")
    os.environ["DDPM_PROGRESS"] = progress                 # the kernel inherits the environment
    sys.stdout.flush(); sys.stderr.flush()
    # The kernel inherits file descriptors 1 and 2: point them at kernel.log while it runs, and
    # write the notebook's output (and this process's own messages) to copies of the originals.
    saved_fds = os.dup(1), os.dup(2)
    out = open(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    err = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    notebook_err = StartupLineFilter(err)
    saved_streams = sys.stdout, sys.stderr
    t0 = time.perf_counter()
    with open(run / "kernel.log", "ab") as log:
        os.dup2(log.fileno(), 1); os.dup2(log.fileno(), 2)
        sys.stdout, sys.stderr = out, err
        try:
            papermill.execute_notebook(str(notebook), str(run / notebook.name), parameters={"run_dir": str(run)},
                                       cwd=str(notebook.parent), progress_bar=False, log_output=False,
                                       stdout_file=out, stderr_file=notebook_err)
            status = 0
        except PapermillExecutionError as error:
            notebook_err.close()                           # its last partial line first
            print(f"{error}\nerror: lesson 09 stopped at the cell above; the notebook with its outputs is "
                  f"{shown_as}/{notebook.name}", file=err)
            status = 1
        except KeyboardInterrupt:
            print("\ninterrupted: `make train` again continues this run from its last checkpoint", file=err)
            status = 130
        finally:
            notebook_err.close()
            for fd, copy in zip((1, 2), saved_fds):
                os.dup2(copy, fd); os.close(copy)
            sys.stdout, sys.stderr = saved_streams
            out.close(); err.close()
    if status == 0:
        results = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else {}
        print(f"\nfinished in {(time.perf_counter() - t0) / 60:.1f} min; in {shown_as}: samples.png (one PNG per "
              f"sample in samples/), previews/, results.json, {notebook.name} (this run's notebook, with its figures)")
        if results.get("verdict", {}).get("advice"):
            print("next:", results["verdict"]["advice"])
    return status


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m ddpm_lessons.runs", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="check a folder and print the run folder to train in")
    a.add_argument("--data", default="", help="folder of pictures (default: the shipped emoji portraits)")
    a.add_argument("--runs", default="runs", help="where run folders live")
    a.add_argument("--size", type=int, default=0, help="image size in pixels (default: the profile's)")
    a.add_argument("--steps", type=int, default=0, help="training steps (default: by the folder's size)")
    a.add_argument("--init", default="auto", help="auto (default: 'general' for your own folder, 'scratch' for "
                                                  "the shipped portraits), scratch, 'reference' = the shipped "
                                                  "emoji weights, 'general' = the shipped broad prior (lesson 10)")
    a.add_argument("--augment", default="", help="non-leaking augmentation probability p in [0, 1) (lesson 10)")
    a.add_argument("--precision", default="", help="training compute: auto (default), float32 or bfloat16")
    a.add_argument("--distribute", default="", help="auto (default: all GPUs when there are several) or off")
    a.add_argument("--compile", default="", help="the training step: auto (default: by the machine), function or xla")
    a.add_argument("--objective", default="", help="the training target: the profile's (default: v in cpu), "
                                                  "eps, v or flow (flow matching, lesson 15)")
    a.add_argument("--conditional", action="store_true",
                   help="class-conditional training (lesson 13): labels from the folder's sub-folders "
                        "(the shipped portraits: subcategory and skin tone)")
    a.add_argument("--fresh", action="store_true", help="start a new run even if one is unfinished")
    a.add_argument("--continue", dest="continue_changed", action="store_true",
                   help="go on with an unfinished run although its folder changed")
    e = sub.add_parser("execute", help="run lesson 09 headless on a run folder made by prepare")
    e.add_argument("run", help="a run folder printed by prepare")
    e.add_argument("--progress", default="", choices=["", "bar", "lines"],
                   help="training progress: bar (updates in place) or lines (one every 10 s); "
                        "default: DDPM_PROGRESS, else bar when the output is a terminal")
    g = sub.add_parser("generate", help="write N new PNG files from a run's EMA weights")
    g.add_argument("run", help="a run folder, e.g. runs/20261126-101500-cpu-my-pictures")
    g.add_argument("-n", "--num", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="output folder (default: <run>/generated)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "prepare":
            if args.init not in ("", "auto", "scratch", "reference", "general"):
                raise UserError(f"INIT={args.init!r} is not known: leave it out (the default: the general prior "
                                "for your own folder, from scratch for the shipped portraits), or give "
                                "INIT=scratch, INIT=general (the shipped broad prior) or INIT=reference "
                                "(the shipped emoji weights)")
            init = {"": "auto", "scratch": ""}.get(args.init, args.init)
            try:
                augment = float(args.augment) if args.augment.strip() else None
            except ValueError:
                raise UserError(f"AUGMENT={args.augment!r} is not a number: give a probability such as 0.15, "
                                "or 0 for no augmentation") from None
            if augment is not None and not 0 <= augment < 1:
                raise UserError(f"AUGMENT={args.augment}: the augmentation probability must lie in [0, 1), "
                                "e.g. 0.15 (0: no augmentation)")
            try:
                with start_up_lines_discarded():      # get_profile imports TensorFlow to look for a GPU
                    profile = get_profile()
            except ValueError as err:
                raise UserError(str(err)) from None
            if init in SHIPPED_NAMES and (profile.name != "cpu" or args.size not in (0, profile.image_size)):
                raise UserError(f"INIT={args.init} needs PROFILE=cpu at its image size (no SIZE=): the shipped "
                                "weights are the cpu profile's U-Net at 32x32")
            if args.objective not in ("", "eps", "v", "flow"):
                raise UserError(f"OBJECTIVE={args.objective!r} is not known: leave it out (the profile's target), "
                                "or give OBJECTIVE=flow (flow matching, lesson 15), v or eps")
            if init in SHIPPED_NAMES and args.objective in ("eps", "flow"):
                raise UserError(f"INIT={args.init} and OBJECTIVE={args.objective} cannot go together: the shipped "
                                "weights predict v; leave INIT= out to train from scratch")
            if init in SHIPPED_NAMES and args.conditional:
                raise UserError(f"INIT={args.init} and CONDITIONAL=1 cannot go together: the shipped weights are "
                                "an unconditional U-Net; a conditional one trains from scratch")
            if init in SHIPPED_NAMES:
                from .weights import SHIPPED
                if not (SHIPPED[args.init] / "settings.json").exists():
                    raise UserError(f"INIT={args.init}: the shipped weights are missing from the package's "
                                    f"assets ({SHIPPED[args.init].name}); train from scratch (INIT=scratch)")
            try:
                run, plan = prepare_run(args.runs, args.data, profile, args.size, args.steps, args.fresh,
                                        args.continue_changed, init, args.precision, args.conditional,
                                        args.distribute, args.compile, augment, args.objective)
            except ValueError as err:        # e.g. SIZE=30 that the U-Net cannot halve
                raise UserError(str(err)) from None
            print(run)            # the notebook prints the folder's report and the plan
        elif args.cmd == "execute":
            return execute_notebook(args.run, progress=args.progress)
        else:
            if args.num < 1:
                raise UserError(f"N={args.num}: ask for at least one image")
            paths = generate_pngs(args.run, args.num, args.seed, args.out)
            print(f"wrote {len(paths)} PNG files to {paths[0].parent}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
