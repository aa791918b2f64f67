"""The verdict after a run: a score beside the folder's own floor and ceilings, the share of
near-copies, and one sentence on what to do next (lesson 11, section 8; printed by lesson 09).

    score        KID (x1e3) +- its standard error, in the random network's feature space
                 (``random_feature_fn``: never trained, so it reads the same on any folder; lesson 11
                 section 7 shows it is calibrated on two folders), and SWD, against half B of
                 the pictures
    references   the same at the same n for n pictures of half A (the floor: as good as it gets),
                 those pictures blurred by 1 and 2 px, and noise (ceilings)
    copies       the share of samples flagged by ``MemorisationCheck`` against *all* the pictures
"""
from __future__ import annotations

import numpy as np

from .copies import MemorisationCheck
from .features import random_feature_fn
from .scores import ScoreReference, paired_difference

COPY_WARNING = 0.10          # more than this share of near-copies: say so first


def verdict(samples, pictures, feature_fn=random_feature_fn, seed: int = 0, steps: int | None = None) -> dict:
    """Everything the end of a run reports about its samples: see the module docstring.

    ``steps``: the run's training steps (to suggest a number in the advice). Returns a dict that
    ``json.dumps`` can write (floats, strings, lists only)."""
    reference = ScoreReference(pictures, feature_fn=feature_fn, seed=seed)
    n = min(len(samples), len(reference.a))
    x = np.asarray(samples)[:n]
    score = reference.score(x, with_subsets=True)
    baselines = reference.baselines(n)
    refs = {name: reference.score(images, with_subsets=True) for name, images in baselines.items()}
    floor = paired_difference(refs["real (other half)"], score)          # samples minus real
    copies = MemorisationCheck(pictures, feature_fn=None).check(x)
    out = {"n": int(n), "features": "random network (lesson 11)",
           "kid_x1e3": round(1e3 * score["kid"], 2), "kid_se_x1e3": round(1e3 * score["kid_se"], 2),
           "swd_x1e3": round(score["swd"], 1),
           "references": {name: {"kid_x1e3": round(1e3 * r["kid"], 2), "kid_se_x1e3": round(1e3 * r["kid_se"], 2),
                                 "swd_x1e3": round(r["swd"], 1)} for name, r in refs.items()},
           "above_floor_z": round(floor["z"], 1),
           "near_copies": round(copies["share_flagged"], 3),
           "near_copy_median_gap_ratio": round(float(np.median(copies["pixel_ratio"])), 2)}
    out["advice"] = advice(out, steps)
    return out


def advice(v: dict, steps: int | None = None) -> str:
    """One sentence on what to do next, from the verdict's numbers."""
    refs = v["references"]
    more = f"STEPS={2 * steps}" if steps else "more STEPS"
    copies = v["near_copies"] > COPY_WARNING
    if v["above_floor_z"] < 2:
        where = "as close to your pictures as this score can tell apart"
    elif v["kid_x1e3"] < refs["blurred sigma=1px"]["kid_x1e3"]:
        where = "close to your pictures (between real ones and real ones blurred by 1 px)"
    elif v["kid_x1e3"] < refs["blurred sigma=2px"]["kid_x1e3"]:
        where = "recognisably like your pictures but soft (between 1 and 2 px of blur)"
    else:
        where = "still far from your pictures (worse than real ones blurred by 2 px)"
    if copies:
        return (f"The samples are {where}, but {v['near_copies']:.0%} of them are near-copies of your "
                "pictures: add more pictures rather than training longer.")
    if v["above_floor_z"] < 2:
        return f"The samples are {where}: to go further, add pictures or try SIZE=64."
    if v["kid_x1e3"] < refs["blurred sigma=2px"]["kid_x1e3"]:
        return f"The samples are {where}: training longer ({more}) should still help."
    return (f"The samples are {where}: train longer ({more}); with few or very varied pictures, "
            "more pictures of one kind of thing help most.")


def format_verdict(v: dict) -> str:
    """The verdict as a few lines of text."""
    lines = [f"verdict on {v['n']} samples (KID in the {v['features']}'s features, x1e3; lower is better):",
             f"  samples              KID {v['kid_x1e3']:9.2f} +- {v['kid_se_x1e3']:6.2f}   SWD {v['swd_x1e3']:6.1f}"]
    for name, r in v["references"].items():
        lines.append(f"  {name:20s} KID {r['kid_x1e3']:9.2f} +- {r['kid_se_x1e3']:6.2f}   SWD {r['swd_x1e3']:6.1f}")
    lines.append(f"  near-copies of your pictures: {v['near_copies']:.0%} of the samples")
    lines.append(v["advice"])
    return "\n".join(lines)
