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
    generate_pngs        N new PNG files from a run's EMA weights, finished or not; of a class (CLASS=,
                         ``class_row``) with guidance for a conditional run
    edit_pngs            lesson 16's SDEdit of one picture (read as a training picture), N seeds
    inpaint_pngs         lesson 16's inpainting (RePaint) of one picture's hole: a preset or a PNG mask
    execute_notebook     lesson 09 headless on a prepared run folder: what it prints, as it prints it

The command line is what ``make train``, ``make generate``, ``make edit`` and ``make inpaint`` call::

    python -m ddpm_lessons.runs prepare [--data DIR] [--size S] [--steps N] [--precision P] [--conditional]
                                        [--fresh] [--continue]
    python -m ddpm_lessons.runs execute RUN [--progress bar|lines]
    python -m ddpm_lessons.runs generate RUN [-n 100] [--seed 0] [--out DIR] [--class NAME[,NAME]] [--guidance 2]
    python -m ddpm_lessons.runs edit RUN --image PICTURE [--strength 0.5] [-n 4] [--seed 0] [--eta 0]
    python -m ddpm_lessons.runs inpaint RUN --image PICTURE --mask PRESET|PNG [-n 4] [--seed 0] [--resample 5]

A user mistake (a missing or empty folder, no usable picture, a changed folder) ends the command
with a message that names the path and what to do, and exit status 2: never a traceback.
This module imports neither matplotlib nor ipywidgets. It is the command-line layer (about 1,020 lines):
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
    """Write images in [-1, 1] (N, H, W, 3) as ``folder/<prefix>_0000.png`` ... (``write_png``); returns the paths."""
    return [write_png(image, Path(folder) / f"{prefix}_{i:04d}.png", grayscale) for i, image in enumerate(images)]


def generate_pngs(run, num_images: int = 100, seed: int = 0, out=None, progress: bool = True,
                  classes: str = "", guidance: float | None = None) -> list:
    """``num_images`` new pictures from a run's EMA weights as PNG files in ``out``
    (default ``<run>/generated/``), named ``seed<seed>_step<step>_NNNN.png``; returns the paths.
    ``classes`` (CLASS=, a conditional run): the pictures are asked for those classes (``class_row``)
    with guidance w = ``guidance`` (default ``DEFAULT_GUIDANCE``), and the names say both, e.g.
    ``seed0_step1800_person-role_w2_0000.png``."""
    from .sampling import generate
    ask, tail = {}, ""
    if classes:
        guidance = DEFAULT_GUIDANCE if guidance is None else float(guidance)
        row, names = class_row(classes, run_settings(run))
        ask = {"labels": np.tile(row, (num_images, 1)), "guidance": guidance}
        tail = f"_{'+'.join(_slug(name) for name in names)}_w{guidance:g}"
    ema, schedule, saved, ckpt = load_ema_model(run)
    s = saved["profile"]
    step = int(ckpt.rsplit("-", 1)[-1])
    if progress:
        what = f" of {' + '.join(names)} at w = {guidance:g}" if classes else ""
        print(f"drawing {num_images} images{what} from {Path(run).name} ({ckpt}, {describe_sampler(s)}) ...",
              flush=True)
    images = generate(ema, schedule, num_images, seed=seed, **sampler_options(s), **ask)
    out = Path(out) if out else Path(run) / "generated"
    return save_pngs(images, out, prefix=f"seed{seed}_step{step}{tail}", grayscale=saved.get("grayscale", False))


# ----------------------------------------------------------------------------- lesson 16: use your model

