"""What `make train` shows while it trains: the progress lines (a fake clock, no training), the
progress style `make train` passes to the kernel, TensorFlow's start-up lines left out, the preview
line, lesson 09's parameters as papermill reads them, and `Trainer.fit` in both styles (3 steps)."""
import io
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ddpm_lessons.runs import TF_STARTUP_LINE, StartupLineFilter
from ddpm_lessons.training import ProgressLines, format_duration, progress_mode

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def test_progress_lines_come_at_most_every_10_seconds_and_at_the_end():
    clock, printed = FakeClock(), []
    lines = ProgressLines(110, every=10.0, clock=clock, write=printed.append)
    for step in range(1, 111):            # 0.5 s per step (0.4 s of it in the training step), 32 images
        clock.t += 0.5
        lines.update(step, loss=1.0 / step, images=32, seconds=0.4)
    steps = [int(line.split()[1].split("/")[0]) for line in printed]
    assert steps == [20, 40, 60, 80, 100, 110], printed     # every 10 s of the clock, and the last step
    first = printed[0]
    assert first.startswith("step 20/110  loss ") and "  80 img/s  " in first, first   # 32 images / 0.4 s
    assert f"loss {np.mean([1 / s for s in range(1, 21)]):.4f}" in first, "the mean loss since the last line"
    assert first.endswith("elapsed 0:10  left ~0:45"), first     # 90 steps more at 0.5 s
    assert f"loss {np.mean([1 / s for s in range(101, 111)]):.4f}" in printed[-1]
    assert printed[-1].startswith("step 110/110") and printed[-1].endswith("elapsed 0:55"), printed[-1]


def test_progress_lines_of_a_continued_run_count_from_its_start_step():
    clock, printed = FakeClock(), []
    lines = ProgressLines(50, start_step=40, every=10.0, clock=clock, write=printed.append)
    for step in range(41, 51):
        clock.t += 2.0
        lines.update(step, 0.1, 16, 1.0)
    assert [line.split()[1] for line in printed] == ["45/50", "50/50"]
    assert "left ~0:10" in printed[0] and " 16 img/s " in printed[0]


def test_format_duration():
    assert [format_duration(s) for s in (0, 7.4, 59.6, 750, 3723)] == ["0:00", "0:07", "1:00", "12:30", "1:02:03"]


def test_progress_mode_follows_ddpm_progress():
    assert progress_mode(True, {}) == "bar"                           # a notebook, a terminal
    assert progress_mode(True, {"DDPM_PROGRESS": "lines"}) == "lines"  # make train into a file or a pipe
    assert progress_mode(True, {"DDPM_PROGRESS": "bar"}) == "bar"
    assert progress_mode("lines", {"DDPM_PROGRESS": "bar"}) == "lines"
    assert progress_mode(False, {"DDPM_PROGRESS": "lines"}) is None
    with pytest.raises(ValueError, match="DDPM_PROGRESS"):
        progress_mode(True, {"DDPM_PROGRESS": "fancy"})


def test_tensorflow_start_up_lines_are_left_out_and_the_rest_is_kept():
    noise = ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
             "I0000 00:00:1795697619.978619    7672 port.cc:153] oneDNN custom operations are on. You may see"]
    kept = ["W0000 00:00:1795697619.978619    7672 gpu_device.cc:2341] Cannot dlopen some GPU libraries.",
            "/x/keras/src/layers/layer.py:393: UserWarning: `build()` was called ...", "error: something real"]
    assert all(TF_STARTUP_LINE.match(line) for line in noise) and not any(TF_STARTUP_LINE.match(l) for l in kept)
    out = io.StringIO()
    f = StartupLineFilter(out)
    text = "\n".join([noise[0], kept[0], noise[1], kept[1], noise[0], kept[2]]) + "\n"
    for i in range(0, len(text), 37):            # the kernel's stream comes in pieces
        f.write(text[i:i + 37])
    f.write("last words without a newline")
    f.close()
    assert out.getvalue() == "\n".join(kept) + "\nlast words without a newline"


def test_the_preview_line_names_its_file_and_starts_on_a_fresh_line_under_a_bar(tmp_path, capsys):
    from ddpm_lessons.plotting import TrainingMonitor

    class FakeTrainer:
        ema_model = None
        progress_mode = "bar"

    monitor = TrainingMonitor(lambda ema: np.zeros((4, 8, 8, 3), np.float32), preview_every=7, save_dir=tmp_path)
    monitor.grid_view = monitor.loss_view = SimpleNamespace(update=lambda fig: None)   # no notebook here
    capsys.readouterr()
    monitor.preview(FakeTrainer(), 7)
    assert (tmp_path / "previews" / "step-000007.png").exists()
    assert capsys.readouterr().out == "\n[preview] step 7: EMA samples saved in previews/step-000007.png\n"
    FakeTrainer.progress_mode = "lines"                  # a line of its own already
    monitor.preview(FakeTrainer(), 14)
    assert capsys.readouterr().out == "[preview] step 14: EMA samples saved in previews/step-000014.png\n"


def test_papermill_reads_every_parameter_of_lesson_09_without_a_warning(caplog):
    papermill = pytest.importorskip("papermill")
    with caplog.at_level(logging.WARNING, logger="papermill"):
        params = papermill.inspect_notebook(str(ROOT / "notebooks" / "09_full_training.ipynb"))
    assert {"run_dir", "fresh", "data_dir", "train_steps", "init_from"} <= set(params), params
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text   # e.g. "Unable to parse line 2"


def test_fit_shows_progress_in_the_style_asked(capsys, monkeypatch):
    import tensorflow as tf
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig
    from ddpm_lessons.unet import build_unet

    tf.keras.utils.set_random_seed(0)
    small = dict(image_size=8, channels=3, base_width=8, channel_mults=(1,), num_res_blocks=1,
                 attention_resolutions=(), groups=4)
    trainer = Trainer(build_unet(small), NoiseSchedule.from_kind("cosine", 1000),
                      TrainConfig(warmup_steps=1, jit_compile=False))
    data = tf.data.Dataset.from_tensors(tf.random.uniform((4, 8, 8, 3), -1, 1))
    seen = []
    remember = lambda tr, logs: seen.append(tr.progress_mode)

    monkeypatch.setenv("DDPM_PROGRESS", "lines")        # make train into a file or a pipe
    capsys.readouterr()
    trainer.fit(data, 3, callbacks=[remember], progress_seconds=0.0, log_every=1)   # a line at every read
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines()] == ["1/3", "2/3", "3/3"], out
    assert "img/s" in out and "\r" not in out and "\x1b" not in out and "\b" not in out

    monkeypatch.setenv("DDPM_PROGRESS", "bar")          # make train in a terminal
    trainer.fit(data, 5, callbacks=[remember], progress_seconds=0.0)
    out = capsys.readouterr().out
    assert "5/5" in out and "loss" in out and "step 4/5" not in out, out
    # the loss is read from the device every log_every steps (and at the first and the last): so are the lines
    monkeypatch.setenv("DDPM_PROGRESS", "lines")
    trainer.fit(data, 30, callbacks=[remember], progress_seconds=0.0, log_every=10)
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines()] == ["6/30", "10/30", "20/30", "30/30"], out
    assert seen == ["lines"] * 3 + ["bar"] * 2 + ["lines"] * 25
