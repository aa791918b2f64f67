"""The main job as a new user runs it: `make train PROFILE=tiny`, killed hard, then run again.

The second run must continue the first one's run folder from its last checkpoint (not start
over), finish at the requested step and leave the run folder's files.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "papermill").exists(),
                                reason="needs make and the project's .venv (make setup)")


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


def test_make_train_survives_kill_9_and_resumes(tmp_path):
    runs = tmp_path / "runs"
    first = make_train(runs, "FRESH=1", "STEPS=400")
    deadline = time.time() + 300
    run = None
    while time.time() < deadline and first.poll() is None:
        found = list(runs.glob("*-tiny/checkpoints/ckpt-*.index")) if runs.exists() else []
        if found:
            run = found[0].parent.parent
            break
        time.sleep(0.2)
    assert run is not None, f"no checkpoint within 5 minutes; make printed:\n{first.stdout.read()[-3000:]}"
    kill_hard(first, run)
    assert not (run / "finished.json").exists(), "the first run must have been stopped before its end"

    second = make_train(runs)                       # no FRESH, no STEPS: continue the same run
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    assert f"run folder: {run}" in out, out[:500]
    m = re.search(r"starting at step (\d+) of (\d+)", out)
    assert m, out[-3000:]
    start, total = int(m.group(1)), int(m.group(2))
    assert total == 400 and 10 <= start < 400 and start % 10 == 0, (start, total)
    assert "continuing the run" in out
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 400
    for name in ("samples.png", "loss.png", "finished.json", "settings.json", "09_full_training.ipynb"):
        assert (run / name).exists(), f"{name} missing from the run folder"
    assert len([p for p in runs.iterdir() if p.is_dir()]) == 1, "the second run must not open a new folder"
