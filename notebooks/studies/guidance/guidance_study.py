"""Guidance measured, not eyeballed (lesson 13): agreement, diversity and quality for each w.

    .venv/bin/python notebooks/studies/guidance/guidance_study.py                       # the shipped conditional network
    .venv/bin/python notebooks/studies/guidance/guidance_study.py --run runs/<run>      # a run of make train CONDITIONAL=1
    .venv/bin/python notebooks/studies/guidance/guidance_study.py --num-samples 64      # a quick look (not the protocol)

For each guidance scale w, with the profile's sampler and fresh seeds (4000, 4001, ... one per batch):

* **agreement** (fidelity): for each label kind, every class is asked for equally often (the other
  kind "no label"), about 512 samples per kind; lesson 11's feature network classifies them, and the
  macro average (each class counts the same) of the share classified as the class asked for is
  reported. Beside it, the classifier's own accuracy on real pictures: as shipped (a random held-out
  split) and retrained the same way with all skin-tone variants of one emoji on one side of the
  split (``train_feature_net(split="grouped")``, 30-40 s on 2 cores);
* **diversity**: the mean pairwise distance between the feature vectors of samples asked for the
  same class (real pictures of one class: the same measure on the data);
* **quality** by the course's protocol: n = 512 samples whose labels are those of 512 random real
  pictures (class-proportional), scored against the real pictures by one ``ScoreReference`` per
  feature space (detail KID +- s.e., SWD, whole-picture KID), with the paired difference to 512 samples of the
  shipped *unconditional* reference network from the same seeds.

Writes notebooks/studies/guidance/results.json (read by lesson 13). About 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

import ddpm_lessons  # noqa: F401  (quiets TensorFlow's start-up logs)
from ddpm_lessons.data import class_labels, default_dataset_path, read_image_folder
from ddpm_lessons.guidance import (agreement, class_diversity, load_conditional_reference, proportional_labels,
                                   requests)
from ddpm_lessons.metrics import (PROTOCOL_SAMPLES, ScoreReference, classify_images, detail_feature_fn,
                                  feature_fn, feature_info, paired_difference, random_feature_fn,
                                  train_feature_net)
from ddpm_lessons.profiles import describe_sampler, get_profile, sampler_options
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import load_reference_weights, reference_prediction
from ddpm_lessons.unet import build_unet

HERE = Path(__file__).resolve().parent          # notebooks/studies/guidance: results.json
SEED = 4000                        # fresh: no lesson or other study draws with these
BATCH = 128
GUIDANCE = (0.0, 1.0, 2.0, 3.0, 4.0)


def load_model(run):
    """(conditional EMA U-Net, settings Profile, kinds [(name, classes)], where it came from)."""
    if run:
        from ddpm_lessons.runs import load_ema_model
        ema, _, saved, ckpt = load_ema_model(run)
        return ema, saved["profile"], [(k["kind"], k["classes"]) for k in saved["labels"]], f"{run} ({ckpt})"
    model, saved = load_conditional_reference()
    return model, saved["profile"], [(k["kind"], k["classes"]) for k in saved["labels"]], "the shipped conditional network"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="", help="a run folder of make train CONDITIONAL=1 (default: the shipped one)")
    ap.add_argument("--num-samples", type=int, default=PROTOCOL_SAMPLES)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args(argv)
    n = args.num_samples
    t_start = time.perf_counter()

    model, settings, kinds, source = load_model(args.run)
    schedule = NoiseSchedule.from_kind(settings.schedule, settings.timesteps)
    options = sampler_options(settings)
    images, report = read_image_folder(default_dataset_path(), settings.image_size)
    real_labels, real_kinds = class_labels(report)
    if [names for _, names in real_kinds] != [names for _, names in kinds]:
        raise SystemExit("the network's classes are not the shipped portraits' (subcategory, skin tone): "
                         "this study classifies with lesson 11's network, which knows only those")
    print(f"{source}: {describe_sampler(settings)}; n = {n} per measurement, seeds from {SEED}", flush=True)

    # the classifier's accuracy on real pictures: as shipped, and on emoji it never saw in any tone
    info = feature_info()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        grouped = train_feature_net(out_dir=tmp, split="grouped")
        print(f"classifier retrained on a grouped split in {time.perf_counter() - t0:.0f} s: held-out macro "
              f"accuracy {grouped['held_out_macro_accuracy']}", flush=True)
    classifier = {"shipped_held_out_accuracy": info["held_out_accuracy"],
                  "shipped_split": info["split"],
                  "grouped_held_out_accuracy": grouped["held_out_accuracy"],
                  "grouped_held_out_macro_accuracy": grouped["held_out_macro_accuracy"],
                  "grouped_held_out_images": grouped["held_out_images"], "grouped_split": grouped["split"]}
    real_pred = classify_images(images)
    real_feats = feature_fn(images)
    real_div = {kind: class_diversity(real_feats, real_labels[:, k], len(names)) for k, (kind, names) in enumerate(kinds)}

    detail = ScoreReference(images, feature_fn=detail_feature_fn)
    shapes = ScoreReference(images, feature_fn=random_feature_fn)
    m = min(n, len(detail.a))
    floor = {**{k: v for k, v in detail.score(detail.a[:m]).items() if k in ("kid", "kid_se", "swd")},
             "shapes_kid": shapes.score(shapes.a[:m])["kid"], "n": m}

    def score(x):
        s, sh = detail.score(x, with_subsets=True), shapes.score(x, with_subsets=True)
        return s, sh

    # the unconditional reference network, same seeds: the quality to compare with
    ref = load_reference_weights(build_unet(get_profile("cpu")), reference_prediction())
    t0 = time.perf_counter()
    x_ref = generate(ref, schedule, n, seed=SEED, batch_size=BATCH, **{**options, "prediction": reference_prediction()})
    ref_s, ref_sh = score(x_ref)
    unconditional = {"kid": ref_s["kid"], "kid_se": ref_s["kid_se"], "swd": ref_s["swd"],
                     "shapes_kid": ref_sh["kid"], "shapes_kid_se": ref_sh["kid_se"]}
    print(f"unconditional reference: detail KID x1e3 {1e3 * ref_s['kid']:.2f} +- {1e3 * ref_s['kid_se']:.2f}  "
          f"SWD {ref_s['swd']:.1f}  shapes {1e3 * ref_sh['kid']:.1f}  ({time.perf_counter() - t0:.0f} s)", flush=True)

    rows = []
    asked_quality = proportional_labels(real_labels, n, seed=SEED)
    for w in GUIDANCE:
        t0 = time.perf_counter()
        row = {"w": w, "agreement": {}, "per_class": {}, "diversity": {}}
        for k, (kind, names) in enumerate(kinds):
            per_kind = len(names) * math.ceil(n / len(names))           # every class equally often
            asked = requests(settings.num_classes, k, per_kind)
            x = generate(model, schedule, per_kind, seed=SEED + 100 * (k + 1), batch_size=BATCH, labels=asked,
                         guidance=w, **options)
            a = agreement(classify_images(x)[:, k], asked[:, k], len(names))
            row["agreement"][kind], row["per_class"][kind] = a["macro"], a["per_class"]
            row["diversity"][kind] = class_diversity(feature_fn(x), asked[:, k], len(names))
            row.setdefault("n_per_kind", {})[kind] = per_kind
        x = generate(model, schedule, n, seed=SEED, batch_size=BATCH, labels=asked_quality, guidance=w, **options)
        s, sh = score(x)
        d, d_sh = paired_difference(ref_s, s), paired_difference(ref_sh, sh)
        row.update(kid=s["kid"], kid_se=s["kid_se"], swd=s["swd"], shapes_kid=sh["kid"], shapes_kid_se=sh["kid_se"],
                   vs_unconditional=d["diff"], vs_unconditional_se=d["se"],
                   shapes_vs_unconditional=d_sh["diff"], shapes_vs_unconditional_se=d_sh["se"],
                   seconds=round(time.perf_counter() - t0, 1))
        rows.append(row)
        print(f"w = {w:g}: agreement " + ", ".join(f"{kind} {100 * a:.1f}%" for kind, a in row["agreement"].items())
              + f"; diversity " + ", ".join(f"{v:.2f}" for v in row["diversity"].values())
              + f"; detail KID x1e3 {1e3 * s['kid']:.2f} +- {1e3 * s['kid_se']:.2f} "
              f"(vs unconditional {1e3 * d['diff']:+.2f} +- {1e3 * d['se']:.2f}), SWD {s['swd']:.1f}, "
              f"shapes {1e3 * sh['kid']:.1f} ({row['seconds']:.0f} s)", flush=True)

    out = {"source": source if not args.run else Path(args.run).name, "sampler": describe_sampler(settings),
           "num_samples": n, "seed": SEED, "guidance": list(GUIDANCE),
           "kinds": [{"kind": kind, "classes": names} for kind, names in kinds],
           "classifier": classifier, "real_diversity": real_div,
           "real_agreement_shipped": {kind: agreement(real_pred[:, k], real_labels[:, k], len(names))["macro"]
                                      for k, (kind, names) in enumerate(kinds)},
           "unconditional": unconditional, "floor": floor, "rows": rows,
           "minutes": round((time.perf_counter() - t_start) / 60, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} in {out['minutes']} min")


if __name__ == "__main__":
    main()
