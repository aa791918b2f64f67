"""Run lessons in a profile and store their outputs for readers: `make notebooks`.

    python notebooks/store_outputs.py [NN_name.ipynb ...]     (default: every lesson)

Stored outputs are what a learner on a laptop sees: run with DDPM_PROFILE=cpu.
After execution TensorFlow's start-up log lines (stderr) are removed, and any output that
shows a machine path is reported, since stored outputs must not contain one.

Each lesson is also run once in the `tiny` profile (not stored), and both wall times go into
`timings.json` and into the line "Runs in about ..." under the lesson's title, so what a lesson
says about its own run time comes from one measurement and cannot drift from it.
"""
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
TF_NOISE = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} |To enable the following "
                      r"instructions|\s*$)")
MACHINE_PATH = re.compile(r"(/work/|/root/|/tmp/|/home/|/Users/)")


def coalesce_streams(outputs: list) -> list:
    """Merge consecutive stream outputs and keep what a terminal would show after each carriage
    return, so a progress bar is stored as its final line, not as thousands of updates."""
    merged = []
    for out in outputs:
        if (out.get("output_type") == "stream" and merged and merged[-1].get("output_type") == "stream"
                and merged[-1]["name"] == out["name"]):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    for out in merged:
        if out.get("output_type") == "stream":
            out["text"] = "\n".join(line.rsplit("\r", 1)[-1] if "\r" in line.rstrip("\r") else line
                                    for line in out["text"].split("\n"))
    return merged


def clean(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                if all(TF_NOISE.match(line) for line in out["text"].splitlines()):
                    continue
            if out.get("output_type") == "error":
                problems.append(f"{path.name} cell {i}: error output {out.get('ename')}")
            text = str({k: v for k, v in out.get("data", {}).items() if not k.startswith("image/")})
            text += out.get("text", "")
            if MACHINE_PATH.search(text):
                problems.append(f"{path.name} cell {i}: output shows a machine path")
            kept.append(out)
        cell["outputs"] = coalesce_streams(kept)
    nbformat.write(nb, path)
    return problems


RUN_TIME = re.compile(r"^> \*\*Runs in about .*$", re.M)


def duration(seconds: float) -> str:
    """"40 seconds", "about 3 minutes", "about 12 minutes"."""
    if seconds < 90:
        return f"{max(5, 5 * round(seconds / 5)):.0f} seconds"
    return f"{round(seconds / 60):.0f} minutes"


def run_time_line(cpu_s: float, tiny_s: float, cpu: str, cores: int) -> str:
    return (f"> **Runs in about {duration(cpu_s)}** in the `cpu` profile and {duration(tiny_s)} in `tiny` "
            f"(measured by `make notebooks` on a {cores}-core {cpu}; another machine, or other work running "
            f"on this one, changes both).")


def set_run_time(path: Path, line: str) -> None:
    """Put ``line`` under the title in the first (markdown) cell, replacing an older one."""
    nb = nbformat.read(path, as_version=4)
    cell = nb.cells[0]
    if RUN_TIME.search(cell.source):
        cell.source = RUN_TIME.sub(line, cell.source)
    else:
        title, _, rest = cell.source.partition("\n")
        cell.source = f"{title}\n\n{line}\n" + ("\n" + rest.lstrip("\n") if rest.strip() else "")
    nbformat.write(nb, path)


def execute(path: Path, env: dict, output: Path | None = None) -> float:
    """Run a notebook with nbconvert (in place, or into ``output``); returns the wall time in seconds."""
    target = ["--inplace"] if output is None else ["--output", str(output)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", *target,
                    "--ExecutePreprocessor.timeout=3600", path.name],
                   cwd=HERE, env=env, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return re.sub(r"\s+\d+-Core Processor|\(R\)|\(TM\)", "", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def main(names):
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    env = dict(os.environ, DDPM_PROFILE=os.environ.get("DDPM_PROFILE", "cpu"))
    timings_file = HERE / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    problems = []
    for p in paths:
        print(f"running {p.name} (DDPM_PROFILE=tiny, timed, not stored) ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            tiny_s = execute(p, dict(env, DDPM_PROFILE="tiny"), Path(tmp) / p.name)
        print(f"running {p.name} (DDPM_PROFILE={env['DDPM_PROFILE']}) ...", flush=True)
        cpu_s = execute(p, env)
        problems += clean(p)
        if env["DDPM_PROFILE"] == "cpu":
            timings[p.name] = {"cpu_s": round(cpu_s, 1), "tiny_s": round(tiny_s, 1), "cores": cores,
                               "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d")}
            timings_file.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
            set_run_time(p, run_time_line(cpu_s, tiny_s, timings[p.name]["cpu"], cores))
        print(f"  {p.name}: {cpu_s:.0f} s ({env['DDPM_PROFILE']}), {tiny_s:.0f} s (tiny)", flush=True)
    print("\n".join(problems) or "stored outputs are clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
