"""The main job as a new user runs it: `make train DATA=<folder> PROFILE=tiny`, killed hard, then
run again; and the mistakes a user makes with DATA.

The second run must continue the first one's run folder from its last checkpoint (not start
over), finish at the requested step and leave the run folder's files, one PNG per sample among
them. A folder whose files changed in between is refused with a message; a bad DATA stops before
any run folder exists.

Runs under plain `pytest tests/test_make_train.py` as well as under `make test`: it needs GNU make
and the project's .venv, installed and up to date (`make setup`). Without them every test here is
skipped with a warning in pytest's summary that says what to do (a skip reason alone is shown
only with -rs).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def why_make_train_cannot_run():
    """None if `make train` can start at once here; else why not and how to fix it."""
    how = "run `make setup` once, then `pytest tests/test_make_train.py` (or `make test`)"
    if shutil.which("make") is None:
        return f"GNU make is not on PATH: install it, then {how}"
    # `make -q setup` exits 0 only if .venv exists and is up to date with pyproject.toml (for this TF=);
    # otherwise `make train` would first create it or pip-install into it, inside the test
    stale = subprocess.run(["make", "-q", "setup"], cwd=ROOT, capture_output=True).returncode != 0
    if stale or not (ROOT / ".venv" / "bin" / "python").exists():
        tf = f" (TF={os.environ['TF']})" if os.environ.get("TF") else ""
        return f"the project's .venv{tf} is missing or older than pyproject.toml: {how}"
    return None


@pytest.fixture(scope="module", autouse=True)
def make_and_venv():
    reason = why_make_train_cannot_run()
    if reason:
        warnings.warn(f"tests/test_make_train.py (kill -9 and resume of make train) SKIPPED: {reason}",
                      pytest.PytestWarning)
        pytest.skip(reason)


def make_train(runs, *args, **popen):
    cmd = ["make", "-s", "--no-print-directory", "train", "PROFILE=tiny", f"RUNS={runs}", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def kill_hard(proc, run):
    """kill -9 make, papermill and the notebook kernel (which papermill starts in its own session;
    its pid is in the run's checkpoint lock)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    lock = run / "checkpoints" / "lock"
    try:
        os.kill(int(lock.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass
    time.sleep(1)


def picture_folder(path, n=40, size=24):
    """n small generated pictures (a coloured square on a plain background), some in a sub-folder."""
    rng = np.random.default_rng(0)
    (path / "more").mkdir(parents=True)
    for i in range(n):
        img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        img[y: y + size // 2, x: x + size // 2] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(path / ("more" if i % 4 == 0 else "") / f"pic_{i:03d}.png")
    return path


def test_make_train_on_a_folder_survives_kill_9_and_resumes(tmp_path):
    runs, data = tmp_path / "runs", picture_folder(tmp_path / "my pictures")
    first = make_train(runs, f"DATA={data}", "FRESH=1", "STEPS=400")
    deadline = time.time() + 300
    run = None
    while time.time() < deadline and first.poll() is None:
        found = list(runs.glob("*-tiny-my-pictures/checkpoints/history.json")) if runs.exists() else []  # after a save
        if found:
            run = found[0].parent.parent
            break
        time.sleep(0.2)
    assert run is not None, f"no checkpoint within 5 minutes; make printed:\n{first.stdout.read()[-3000:]}"
    kill_hard(first, run)
    assert not (run / "finished.json").exists(), "the first run must have been stopped before its end"

    Image.new("RGB", (24, 24), "red").save(data / "added later.png")        # the folder changes
    changed = make_train(runs, f"DATA={data}")
    out, _ = changed.communicate(timeout=120)
    assert changed.returncode != 0 and "1 file added (added later.png)" in out and "FRESH=1" in out, out
    assert "Traceback" not in out
    (data / "added later.png").unlink()

    second = make_train(runs, f"DATA={data}")       # no FRESH, no STEPS: continue the same run
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    assert f"run folder: {run}" in out, out[:500]
    m = re.search(r"starting at step (\d+) of (\d+)", out)
    assert m, out[-3000:]
    start, total = int(m.group(1)), int(m.group(2))
    assert total == 400 and 10 <= start < 400 and start % 10 == 0, (start, total)
    assert "continuing the run" in out and "estimate on this machine" in out
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 400 and results["images"] == 40
    v = results["verdict"]                                     # the verdict of every run
    assert {"n", "call", "scores", "swd_x1e3", "references", "near_copies", "advice"} <= set(v)
    assert v["call"] in ("like", "apart", "too-small")
    assert 0 <= v["near_copies"] <= 1 and v["advice"] in out and "verdict on" in out
    for name in ("samples.png", "loss.png", "finished.json", "settings.json", "09_full_training.ipynb"):
        assert (run / name).exists(), f"{name} missing from the run folder"
    pngs = sorted((run / "samples").glob("sample_*.png"))
    assert len(pngs) == 64 and Image.open(pngs[0]).size == (16, 16), "one PNG file per final sample"
    assert len([p for p in runs.iterdir() if p.is_dir()]) == 1, "the second run must not open a new folder"

    generated = subprocess.run(["make", "-s", "--no-print-directory", "generate", f"RUN={run}", "N=5"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr[-2000:]
    new = sorted((run / "generated").glob("seed0_step400_*.png"))
    assert len(new) == 5 and Image.open(new[0]).size == (16, 16)


@pytest.mark.parametrize("case", ["missing", "empty", "no pictures"])
def test_make_train_with_a_bad_folder_says_so_and_leaves_nothing(tmp_path, case):
    data = tmp_path / "pictures"
    if case != "missing":
        data.mkdir()
    if case == "no pictures":
        (data / "holiday.jpg").write_bytes(b"this is not a JPEG")
    runs = tmp_path / "runs"
    proc = make_train(runs, f"DATA={data}")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert f"error: " in out and str(data) in out and "Traceback" not in out, out
    assert not runs.exists(), "no run folder may be left behind"
