"""Score during training (lesson 11): a ``Trainer.fit`` callback that scores EMA samples."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .features import detail_feature_fn
from .scores import ScoreReference


class ScoreCallback:
    """Score the EMA model's samples every ``every`` steps of ``Trainer.fit``; keep the best.

    Samples: ``num_samples`` images from the fixed ``seed`` with ``sampler(eps_fn, shape,
    schedule, seed)`` (default: DDIM-50 with eta = 1, x0 clipped). Each evaluation appends
    {"step", "seconds" (training time), "sample_seconds", "kid", "kid_se", "swd"} to
    ``history``; when ``monitor`` improves, the EMA weights go to
    ``keep_best_dir/best_ema.weights.h5`` with ``best.json``. The KID is the course's calibrated
    score (``detail_feature_fn``: a random network on the pictures' fine detail, lesson 11 section 7),
    so "best" means the same on the shipped data and on any folder.
    """

    def __init__(self, every: int, real_images=None, num_samples: int = 64, seed: int = 0,
                 sampler=None, monitor: str = "kid", keep_best_dir=None, reference=None,
                 feature_fn=detail_feature_fn, verbose: bool = True, num_steps: int = 50, eta: float = 1.0):
        self.every, self.num_samples, self.seed, self.monitor = every, num_samples, seed, monitor
        self.reference = reference or ScoreReference(real_images, feature_fn=feature_fn)
        if monitor == "kid" and self.reference.feature_fn is None:
            raise ValueError("monitor='kid' needs a feature_fn; use monitor='swd'")
        self.sampler = sampler or self.default_sampler(num_steps, eta)
        self.keep_best_dir = Path(keep_best_dir) if keep_best_dir else None
        self.history, self.best, self.verbose = [], None, verbose
        self.last_samples = None

    @staticmethod
    def default_sampler(num_steps=50, eta=1.0):
        def sample(eps_fn, shape, schedule, seed):
            from ..sampling import ddim_sample
            return ddim_sample(eps_fn, shape, schedule, num_steps=num_steps, eta=eta, seed=seed,
                               clip_x0=1.0)
        return sample

    def __call__(self, trainer, logs):
        step = int(logs["step"])
        if step % self.every:
            return
        self.evaluate(trainer, step)

    def evaluate(self, trainer, step=None):
        from ..sampling import model_eps_fn
        step = int(trainer.step.numpy()) if step is None else step
        t0 = time.perf_counter()
        shape = (self.num_samples,) + tuple(self.reference.image_shape)
        eps_fn = model_eps_fn(trainer.ema_model, trainer.schedule, getattr(trainer.config, "prediction", "eps"))
        samples = self.sampler(eps_fn, shape, trainer.schedule, self.seed)
        t1 = time.perf_counter()
        s = self.reference.score(samples)
        row = {"step": step, "seconds": float(getattr(trainer, "_elapsed", 0.0)),
               "sample_seconds": round(t1 - t0, 2), "score_seconds": round(time.perf_counter() - t1, 2),
               "swd": s["swd"], **({"kid": s["kid"], "kid_se": s["kid_se"]} if "kid" in s else {})}
        self.history.append(row)
        self.last_samples = samples
        if self.best is None or row[self.monitor] < self.best[self.monitor]:
            self.best = row
            if self.keep_best_dir:
                self.keep_best_dir.mkdir(parents=True, exist_ok=True)
                trainer.ema_model.save_weights(self.keep_best_dir / "best_ema.weights.h5")
                (self.keep_best_dir / "best.json").write_text(json.dumps(row, indent=2) + "\n")
        if self.verbose:
            k = f"KID x1e3 {1e3 * row['kid']:.2f} +- {1e3 * row['kid_se']:.2f}  " if "kid" in row else ""
            print(f"\n[score] step {step}: {k}SWD x1e3 {row['swd']:.1f}"
                  f"{'  (best)' if self.best is row else ''}")
        return row
