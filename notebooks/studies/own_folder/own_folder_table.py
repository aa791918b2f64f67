"""The own-folder study's table (lesson 10): folder x method x training minutes.

Reads notebooks/studies/own_folder/results/<folder>-<method>.json (made by own_folder_study.py) and prints,
per row, layout and detail KID x 1e3 +- SE, SWD x 1e3, the verdict's near-copy share, and each
method's paired difference to "scratch" (today's default) at the same minutes in the layout score:
the difference of KID on the same real subsets, its paired standard error, and "win" / "loss" only
beyond two of them (``metrics.scores.paired_difference``).

    .venv/bin/python notebooks/studies/own_folder/own_folder_table.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def paired(a_subsets, b_subsets):
    """(mean of b - a, its standard error) over the shared real subsets."""
    d = np.asarray(b_subsets) - np.asarray(a_subsets)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def load(results=RESULTS) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(results).glob("*.json"))
            if p.stem not in ("nearest", "leak_turns")}     # own_folder_nearest.py, leak_turns.py


def rows(results=RESULTS):
    """One dict per (folder, method, minutes), with the paired layout and detail differences to scratch."""
    found = load(results)
    out = []
    for key, r in found.items():
        if r["method"] in LEAK_METHODS or r["folder"] == "portraits":   # the leak demonstration: leak_table
            continue
        base = found.get(f"{r['folder']}-scratch")
        for minutes, s in r["scores"].items():
            row = {"folder": r["folder"], "method": r["method"], "minutes": int(minutes),
                   "steps": r["snapshots"][minutes]["steps"], "images": r["images"],
                   "layout": s["layout"]["kid_x1e3"], "layout_se": s["layout"]["se_x1e3"],
                   "detail": s["detail"]["kid_x1e3"], "detail_se": s["detail"]["se_x1e3"],
                   "swd": s["swd_x1e3"], "near_copies": s["verdict"]["near_copies"], "call": s["verdict"]["call"]}
            if base and r["method"] != "scratch" and minutes in base["scores"]:
                for name in ("layout", "detail"):
                    row[f"{name}_vs_scratch"] = paired(base["scores"][minutes][name]["subsets_x1e3"],
                                                       s[name]["subsets_x1e3"])
            out.append(row)
    order = {"scratch": 0, "scratch-aug": 1, "general": 2, "general-aug": 3, "leak": 4, "told": 5}
    return sorted(out, key=lambda x: (x["folder"], order.get(x["method"], 9), x["minutes"]))


LEAK_METHODS = ("leak", "told", "leak-ref", "told-ref", "plain-ref")


def leak_table(results=RESULTS) -> list:
    """The leak demonstration's rows (own_folder_study.py's methods leak/told, -ref: from the emoji
    reference): method, minutes, augmentation p, told, layout and detail KID x1e3 +- SE, and the share
    of samples counted turned by eye (``turned_by_eye`` in the JSON, when counted)."""
    out = []
    for r in load(results).values():
        if r["method"] not in LEAK_METHODS and r["folder"] != "portraits":
            continue
        for minutes, s in r["scores"].items():
            out.append({"folder": r["folder"], "method": r["method"], "minutes": int(minutes),
                        "augment_p": r["settings"]["augment_p"], "told": bool(r["settings"]["augment_dim"]),
                        "layout": s["layout"]["kid_x1e3"], "layout_se": s["layout"]["se_x1e3"],
                        "detail": s["detail"]["kid_x1e3"], "detail_se": s["detail"]["se_x1e3"],
                        "turned_by_eye": r.get("turned_by_eye", {}).get(minutes)})
    return sorted(out, key=lambda x: (x["method"].endswith("-ref"), x["method"], x["minutes"]))


def verdict_word(diff, se):
    return "win" if diff < -2 * se else "loss" if diff > 2 * se else "-"


def main():
    table = rows()
    if not table:
        print(f"no results in {RESULTS}: run own_folder_study.py first")
        return 1
    print(f"{'folder':11s} {'method':11s} {'min':>3s} {'steps':>5s} {'layout KID':>14s} {'detail KID':>14s} "
          f"{'SWD':>5s} {'copies':>6s}  {'layout vs scratch':>22s}  {'detail vs scratch':>22s}")
    for r in table:
        vs = ""
        for name in ("layout", "detail"):
            if f"{name}_vs_scratch" in r:
                d, se = r[f"{name}_vs_scratch"]
                vs += f"  {d:+7.2f} +- {se:5.2f} {verdict_word(d, se):>4s}"
        print(f"{r['folder']:11s} {r['method']:11s} {r['minutes']:3d} {r['steps']:5d} "
              f"{r['layout']:6.2f} +- {r['layout_se']:5.2f} {r['detail']:6.2f} +- {r['detail_se']:5.2f} "
              f"{r['swd']:5.1f} {r['near_copies']:6.1%}{vs}")
    leak = leak_table()
    if leak:
        print("\nthe leak: augmentation with p per transform, the network told the transforms or not")
        for r in leak:
            eye = "" if r["turned_by_eye"] is None else f"  turned by eye {r['turned_by_eye']}"
            print(f"{r['folder']:11s} {r['method']:9s} {r['minutes']:3d} min  p {r['augment_p']:.1f}  "
                  f"told {'yes' if r['told'] else 'no ':3s}  layout {r['layout']:6.2f} +- {r['layout_se']:5.2f}  "
                  f"detail {r['detail']:6.2f} +- {r['detail_se']:5.2f}{eye}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
