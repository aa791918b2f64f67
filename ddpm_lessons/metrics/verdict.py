"""The verdict after a run: a score beside the folder's own floor and ceilings, the share of
near-copies, and one sentence on what to do next (lesson 11, section 8; printed by lesson 09).

    score        KID (x1e3) +- its standard error in the features of a random network applied to
                 the pictures' fine detail (``detail_feature_fn``: never trained, so it reads the same
                 on any folder; on two folders it orders real < a finished run < the same recipe
                 after 300 steps < blurred by 1 px < by 2 px < noise, each step by more than 3.5
                 paired standard errors: lesson 11, section 7), and SWD, against half B
    references   the same at the same n for n pictures of half A (the floor: as good as it gets),
                 those pictures blurred by 1 and 2 px, and noise (ceilings); SWD also catches a
                 collapsed model that repeats a few pictures
    shapes       KID in the random network's features of the whole picture (``random_feature_fn``),
                 beside real pictures: on two folders it orders real < finished < 300 steps by more
                 than 10 standard errors (it hardly sees blur, so it is read only for "still apart?")
    copies       the share of samples flagged by ``MemorisationCheck`` against *all* the pictures,
                 beside the share of real pictures (half A) flagged against half B: its floor
"""
from __future__ import annotations

import numpy as np

from .copies import MemorisationCheck
from .features import detail_feature_fn, random_feature_fn as shape_feature_fn
from .scores import ScoreReference, kid, paired_difference

COPY_WARNING = 0.10          # this many more near-copies than among real pictures: say so first


MIN_PICTURES = 32            # fewer: no score (half of them would be too few for KID's subsets)


def verdict(samples, pictures, feature_fn=detail_feature_fn, seed: int = 0, steps: int | None = None) -> dict:
    """Everything the end of a run reports about its samples: see the module docstring.

    ``steps``: the run's training steps (to suggest a number in the advice). Returns a dict that
    ``json.dumps`` can write (numbers and strings only)."""
    if len(pictures) < MIN_PICTURES:
        copies = MemorisationCheck(pictures, feature_fn=None).check(samples) if len(pictures) > 1 else None
        share = round(copies["share_flagged"], 3) if copies else None
        return {"n": int(len(samples)), "near_copies": share,
                "advice": f"Only {len(pictures)} pictures: too few to score the samples against (at least "
                          f"{MIN_PICTURES} are needed); add pictures."}
    reference = ScoreReference(pictures, feature_fn=feature_fn, seed=seed)
    n = min(len(samples), len(reference.a))
    x = np.asarray(samples)[:n]
    score = reference.score(x, with_subsets=True)
    baselines = reference.baselines(n)
    refs = {name: reference.score(images, with_subsets=True) for name, images in baselines.items()}
    floor = paired_difference(refs["real (other half)"], score)          # samples minus real
    copies = MemorisationCheck(pictures, feature_fn=None).check(x)
    # the same check on real pictures (half A against half B): a folder with near-identical pictures
    # (clock faces, moon phases, skin tones) has "near-copies" among its own real pictures too
    real_copies = MemorisationCheck(reference.b, feature_fn=None).check(baselines["real (other half)"])
    out = {"n": int(n), "features": "random network on fine detail",
           "kid_x1e3": round(1e3 * score["kid"], 2), "kid_se_x1e3": round(1e3 * score["kid_se"], 2),
           "swd_x1e3": round(score["swd"], 1),
           "references": {name: {"kid_x1e3": round(1e3 * r["kid"], 2), "kid_se_x1e3": round(1e3 * r["kid_se"], 2),
                                 "swd_x1e3": round(r["swd"], 1)} for name, r in refs.items()},
           "above_floor_z": round(floor["z"], 1),
           "near_copies": round(copies["share_flagged"], 3),
           "near_copies_among_real": round(real_copies["share_flagged"], 3),
           "near_copy_median_gap_ratio": round(float(np.median(copies["pixel_ratio"])), 2)}
    # the shapes-and-colours score: KID in the random network's features of the whole picture, on the
    # same halves and subsets (it tracks training progress; the detail score tracks blur and detail)
    fb, m = shape_feature_fn(reference.b), reference._subsets(n)
    shape = kid(shape_feature_fn(x), fb, n_subsets=m, seed=seed)
    shape_floor = kid(shape_feature_fn(baselines["real (other half)"]), fb, n_subsets=m, seed=seed)
    as_score = lambda k: {"kid": k["kid"], "kid_subsets": k["subset_kids"], "n": n}
    out.update(shape_kid_x1e3=round(1e3 * shape["kid"], 2), shape_kid_se_x1e3=round(1e3 * shape["se"], 2),
               shape_floor_kid_x1e3=round(1e3 * shape_floor["kid"], 2),
               shape_above_floor_z=round(paired_difference(as_score(shape_floor), as_score(shape))["z"], 1))
    out["advice"] = advice(out, steps)
    return out


