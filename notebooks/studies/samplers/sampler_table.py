"""The README's sampler table, as Markdown, from notebooks/studies/samplers/results.json (compare_samplers.py).

    .venv/bin/python notebooks/studies/samplers/sampler_table.py
"""
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAMILIES = [  # (label, predicate on a run, the numbers listed)
    ("DPM-Solver++(2M), Karras spacing", lambda r: r["sampler"] == "dpm++2m" and r["spacing"] == "karras"),
    ("Heun (EDM), Karras", lambda r: r["sampler"] == "heun" and r["churn"] == 0),
    ("Heun with churn (γ = 0.25), Karras", lambda r: r["sampler"] == "heun" and r["churn"] > 0),
    ("DDIM η = 1 (ancestral, respaced)", lambda r: r["sampler"] == "ddim" and r["eta"] == 1.0 and r["spacing"] == "uniform"),
    ("DDIM η = 0, Karras", lambda r: r["sampler"] == "ddim" and r["eta"] == 0.0 and r["spacing"] == "karras"),
]


def main():
    res = json.loads((HERE / "results.json").read_text())
    runs = {k: r for k, r in res["runs"].items() if "sweep" in r.get("parts", []) or k == "ddpm-1000"}
    ref, floor = res["runs"]["ddpm-1000"], res["floor"]
    print("| sampler | network evaluations | detail KID ×10³ | SWD ×10³ | shapes KID ×10³ | reaches DDPM-1000 at |")
    print("|---|---|---|---|---|---|")
    print(f"| DDPM (Ho et al. Algorithm 2) | 1000 | {1e3 * ref['kid']:.2f} ± {1e3 * ref['kid_se']:.2f} | "
          f"{ref['swd']:.1f} | {1e3 * ref['shapes_kid']:.1f} ± {1e3 * ref['shapes_kid_se']:.1f} | — |")
    for label, keep in FAMILIES:
        rows = sorted((r for k, r in runs.items() if k != "ddpm-1000" and keep(r) and r["sigma_max"] == 80.0),
                      key=lambda r: r["nfe"])
        if not rows:
            continue
        reach = next((r["nfe"] for r in rows if r["reaches_ddpm"]), None)
        column = lambda fmt, key, scale=1.0: " / ".join(fmt.format(scale * r[key]) for r in rows)
        print(f"| {label} | {column('{:.0f}', 'nfe')} | {column('{:.2f}', 'kid', 1e3)} | "
              f"{column('{:.0f}', 'swd')} | {column('{:.0f}', 'shapes_kid', 1e3)} | "
              f"{reach if reach is not None else 'not within ' + str(rows[-1]['nfe'])} |")
    print(f"| real images (floor) | | {1e3 * floor['kid']:.2f} ± {1e3 * floor['kid_se']:.2f} | {floor['swd']:.1f} | "
          f"{1e3 * floor['shapes_kid']:.1f} | |")
    print(f"\nreference weights: {res.get('reference', {})}")


if __name__ == "__main__":
    main()