# GUIDANCE= left out: lesson 13's measured choice (notebooks/studies/guidance/results.json). At w = 2 the
# classifier finds the class asked for in 82.5% (subcategory) and 87% (skin tone) of the samples, both
# above the course's goal of 80% (w = 1: 61% and 62%), with the best detail KID of the w measured (0 to 4).
DEFAULT_GUIDANCE = 2.0
EDIT_STRENGTH = 0.5      # STRENGTH= left out: half-way between the picture (0) and a new sample (1)
EDIT_STEPS = 50          # SDEdit's DDIM grid at strength 1 (``editing.sdedit``'s default): 0.5 walks 25 of its steps
EDITS_PER_PICTURE = 4    # N= left out for edit and inpaint
INPAINT_RESAMPLE = 5     # RePaint (Lugmayr et al. 2022): every 5 steps walked 5 times, on 20 steps = 80
INPAINT_JUMP = 5         # network evaluations; RESAMPLE=1 is the plain replacement on 50 steps (lesson 16)
INPAINT_STEPS = 20
PLAIN_INPAINT_STEPS = 50
HOLE_GREY = 128          # how the hole is shown in <stem>_<mask>_masked.png


def run_settings(run) -> dict:
    """``read_settings(run)``, or ``UserError`` for a folder that is not a run folder."""
    run = Path(run)
    if not (run / "settings.json").exists():
        raise UserError(f"{run} is not a run folder (it has no settings.json); give a folder under runs/")
    return read_settings(run)


def describe_classes(kinds) -> str:
    """'subcategory: face, person; skin tone: light, dark' for a run's [(kind, class names)]."""
    return "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds)


def find_class(word: str, kinds) -> tuple[int, int]:
    """(kind, class) of one CLASS= word: a class name of any kind, matched exactly, then ignoring case
    (the first kind that has it), else a whole number: that class of the first kind."""
    for same in (lambda name: name == word, lambda name: name.lower() == word.lower()):
        for k, (_, names) in enumerate(kinds):
            for c, name in enumerate(names):
                if same(name):
                    return k, c
    if re.fullmatch(r"[+-]?\d+", word):
        kind, names = kinds[0]
        if 0 <= int(word) < len(names):
            return 0, int(word)
        raise UserError(f"CLASS={word}: a number picks a class of the first kind ({kind}), 0 to {len(names) - 1}; "
                        f"this run's classes are {describe_classes(kinds)}")
    raise UserError(f"CLASS={word!r} is not a class of this run; its classes are {describe_classes(kinds)}: "
                    "give one of these names (several of different kinds comma-separated, e.g. CLASS=a,b) "
                    "or the number of a class of the first kind")


def class_row(text: str, saved: dict) -> tuple[np.ndarray, list]:
    """The label row (K,) int32 for CLASS=``text`` (names or a number, comma-separated, at most one per kind)
    and the names of the classes asked for, in the order of the kinds. A kind not asked for gets its
    "no label" token (``blocks.null_labels``). ``saved``: the run's settings (its "labels")."""
    from .blocks import null_labels
    kinds = [(k["kind"], list(k["classes"])) for k in saved.get("labels", [])]
    if not kinds or saved["profile"].num_classes is None:
        raise UserError(f"CLASS={text}: this run is unconditional (trained without CONDITIONAL=1), it knows no "
                        "classes; leave CLASS= out, or train a conditional run (make train CONDITIONAL=1)")
    words = [word.strip() for word in text.split(",") if word.strip()]
    if not words:
        raise UserError(f"CLASS={text!r} names no class; this run's classes are {describe_classes(kinds)}")
    row = null_labels([len(names) for _, names in kinds], 1)[0]
    chosen = {}
    for word in words:
        k, c = find_class(word, kinds)
        if k in chosen:
            raise UserError(f"CLASS={text}: {kinds[k][1][chosen[k]]!r} and {kinds[k][1][c]!r} are both "
                            f"{kinds[k][0]} classes; give at most one class of each kind ({describe_classes(kinds)})")
        chosen[k] = row[k] = c
    return row, [kinds[k][1][c] for k, c in sorted(chosen.items())]


def parse_number(text: str, name: str, default: float, low: float, high: float, meaning: str) -> float:
    """The value of a make variable such as STRENGTH=0.3 ("" gives ``default``); ``UserError`` for text
    that is not a number or lies outside [low, high]. ``meaning``: what the value does, for the message."""
    if text is None or not str(text).strip():
        return float(default)
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not a number: {meaning}") from None
    if not low <= value <= high:                 # NaN fails too
        bounds = f"at least {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise UserError(f"{name}={text}: it must be {bounds}; {meaning}")
    return value