def advice(v: dict, steps: int | None = None) -> str:
    """One sentence on what to do next, from the verdict's numbers (lesson 11, section 7: the
    detail score's references are calibrated; the shapes score tracks training progress)."""
    refs = v["references"]
    more = f"STEPS={2 * steps}" if steps else "more STEPS"
    if v["near_copies"] - v.get("near_copies_among_real", 0.0) > COPY_WARNING:
        return (f"{v['near_copies']:.0%} of the samples are near-copies of your pictures (of your real "
                f"pictures, {v.get('near_copies_among_real', 0.0):.0%} are near-copies of others): add more "
                "pictures rather than training longer.")
    if v["kid_x1e3"] >= refs["blurred sigma=2px"]["kid_x1e3"]:
        return (f"The samples are still far from your pictures (their detail is worse than your pictures "
                f"blurred by 2 px): train longer ({more}); with few or very varied pictures, more pictures "
                "of one kind of thing help most.")
    if v["kid_x1e3"] >= refs["blurred sigma=1px"]["kid_x1e3"]:
        return f"The samples look like your pictures blurred by 1-2 px: training longer ({more}) should help."
    if v["above_floor_z"] < 2 and v["shape_above_floor_z"] < 2:
        return ("The samples score like your own pictures, within what this many samples can tell "
                "apart: to go further, add pictures or try SIZE=64.")
    return (f"The samples' detail is {'like' if v['above_floor_z'] < 2 else 'close to'} your pictures' "
            f"(better than blurred by 1 px), but their shapes and colours are still "
            f"{v['shape_above_floor_z']:.0f} standard errors apart from real ones: training longer "
            f"({more}) should help; with few or very varied pictures, more pictures of one kind help most.")


def format_verdict(v: dict) -> str:
    """The verdict as a few lines of text."""
    if "references" not in v:
        return v["advice"]
    lines = [f"verdict on {v['n']} samples (KID x1e3 in a {v['features']}, SWD x1e3; lower is better):",
             f"  samples              KID {v['kid_x1e3']:9.2f} +- {v['kid_se_x1e3']:6.2f}   SWD {v['swd_x1e3']:6.1f}"]
    for name, r in v["references"].items():
        lines.append(f"  {name:20s} KID {r['kid_x1e3']:9.2f} +- {r['kid_se_x1e3']:6.2f}   SWD {r['swd_x1e3']:6.1f}")
    lines.append(f"  shapes and colours (KID x1e3 in a random network on the whole picture): samples "
                 f"{v['shape_kid_x1e3']:.2f} +- {v['shape_kid_se_x1e3']:.2f}, real {v['shape_floor_kid_x1e3']:.2f} "
                 f"({v['shape_above_floor_z']:.0f} standard errors apart)")
    lines.append(f"  near-copies of your pictures: {v['near_copies']:.0%} of the samples "
                 f"({v['near_copies_among_real']:.0%} of real pictures against the other half)")
    lines.append(v["advice"])
    return "\n".join(lines)
