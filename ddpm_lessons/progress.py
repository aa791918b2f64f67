"""Training progress for output that is not a terminal (lesson 07's loop, ``make train | tee log``).

In a terminal or a notebook the Trainer shows a ``keras.utils.Progbar``; its non-interactive mode
(``verbose=2``) prints only when an epoch ends, so a log of one long run would stay empty until the
end. ``ProgressLines`` prints a plain line every few seconds instead, with the time left.
"""
from __future__ import annotations

import os
import time

import numpy as np

PROGRESS_MODES = ("bar", "lines")


def progress_mode(progress=True, environ=None):
    """"bar", "lines" or None for ``Trainer.fit(progress=...)``: True reads ``DDPM_PROGRESS``
    (``make train`` sets "lines" when its output is not a terminal), "bar" when it is unset."""
    if progress is False or progress is None:
        return None
    if progress is True:
        progress = (os.environ if environ is None else environ).get("DDPM_PROGRESS", "").strip().lower() or "bar"
    if progress not in PROGRESS_MODES:
        raise ValueError(f"progress={progress!r}: give True, False, 'bar' or 'lines' "
                         f"(DDPM_PROGRESS=bar or DDPM_PROGRESS=lines)")
    return progress


def format_duration(seconds: float) -> str:
    """0:07, 12:30, 1:02:03."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressLines:
    """Training progress as plain lines, for output that is not a terminal (``make train | tee log``,
    a CI log): at most one line every ``every`` seconds, and one for the last step::

        step 120/1800  loss 0.0812  96 img/s  elapsed 1:02  left ~8:40

    loss is the mean over the steps since the previous line; img/s counts the images of those steps
    over the seconds spent in them (previews and checkpoints not counted); elapsed is the wall time
    since training started, and left the steps still to go at the average pace so far (previews
    included). ``clock`` (seconds) and ``write`` (one line) can be replaced: the tests use a fake clock.
    """

    def __init__(self, total_steps: int, start_step: int = 0, every: float = 10.0,
                 clock=time.perf_counter, write=None):
        self.total, self.start, self.every, self.clock = int(total_steps), int(start_step), float(every), clock
        self.write = write or (lambda line: print(line, flush=True))
        self.t_start = self.t_last = clock()
        self._losses, self._images, self._seconds = [], 0, 0.0

    def update(self, step: int, loss, images: int, seconds: float):
        """Count one training step (its loss, batch size and duration); write a line when ``every``
        seconds have passed since the last one, or at the last step. Returns the line, or None."""
        self._losses.append(float(loss))
        self._images += int(images)
        self._seconds += float(seconds)
        now = self.clock()
        if now - self.t_last < self.every and step < self.total:
            return None
        elapsed = now - self.t_start
        line = (f"step {step}/{self.total}  loss {np.mean(self._losses):.4f}  "
                f"{self._images / max(self._seconds, 1e-9):.0f} img/s  elapsed {format_duration(elapsed)}")
        if step < self.total and step > self.start:
            line += f"  left ~{format_duration(elapsed / (step - self.start) * (self.total - step))}"
        self.t_last, self._losses, self._images, self._seconds = now, [], 0, 0.0
        self.write(line)
        return line