def parse_guidance(text: str) -> float:
    """GUIDANCE= as a number w >= 0 (left out: ``DEFAULT_GUIDANCE``)."""
    return parse_number(text, "GUIDANCE", DEFAULT_GUIDANCE, 0.0, math.inf,
                        f"give a guidance scale such as 2 (the default, lesson 13's measured choice); 0 ignores "
                        "the class, 1 is the plain conditional model")


def upright_size(data: bytes, size) -> tuple:
    """(width, height) of a picture as shown: ``size`` as stored, swapped when its EXIF orientation turns it."""
    import io
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (size[1], size[0]) if turned else tuple(size)


def read_picture(path, image_size: int) -> tuple[np.ndarray, tuple]:
    """One picture read as ``data.read_image_folder`` reads a training picture (decoded by content,
    turned upright, RGB, centre-cropped square, resized to ``image_size``): (uint8 (S, S, 3), its
    (width, height) as shown). ``UserError`` for a missing file, a folder or a file that is no picture."""
    from .data import decode_picture
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"IMAGE={path}: no such file; check the spelling, or give the full path of a PNG or JPEG picture")
    if path.is_dir():
        raise UserError(f"IMAGE={path} is a folder: give one picture file (PNG or JPEG)")
    try:
        data = path.read_bytes()
        pixels, size = decode_picture(data, image_size, min_size=1)
    except OSError as err:
        raise UserError(f"IMAGE={path} cannot be read ({err.strerror}): check its permissions") from None
    except ValueError as skip:
        raise UserError(f"IMAGE={path} is not a picture that can be used ({skip}): give a PNG or JPEG file") from None
    return pixels, upright_size(data, size)


def read_mask(spec: str, image_size: int, picture, picture_size) -> tuple[np.ndarray, str]:
    """(mask (S, S, 1) float32, 1 = keep and 0 = fill, its name for file names) for MASK=``spec``: a preset
    of ``editing.MASK_PRESETS``, or a picture file of the size of ``picture`` (``picture_size``, as shown)
    or of the run's (S x S): white keeps, black is filled, grey keeps above one half. A mask of the
    picture's size is centre-cropped and resized as the picture was."""
    from PIL import Image
    from .data import _square_resize, _to_rgb
    from .editing import MASK_PRESETS, mask_preset
    presets = ", ".join(MASK_PRESETS)
    if spec in MASK_PRESETS:
        return mask_preset(spec, image_size), spec
    path = Path(spec).expanduser()
    if not path.exists():
        if path.suffix or "/" in spec or os.sep in spec:
            raise UserError(f"MASK={spec}: no such file; give a PNG of the picture's size (white = keep, black = "
                            f"fill) or a preset: {presets}")
        raise UserError(f"MASK={spec!r} is not a mask preset: give one of {presets}, or a PNG file of the "
                        "picture's size (white = keep, black = fill)")
    try:
        with Image.open(path) as im:
            im.load()
            grey = _to_rgb(im).convert("L")
    except Exception as err:  # noqa: BLE001 - not a picture, truncated, ...
        raise UserError(f"MASK={path} is not a picture ({type(err).__name__}): give a PNG, white = keep, "
                        f"black = fill, or a preset: {presets}") from None
    w, h = picture_size
    if grey.size == (w, h):
        grey = _square_resize(grey, image_size)
    elif grey.size != (image_size, image_size):
        raise UserError(f"MASK={path} is {grey.size[0]}x{grey.size[1]} pixels, but IMAGE={picture} is {w}x{h} "
                        f"and the run's pictures are {image_size}x{image_size}: draw the mask at one of these two "
                        "sizes (white = keep, black = fill)")
    mask = (np.asarray(grey, np.float32) / 255.0 > 0.5).astype(np.float32)[..., None]
    if mask.min() == 1.0:
        raise UserError(f"MASK={path} keeps every pixel (no black part at {image_size}x{image_size}): paint the "
                        "part to fill black")
    return mask, path.stem


