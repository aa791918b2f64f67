"""The verdict after a run: is it like your pictures, apart from them, or can this folder not tell?
(lesson 11, section 8; printed at the end of every run by lesson 09).

Two scores, each the KID (x1e3) of the samples against *all* the folder's pictures, with a
permutation test (``scores.kid_test``) whose standard error counts both sides' sizes:

    detail   a random network on each picture's fine detail (``detail_feature_fn``): sees blur
             and missing texture
    layout   a random network averaged over a 4x4 grid of the whole picture (``layout_feature_fn``):
             sees where things are, so it tells things from colour blobs

Each score is also given to known-bad pictures made from the folder, at the same n as the samples:
the pictures' **blobs** (phase-randomised: their colours and textures, no thing), the pictures
blurred by 1 and 2 px, and noise; and to the **floor**, one half of the pictures against the other.

The **call** (``CALLS``), from which the advice is written:

    "apart"      a score puts the samples beyond 2 standard errors from the pictures (the test's
                 p below P_APART, Bonferroni over the two scores); ``apart_by`` names the score(s)
    "too-small"  not apart, but the layout score cannot tell even the blobs from the pictures at this
                 n: the folder (or the sample count) is too small to judge whole pictures
    "like"       not apart, and the blobs are apart: the test could have seen blobs, and did not

Near-copies (``MemorisationCheck`` against all pictures, beside the share among real pictures) are
reported beside the call and, when clearly more common than among real pictures, come first in
the advice.
"""
from __future__ import annotations

import time

import numpy as np

from .copies import MemorisationCheck
from .features import as_unit_float, detail_feature_fn, layout_feature_fn
from .references import blob_images, gaussian_blur, noise_images
from .scores import kid_test, swd, swd_descriptors

CALLS = ("like", "apart", "too-small")
COPY_WARNING = 0.10          # this many more near-copies than among real pictures: say so first
MIN_PICTURES = 32            # fewer: no score at all
P_APART = 0.0228 / 2         # one-sided normal tail beyond 2 standard errors, split over two scores
PERMUTATIONS = 400           # the permutation test's random splits (the smallest p is 1/401)
SWD_PATCHES = 64             # 7x7 patches per picture and pyramid level for SWD
SCORES = {"detail": detail_feature_fn, "layout": layout_feature_fn}
SCORE_WORDS = {"detail": "fine detail", "layout": "whole-picture layout"}


def _test(f_query, f_real, seed):
    t = kid_test(f_query, f_real, n_permutations=PERMUTATIONS, seed=seed)
    return {"kid_x1e3": round(1e3 * t["kid"], 3), "se_x1e3": round(1e3 * t["se"], 3),
            "z": round(t["z"], 1), "p": round(t["p"], 4), "apart": bool(t["p"] < P_APART)}


