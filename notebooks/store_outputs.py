"""Run lessons in a profile and store their outputs for readers: `make notebooks`.

    python notebooks/store_outputs.py [NN_name.ipynb ...]     (default: every lesson)

Stored outputs are what a learner on a laptop sees: run with DDPM_PROFILE=cpu.
After execution TensorFlow's start-up log lines (stderr) are removed, and any output that
shows a machine path is reported, since stored outputs must not contain one.
"""
import os
import re
import subprocess
import sys
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


def main(names):
    paths = [HERE / n for n in names] if names else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    env = dict(os.environ, DDPM_PROFILE=os.environ.get("DDPM_PROFILE", "cpu"))
    problems = []
    for p in paths:
        print(f"running {p.name} (DDPM_PROFILE={env['DDPM_PROFILE']}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                        "--inplace", "--ExecutePreprocessor.timeout=3600", p.name],
                       cwd=HERE, env=env, check=True, stderr=subprocess.DEVNULL)
        problems += clean(p)
    print("\n".join(problems) or "stored outputs are clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