def editing_eps_fn(run):
    """(eps_fn, schedule, settings, checkpoint name) for editing one picture at a time with a run's EMA
    network: ``sampling.model_eps_fn`` with the run's prediction, or for a conditional run
    ``guided_eps_fn`` asked for "no label" with w = 1 (the unconditional model). A flow-matching run
    is refused (``editing.check_discrete``) with ``UserError``."""
    from .blocks import null_labels
    from .editing import check_discrete
    from .sampling import guided_eps_fn, is_conditional, model_eps_fn
    from .unet import label_classes
    ema, schedule, saved, ckpt = load_ema_model(run)
    prediction = saved["profile"].prediction
    if is_conditional(ema):
        eps_fn = guided_eps_fn(ema, schedule, prediction)
        eps_fn.labels.assign(null_labels(label_classes(ema), 1))
        eps_fn.guidance.assign(1.0)
    else:
        eps_fn = model_eps_fn(ema, schedule, prediction)
    try:
        check_discrete(eps_fn)
    except ValueError as err:
        raise UserError(f"{Path(run).name}: {err}") from None
    return eps_fn, schedule, saved, ckpt


def write_png(image, path, grayscale: bool = False) -> Path:
    """One picture in [-1, 1] (H, W, 3) as a PNG file (grayscale: the mean of R, G, B)."""
    from PIL import Image
    from .data import from_unit_range
    pixels = from_unit_range(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if grayscale:
        Image.fromarray(np.round(pixels.mean(-1)).astype(np.uint8), "L").save(path)
    else:
        Image.fromarray(pixels, "RGB").save(path)
    return path


def _edit_inputs(run, image, num: int):
    """(picture in [-1, 1] (1, S, S, 3), its size as shown, settings) after the checks every edit shares."""
    from .data import to_unit_range
    if not str(run).strip():
        raise UserError("name a run folder: RUN=runs/<run> (a folder of make train)")
    if not str(image).strip():
        raise UserError("name a picture: IMAGE=path/to/picture.png")
    if num < 1:
        raise UserError(f"N={num}: ask for at least one picture")
    saved = run_settings(run)
    pixels, size = read_picture(image, saved["profile"].image_size)
    if saved.get("grayscale"):                   # the network knows R = G = B only
        pixels = np.repeat(np.round(pixels.mean(-1, keepdims=True)).astype(np.uint8), 3, -1)
    return to_unit_range(pixels[None]), size, saved


def edit_pngs(run, image, strength: float = EDIT_STRENGTH, seed: int = 0, num: int = EDITS_PER_PICTURE,
              eta: float = 0.0, steps: int = EDIT_STEPS, out=None, progress: bool = True) -> list:
    """SDEdit (lesson 16, ``editing.sdedit``) of one picture with a run's EMA network: ``num`` variants from
    seeds ``seed`` .. ``seed + num - 1`` (one picture per call, so a seed gives its picture again whatever
    ``num``), DDIM(``eta``) on ``steps`` steps at strength 1. Written to ``out`` (default ``<run>/edits/``)
    as ``<stem>_strength<s>_seed<k>.png``, after ``<stem>_input.png``: the picture as the network sees it.
    Returns the paths, the input first."""
    from .editing import sdedit
    if not 0.0 <= float(strength) <= 1.0:
        raise UserError(f"STRENGTH={strength}: it must be in [0, 1] (0 gives the picture back, 1 a new sample)")
    x, _, saved = _edit_inputs(run, image, num)
    eps_fn, schedule, saved, ckpt = editing_eps_fn(run)
    if progress:
        print(f"SDEdit of {Path(image).name} at strength {strength:g} with {Path(run).name} ({ckpt}), "
              f"DDIM eta = {eta:g}, seeds {seed} to {seed + num - 1} ...", flush=True)
    edits = [sdedit(eps_fn, x, schedule, strength, steps=steps, eta=eta, seed=k)[0] for k in range(seed, seed + num)]
    out, stem, gray = Path(out) if out else Path(run) / "edits", Path(image).stem, saved.get("grayscale", False)
    paths = [write_png(x[0], out / f"{stem}_input.png", gray)]
    return paths + [write_png(e, out / f"{stem}_strength{strength:g}_seed{k}.png", gray)
                    for k, e in zip(range(seed, seed + num), edits)]


def inpaint_pngs(run, image, mask: str, seed: int = 0, num: int = EDITS_PER_PICTURE,
                 resample: int = INPAINT_RESAMPLE, eta: float = 1.0, steps: int = 0, jump: int = INPAINT_JUMP,
                 out=None, progress: bool = True) -> list:
    """Fill the hole of one picture (lesson 16, ``editing.inpaint``) with a run's EMA network: MASK=``mask``
    (``read_mask``), ``num`` pictures from seeds ``seed`` .. ``seed + num - 1``. ``resample`` > 1 is RePaint
    (default: 5 passes of every ``jump`` = 5 steps on ``INPAINT_STEPS`` = 20 steps, 80 network evaluations),
    1 the plain replacement on ``PLAIN_INPAINT_STEPS`` = 50 steps (``steps`` > 0 sets the grid). Written to
    ``out`` (default ``<run>/inpainted/``) as ``<stem>_<mask>_seed<k>.png``, after ``<stem>_<mask>_masked.png``
    (the picture as the network sees it, the hole grey). The known pixels come back exactly. Returns the paths."""
    from .data import to_unit_range
    from .editing import MASK_PRESETS, inpaint
    x, size, saved = _edit_inputs(run, image, num)
    if not str(mask).strip():
        raise UserError(f"name a mask: MASK={'|'.join(MASK_PRESETS)} or a PNG of the picture's size "
                        "(white = keep, black = fill)")
    if int(resample) < 1:
        raise UserError(f"RESAMPLE={resample}: give 1 (plain replacement) or more (RePaint's passes, default "
                        f"{INPAINT_RESAMPLE})")
    keep, name = read_mask(mask, saved["profile"].image_size, image, size)
    eps_fn, schedule, saved, ckpt = editing_eps_fn(run)
    steps = int(steps) or (INPAINT_STEPS if resample > 1 else PLAIN_INPAINT_STEPS)
    if progress:
        how = f"RePaint, {resample} passes every {jump} steps" if resample > 1 else "replacement"
        print(f"inpainting {Path(image).name} ({name}) with {Path(run).name} ({ckpt}): {how} on {steps} steps, "
              f"seeds {seed} to {seed + num - 1} ...", flush=True)
    filled = [inpaint(eps_fn, x, keep, schedule, steps=steps, eta=eta, seed=k, resample=int(resample), jump=jump)[0]
              for k in range(seed, seed + num)]
    out, stem, gray = Path(out) if out else Path(run) / "inpainted", Path(image).stem, saved.get("grayscale", False)
    shown = np.where(keep > 0.5, x[0], to_unit_range(np.uint8(HOLE_GREY)))
    paths = [write_png(shown, out / f"{stem}_{name}_masked.png", gray)]
    return paths + [write_png(f, out / f"{stem}_{name}_seed{k}.png", gray) for k, f in zip(range(seed, seed + num), filled)]


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


def import_tensorflow_quietly():
    """Import TensorFlow with its start-up lines discarded (``start_up_lines_discarded``), so that a
    command's first line on stderr is its own (e.g. its ``error:``)."""
    with start_up_lines_discarded():
        import tensorflow  # noqa: F401


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
    g.add_argument("--class", dest="classes", default="",
                   help="a conditional run: a class name of any kind, several of different kinds comma-separated "
                        "(person-role,dark), or a number (a class of the first kind)")
    g.add_argument("--guidance", default="", help=f"guidance scale w >= 0 with --class (default {DEFAULT_GUIDANCE:g}: "
                                                  "lesson 13's measured choice, 82-87%% of samples of the class asked for)")
    d = sub.add_parser("edit", help="SDEdit (lesson 16): N variants of a picture, drawn back from part-way noise")
    d.add_argument("run", nargs="?", default="", help="a run folder, e.g. runs/20261126-101500-cpu-my-pictures")
    d.add_argument("--image", default="", help="the picture (any size: centre-cropped and resized as in training)")
    d.add_argument("--strength", default="", help=f"in [0, 1] (default {EDIT_STRENGTH:g}): 0 gives the picture back, "
                                                  "1 a new sample")
    d.add_argument("-n", "--num", type=int, default=EDITS_PER_PICTURE)
    d.add_argument("--seed", type=int, default=0, help="the first seed (the variants use seed .. seed + N - 1)")
    d.add_argument("--eta", default="", help="DDIM's eta in [0, 1] (default 0: deterministic given the seed)")
    i = sub.add_parser("inpaint", help="fill a hole in a picture (lesson 16): RePaint with the run's network")
    i.add_argument("run", nargs="?", default="", help="a run folder, e.g. runs/20261126-101500-cpu-my-pictures")
    i.add_argument("--image", default="", help="the picture (any size: centre-cropped and resized as in training)")
    i.add_argument("--mask", default="", help="a preset (left-half, centre-square, strokes) or a PNG of the "
                                              "picture's size or the run's: white = keep, black = fill")
    i.add_argument("-n", "--num", type=int, default=EDITS_PER_PICTURE)
    i.add_argument("--seed", type=int, default=0, help="the first seed (the pictures use seed .. seed + N - 1)")
    i.add_argument("--resample", default="", help=f"RePaint's passes (default {INPAINT_RESAMPLE}: on "
                                                  f"{INPAINT_STEPS} steps, about 80 network evaluations); 1: plain "
                                                  f"replacement on {PLAIN_INPAINT_STEPS} steps")
    i.add_argument("--eta", default="", help="DDIM's eta in [0, 1] (default 1: fresh noise at every step)")
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
        elif args.cmd == "edit":
            import_tensorflow_quietly()
            strength = parse_number(args.strength, "STRENGTH", EDIT_STRENGTH, 0.0, 1.0,
                                    "give a number from 0 (the picture back) to 1 (a new sample), e.g. 0.5")
            eta = parse_number(args.eta, "ETA", 0.0, 0.0, 1.0, "give DDIM's eta, 0 (the default) to 1")
            paths = edit_pngs(args.run, args.image, strength, args.seed, args.num, eta)
            print(f"wrote {paths[0].name} and {len(paths) - 1} edit{'s' * (len(paths) > 2)} to {paths[0].parent}")
        elif args.cmd == "inpaint":
            import_tensorflow_quietly()
            resample = parse_number(args.resample, "RESAMPLE", INPAINT_RESAMPLE, 1, math.inf,
                                    f"give RePaint's number of passes, e.g. {INPAINT_RESAMPLE} (1: plain replacement)")
            if resample != int(resample):
                raise UserError(f"RESAMPLE={args.resample}: give a whole number of passes, e.g. {INPAINT_RESAMPLE}")
            eta = parse_number(args.eta, "ETA", 1.0, 0.0, 1.0, "give DDIM's eta, 0 to 1 (the default)")
            paths = inpaint_pngs(args.run, args.image, args.mask, args.seed, args.num, int(resample), eta)
            print(f"wrote {paths[0].name} and {len(paths) - 1} filled picture{'s' * (len(paths) > 2)} to "
                  f"{paths[0].parent}")
        else:
            if args.num < 1:
                raise UserError(f"N={args.num}: ask for at least one image")
            if args.classes.strip() or args.guidance.strip():
                import_tensorflow_quietly()             # plain generate: as before
            guidance = parse_guidance(args.guidance)
            if args.guidance.strip() and not args.classes.strip():
                raise UserError(f"GUIDANCE={args.guidance} steers the pictures towards a class: give CLASS= too "
                                "(a conditional run), or leave GUIDANCE= out")
            paths = generate_pngs(args.run, args.num, args.seed, args.out, classes=args.classes.strip(),
                                  guidance=guidance)
            print(f"wrote {len(paths)} PNG files to {paths[0].parent}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
