"""A run folder's lock: one training process per checkpoint folder (lessons 07 and 09).

``fcntl.flock`` on the file ``lock``: the operating system releases it when the process ends, however it
ends (a crash, ``kill -9``), so a lock is never left behind; the holder's pid is written into the file
for people to read (and for the tests to stop a run's kernel). A process may take the same lock again.
This module imports neither TensorFlow nor the command-line layer: ``training`` and ``runs`` both use it.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

_HELD: dict[str, object] = {}          # resolved path -> the open file whose flock this process holds


def hold(lock) -> bool:
    """Take the lock ``lock`` (a file path; created if missing) for this process; False if another holds it."""
    key = str(Path(lock).resolve())
    if key in _HELD:
        return True
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    f = open(lock, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return False
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD[key] = f
    return True


def locked_by_another(lock) -> bool:
    """True while another process holds the lock ``lock`` (a pid in the file alone does not lock)."""
    lock = Path(lock)
    if str(lock.resolve()) in _HELD or not lock.exists():
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