class FolderVerdict:
    """A folder's side of the verdict, computed once: its pictures' features, the floor (half vs
    half), the known-bad references at sample count ``n`` and the copy check. ``judge(samples)``
    then costs only the samples' side (lesson 11 judges many sample sets against one folder)."""

    def __init__(self, pictures, n: int, seed: int = 0, feature_fns=None):
        self.pictures, self.n, self.seed = as_unit_float(pictures), int(n), seed
        self.fns = dict(SCORES, **(feature_fns or {}))
        pics = self.pictures
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(pics))
        a, b = order[: len(pics) // 2], order[len(pics) // 2:]                 # the halves of the floor
        some = pics[rng.permutation(len(pics))[:n]]                            # n pictures (all, if fewer)
        bad = {"blobs": blob_images(pics, n=n, seed=seed + 1),                # each at the samples' n
               "blurred 1px": gaussian_blur(some, 1.0), "blurred 2px": gaussian_blur(some, 2.0),
               "noise": noise_images((n,) + pics.shape[1:], seed=seed + 2)}
        self.features = {name: fn(pics) for name, fn in self.fns.items()}
        refs = {"real (half vs half)": {name: _test(f[a], f[b], seed) for name, f in self.features.items()}}
        for k, images in bad.items():
            refs[k] = {name: _test(fn(images), self.features[name], seed) for name, fn in self.fns.items()}
        self.descriptors = swd_descriptors(pics, seed=seed + 1, n_descriptors=SWD_PATCHES * min(n, len(pics)))
        refs["real (half vs half)"]["swd_x1e3"] = round(swd(pics[a], pics[b], patches_per_image=SWD_PATCHES,
                                                              seed=seed)["swd"], 1)
        for k, images in bad.items():
            refs[k]["swd_x1e3"] = self._swd(images)
        self.references = refs
        self.copy_check = MemorisationCheck(pics, feature_fn=None)
        self.real_copies = MemorisationCheck(pics[b], feature_fn=None).check(pics[a][:n])["share_flagged"]

    def _swd(self, images):
        return round(swd(images, self.pictures, patches_per_image=SWD_PATCHES, seed=self.seed,
                         descriptors_b=self.descriptors)["swd"], 1)

    def judge(self, samples, steps: int | None = None) -> dict:
        """The verdict on ``samples`` (n of them, see the module docstring): a JSON-able dict."""
        t0 = time.perf_counter()
        x = as_unit_float(samples)
        if len(x) != self.n or x.shape[1:] != self.pictures.shape[1:]:
            raise ValueError(f"samples of shape {x.shape}: this verdict was prepared for {self.n} samples of "
                             f"shape {self.pictures.shape[1:]}")
        scores = {name: _test(fn(x), self.features[name], self.seed) for name, fn in self.fns.items()}
        copies = self.copy_check.check(x)
        apart_by = [name for name in self.fns if scores[name]["apart"]]
        judged = self.references["blobs"]["layout"]["apart"]
        v = {"n": self.n, "n_pictures": int(len(self.pictures)),
             "call": "apart" if apart_by else ("like" if judged else "too-small"), "apart_by": apart_by,
             "scores": scores, "swd_x1e3": self._swd(x), "references": self.references,
             "near_copies": round(copies["share_flagged"], 3),
             "near_copies_among_real": round(self.real_copies, 3),
             "near_copy_median_gap_ratio": round(float(np.median(copies["pixel_ratio"])), 2)}
        v["advice"] = advice(v, steps)
        v["seconds"] = round(time.perf_counter() - t0, 1)
        return v


def verdict(samples, pictures, seed: int = 0, steps: int | None = None, feature_fns=None) -> dict:
    """Everything the end of a run reports about its samples (see the module docstring).

    samples, pictures: (N, H, W, 3) uint8 or [-1, 1]. ``steps``: the run's training steps (to
    suggest a number in the advice). ``feature_fns``: {"detail": fn, "layout": fn} to replace the
    two feature networks (tests). Returns a dict that ``json.dumps`` can write; "seconds" is the
    whole verdict's time."""
    t0 = time.perf_counter()
    pictures, x = as_unit_float(pictures), as_unit_float(samples)
    if len(pictures) < MIN_PICTURES:
        copies = MemorisationCheck(pictures, feature_fn=None).check(x) if len(pictures) > 1 else None
        share = round(copies["share_flagged"], 3) if copies else None
        v = {"n": int(len(x)), "n_pictures": int(len(pictures)), "call": "too-small", "apart_by": [],
             "near_copies": share}
        v["advice"] = advice(v, steps)
        return v
    v = FolderVerdict(pictures, len(x), seed, feature_fns).judge(x, steps)
    v["seconds"] = round(time.perf_counter() - t0, 1)
    return v


def pictures_needed(v: dict) -> int:
    """A rough count of pictures at which the layout score would tell blobs apart: the blob test's
    z grows about like the square root of the folder's size, and it must reach about 2.5."""
    z = max(v["references"]["blobs"]["layout"]["z"], 0.3) if "references" in v else 0.3
    return int(np.ceil(v["n_pictures"] * max(1.0, (2.5 / z) ** 2) / 10.0) * 10)


def advice(v: dict, steps: int | None = None) -> str:
    """One sentence on what to do next, written from ``v["call"]`` (and the near-copy share)."""
    more = f"STEPS={2 * steps}" if steps else "more STEPS"
    copies = v.get("near_copies")
    if copies is not None and copies - v.get("near_copies_among_real", 0.0) > COPY_WARNING:
        return (f"{copies:.0%} of the samples are near-copies of your pictures (of your real pictures, "
                f"{v.get('near_copies_among_real', 0.0):.0%} are near-copies of others): add more pictures "
                "rather than training longer.")
    if "scores" not in v:
        return (f"Only {v['n_pictures']} pictures: too few to score the samples against (at least "
                f"{MIN_PICTURES} are needed); look at the grid, and add pictures.")
    if v["call"] == "too-small":
        return ("This folder is too small for the score to judge whole pictures (it cannot even tell your "
                "pictures from their colour blobs): look at the grid and at each sample beside its nearest "
                f"picture. About {pictures_needed(v)} pictures would let it judge.")
    if v["call"] == "like":
        return ("The samples score like your own pictures in fine detail and in whole-picture layout, and "
                "this test can tell blobs from your pictures: to go further, add pictures or try SIZE=64.")
    refs, sc = v["references"], v["scores"]
    if "detail" in v["apart_by"] and sc["detail"]["kid_x1e3"] >= refs["blurred 2px"]["detail"]["kid_x1e3"]:
        return (f"The samples are still far from your pictures (their detail is worse than your pictures "
                f"blurred by 2 px): train longer ({more}); with few or very varied pictures, more pictures "
                "of one kind of thing help most.")
    if "layout" in v["apart_by"] and sc["layout"]["kid_x1e3"] >= refs["blobs"]["layout"]["kid_x1e3"]:
        return (f"The samples are colour blobs, not things yet: as far from your pictures' layout as your "
                f"pictures' own blobs are. Train longer ({more}); with few or very varied pictures, more "
                "pictures of one kind of thing help most.")
    if "detail" in v["apart_by"] and sc["detail"]["kid_x1e3"] >= refs["blurred 1px"]["detail"]["kid_x1e3"]:
        return f"The samples look like your pictures blurred by 1-2 px: training longer ({more}) should help."
    which = " and ".join(SCORE_WORDS[k] for k in v["apart_by"])
    better = [text for ok, text in (
        (sc["detail"]["kid_x1e3"] < refs["blurred 1px"]["detail"]["kid_x1e3"],
         "their detail is better than your pictures blurred by 1 px"),
        (sc["layout"]["kid_x1e3"] < refs["blobs"]["layout"]["kid_x1e3"],
         "their layout is closer than your pictures' blobs")) if ok]
    return (f"The samples are apart from your pictures in {which} (beyond 2 standard errors)"
            + (f", though {' and '.join(better)}" if better else "")
            + f": training longer ({more}) should help; with few or very varied pictures, more pictures of "
            "one kind help most.")


def format_verdict(v: dict) -> str:
    """The verdict as a few lines of text."""
    if "scores" not in v:
        return f"verdict: {v['call']}\n{v['advice']}"
    names = list(v["scores"])
    head = "".join(f"{k:>20s}   " for k in names)
    lines = [f"verdict on {v['n']} samples against your {v['n_pictures']} pictures (KID x1e3 +- its standard "
             f"error; * = apart: permutation test p < {P_APART:.1%}; lower is better)",
             f"  {'':22s}{head}SWD x1e3"]
    cell = lambda r: f"{r['kid_x1e3']:9.2f} +- {r['se_x1e3']:6.2f}{'*' if r['apart'] else ' '}   "
    lines.append(f"  {'samples':22s}" + "".join(cell(v["scores"][k]) for k in names) + f"{v['swd_x1e3']:6.1f}")
    for name, r in v["references"].items():
        lines.append(f"  {name:22s}" + "".join(cell(r[k]) for k in names) + f"{r['swd_x1e3']:6.1f}")
    lines.append(f"  near-copies of your pictures: {v['near_copies']:.0%} of the samples "
                 f"({v['near_copies_among_real']:.0%} of real pictures against the other half)")
    lines.append(f"  call: {v['call']}" + (f" (by {', '.join(SCORE_WORDS[k] for k in v['apart_by'])})"
                                          if v["apart_by"] else "") + f"   [{v['seconds']:.0f} s]")
    lines.append(v["advice"])
    return "\n".join(lines)
