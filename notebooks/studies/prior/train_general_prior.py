"""Train the course's *general* prior (issue: fine-tuning from a broad prior, lesson 10).

One long run of the ``cpu`` profile's U-Net, with the augmentation-label input (augment.py), on
everything the course ships or builds: the emoji portraits (1,115), twemoji-things (857) and the
photographic study folder (data/tuxpaint-photos, 376, built by data/build_tuxpaint_photos.py; its
pictures are repeated three times so that photographs are about a third of what the network sees).
The held-out folder data/tuxpaint-animals is never read here.

Resumable: run it again with the same --run and it continues from the last checkpoint.
At the end (or with --export at any time) the EMA weights go to ddpm_lessons/assets/general_cpu/
as float16 (training.save_compact_weights), with settings.json, history.json and samples.png.

    nohup .venv/bin/python notebooks/studies/prior/train_general_prior.py --run /work/prior-runs/general \
        --steps 12000 > /work/prior-runs/general.log 2>&1 &
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]          # notebooks/studies/prior/ -> the repository
sys.path.insert(0, str(ROOT))

FOLDERS = {"emoji-portraits": 1, "twemoji-things": 1, "tuxpaint-photos": 3}   # folder -> repeats
ASSET = ROOT / "ddpm_lessons" / "assets" / "general_cpu"


def settings_for(steps: int):
    from ddpm_lessons.augment import AUGMENT_DIM
    from ddpm_lessons.profiles import get_profile
    return get_profile("cpu").replace(train_steps=steps, augment_dim=AUGMENT_DIM, augment_p=0.2,
                                      ema_decay=0.999, checkpoint_every=250)


def read_all(size: int):
    import numpy as np
    from ddpm_lessons.data import read_image_folder
    parts, counts = [], {}
    for name, repeats in FOLDERS.items():
        folder = ROOT / "data" / name
        if not folder.is_dir():
            raise SystemExit(f"error: {folder} is missing"
                             + (": build it with `python data/build_tuxpaint_photos.py`" if "tuxpaint" in name else ""))
        images, report = read_image_folder(folder, size)
        counts[name] = len(images)
        parts += [images] * repeats
    return np.concatenate(parts), counts


def main(argv=None):
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--run", required=True, help="the run folder (checkpoints, log)")
    a.add_argument("--steps", type=int, default=12000)
    a.add_argument("--export", action="store_true", help="only export the latest checkpoint's EMA weights")
    args = a.parse_args(argv)

    import numpy as np
    from ddpm_lessons.data import make_dataset
    from ddpm_lessons.plotting import save_grid
    from ddpm_lessons.profiles import sampler_options
    from ddpm_lessons.sampling import generate
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig, save_compact_weights
    from ddpm_lessons.unet import build_unet

    settings = settings_for(args.steps)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    images, counts = read_all(settings.image_size)
    print(f"general prior: {len(images)} pictures seen per pass ({counts}, photographs x{FOLDERS['tuxpaint-photos']}); "
          f"{settings.train_steps} steps of batch {settings.batch_size}, augment p = {settings.augment_p}", flush=True)
    schedule = NoiseSchedule.from_kind(settings.schedule, settings.timesteps)
    model = build_unet(settings)
    trainer = Trainer(model, schedule, TrainConfig.from_profile(settings, keep_checkpoints=2), checkpoint_dir=run)
    start = trainer.restore()
    if not args.export:
        print(f"from step {start}", flush=True)
        t0 = time.time()
        trainer.fit(make_dataset(images, settings.batch_size, seed=start), settings.train_steps, progress="lines",
                    progress_seconds=60)
        print(f"trained {int(trainer.step.numpy()) - start} steps in {(time.time() - t0) / 60:.1f} min", flush=True)
    step = int(trainer.step.numpy())
    ASSET.mkdir(parents=True, exist_ok=True)
    save_compact_weights(trainer.ema_model, ASSET / "ema.float16.npz")
    profile = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(settings).items()}
    (ASSET / "settings.json").write_text(json.dumps(
        {"profile": profile, "step": step, "folders": counts, "repeats": FOLDERS,
         "training_seconds": trainer.history["seconds"][-1] if trainer.history["seconds"] else None}, indent=1))
    (ASSET / "history.json").write_text(json.dumps(trainer.history))
    samples = generate(trainer.ema_model, schedule, 64, seed=0, **sampler_options(settings))
    save_grid(ASSET / "samples.png", samples)
    (ASSET / "README.md").write_text(readme(settings, step, counts, trainer.history))
    print(f"exported step {step} to {ASSET.relative_to(ROOT)}", flush=True)


def readme(settings, step, counts, history) -> str:
    """What the asset folder holds and how it was made, from the run's own record."""
    from ddpm_lessons.bench import machine_facts
    from ddpm_lessons.profiles import cpu_flags
    facts = machine_facts()
    flags = " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")))
    minutes = history["seconds"][-1] / 60 if history["seconds"] else float("nan")
    return f"""# The general prior: one long run on everything the course ships or builds

The EMA weights (`ema.float16.npz`, float16) of `notebooks/studies/prior/train_general_prior.py`: the `cpu`
profile's U-Net with the augmentation-label input (`augment_dim={settings.augment_dim}`), trained on
{counts['emoji-portraits']} emoji portraits, {counts['twemoji-things']} twemoji things and the {counts['tuxpaint-photos']}
photographs of `data/tuxpaint-photos` (these repeated {FOLDERS['tuxpaint-photos']} times per pass); the held-out
`data/tuxpaint-animals` was never read.

- training: {step} steps of batch {settings.batch_size}, v-prediction, Adam {settings.learning_rate:g} with a
  {settings.warmup_steps}-step warm-up, clip {settings.grad_clip}, EMA {settings.ema_decay}, augmentation p = {settings.augment_p}
  (augment.py; the network told each transform); final loss {history['loss'][-1]:.3f} (`history.json`)
- time: {minutes:.0f} minutes of training steps on a {facts['cores']}-core {facts['cpu']} ({flags}),
  TensorFlow {facts['tensorflow']}, sharing the machine with other work for much of it
- `samples.png`: 64 samples (seed 0), DPM-Solver++(2M), 10 Karras steps from sigma 80

`make train DATA=... INIT=general` fine-tunes it on your folder (lesson 10);
`training.load_shipped_weights(build_unet(profile, augment_dim=5), "general")` loads it.
"""


if __name__ == "__main__":
    main()
