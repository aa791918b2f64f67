"""Lesson 11's scores: the shipped feature network, KID, SWD, memorisation, the score callback."""
import json

import numpy as np
import pytest

from ddpm_lessons import metrics
from ddpm_lessons.metrics import (FEATURE_WEIGHTS, MemorisationCheck, ScoreCallback, ScoreReference,
                                  as_unit_float, evaluate_samples, feature_fn, feature_split,
                                  gaussian_blur, kid, laplacian_pyramid, mmd2_unbiased,
                                  resize_images, swd)


@pytest.fixture(scope="module")
def data32():
    images, sub, tone = metrics.load_labelled_data(size=32)
    return as_unit_float(images), sub, tone


@pytest.fixture(scope="module")
def data16(data32):
    return resize_images(data32[0], 16)


# ------------------------------------------------------------------ the feature network

def test_feature_net_ships_small_loads_offline_and_matches_its_report(data32):
    assert FEATURE_WEIGHTS.exists() and FEATURE_WEIGHTS.stat().st_size < 1_000_000
    info = metrics.feature_info()
    x, sub, tone = data32
    _, test = feature_split(len(x), 0.15, info["seed"])
    assert len(test) == info["held_out_images"]
    full = metrics.build_feature_net()
    full.load_weights(FEATURE_WEIGHTS)
    p_sub, p_tone = full.predict(x[test], verbose=0)
    acc_sub, acc_tone = np.mean(p_sub.argmax(1) == sub[test]), np.mean(p_tone.argmax(1) == tone[test])
    # the shipped weights reproduce the reported held-out accuracy, far above the majority class
    assert acc_sub == pytest.approx(info["held_out_accuracy"]["subcategory"], abs=0.01)
    assert acc_tone == pytest.approx(info["held_out_accuracy"]["skin_tone"], abs=0.01)
    assert acc_sub > 0.85 and acc_tone > 0.85, (acc_sub, acc_tone)
    f = feature_fn(x[:5])
    assert f.shape == (5, 128) and np.isfinite(f).all()
    np.testing.assert_allclose(feature_fn(x[:5]), f, rtol=1e-5)        # deterministic (no dropout)
    assert feature_fn(resize_images(x[:5], 16)).shape == (5, 128)        # other sizes are resized
    u8 = np.round((x[:5] + 1) * 127.5).astype(np.uint8)                 # uint8 pixels are accepted too
    np.testing.assert_allclose(feature_fn(u8), f, atol=1e-3 * np.abs(f).max())


# ------------------------------------------------------------------ KID

def test_mmd2_unbiased_matches_the_definition():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((4, 3)) + 0.3
    k = lambda x, y: (x @ y / 3 + 1) ** 3
    aa = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    bb = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    ab = sum(k(a[i], b[j]) for i in range(5) for j in range(4)) / 20
    assert mmd2_unbiased(a, b) == pytest.approx(aa + bb - 2 * ab, rel=1e-10)


def test_kid_is_zero_within_its_standard_error_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(1)
    z = [kid(rng.standard_normal((300, 16)), rng.standard_normal((300, 16)), seed=s) for s in range(40)]
    ratios = np.array([r["kid"] / r["se"] for r in z])
    # the standard error is honest: about 95% of null draws lie within 2 se (not 50%, not 100%)
    assert np.mean(np.abs(ratios) < 2) >= 0.8, ratios
    assert np.mean(np.abs(ratios) < 0.2) < 0.5, "se looks far too large"
    a = rng.standard_normal((300, 16))
    assert kid(a, a, estimator="u-statistic")["kid"] == pytest.approx(0, abs=1e-12)   # a set vs itself
    k = metrics.polynomial_kernel(a, a)                   # the default estimator: -2/(n-1) (diag - mean)
    expected = -2 / 299 * (np.trace(k) / 300 - k.mean())
    same = kid(a, a)
    assert same["kid"] == pytest.approx(expected, rel=1e-9) and abs(same["kid"]) < 4 * same["se"]
    shifted = kid(a, rng.standard_normal((300, 16)) + 0.5)
    assert shifted["kid"] > 5 * shifted["se"], shifted


def test_kid_in_feature_space_on_real_data(data32):
    x = data32[0]
    order = np.random.default_rng(0).permutation(len(x))
    fa, fb = feature_fn(x[order[:500]]), feature_fn(x[order[500:1000]])
    null = kid(fa, fb)
    assert abs(null["kid"]) < 3 * null["se"], null                   # two halves of one set
    darker = kid(fa, feature_fn(np.clip(x[order[500:1000]] - 0.3, -1, 1)))
    assert darker["kid"] > 5 * darker["se"] and darker["kid"] > 20 * abs(null["kid"]), darker


def test_kid_refuses_too_few_points():
    with pytest.raises(ValueError, match="points per set"):
        kid(np.zeros((10, 4)), np.zeros((100, 4)), n_subsets=10)


# ------------------------------------------------------------------ SWD

def test_laplacian_pyramid_reconstructs_the_image(data16):
    levels = laplacian_pyramid(data16[:4], min_resolution=8)
    assert [l.shape[1] for l in levels] == [16, 8]
    back = levels[0] + metrics._pyr_up(levels[1])
    np.testing.assert_allclose(back, data16[:4], atol=1e-5)


@pytest.mark.parametrize("size", [16, 32])
def test_swd_orders_real_blurred_and_noise(data16, data32, size):
    x = data16 if size == 16 else data32[0]
    order = np.random.default_rng(2).permutation(len(x))
    a, b = x[order[:150]], x[order[150:450]]
    noise = np.clip(np.random.default_rng(3).standard_normal(a.shape), -1, 1)
    sets = [a, gaussian_blur(a, 0.7), gaussian_blur(a, 2.0), noise]
    scores = [swd(s, b, patches_per_image=48, num_directions=256)["swd"] for s in sets]
    assert scores == sorted(scores) and scores[1] > 1.1 * scores[0], scores


# ------------------------------------------------------------------ memorisation

@pytest.fixture(scope="module")
def groups16(data16):
    """Near-duplicate groups of the shipped images at 16x16: same emoji name, or closer than 3/4 of
    the typical gap (skin tones of one emoji, 'man X' and 'woman X' pictures)."""
    from ddpm_lessons.data import default_dataset_path, emoji_base_name, read_image_folder, read_labels
    names = {r["file"]: emoji_base_name(r["name"]) for r in read_labels()}
    files = read_image_folder(default_dataset_path(), 16)[1].used
    return metrics.near_duplicate_groups(data16, names=[names[f] for f in files])


def test_groups_join_names_and_near_duplicates_and_the_split_keeps_them_whole(data16, groups16):
    from ddpm_lessons.data import default_dataset_path, read_image_folder, read_labels
    names = {r["file"]: r["name"] for r in read_labels()}
    files = read_image_folder(default_dataset_path(), 16)[1].used
    by_name = {}
    for f, g in zip(files, groups16):
        by_name.setdefault(names[f], set()).add(g)
    assert all(len(g) == 1 for g in by_name.values()), "every skin tone of one emoji is in one group"
    from ddpm_lessons.data import emoji_base_name
    assert emoji_base_name("woman superhero") == emoji_base_name("man superhero") == "superhero"
    assert len(set(groups16)) < len(by_name), "near-identical pictures of different names are joined too"
    train_idx, held_idx = metrics.grouped_split(groups16, 0.15, seed=0)
    assert not set(groups16[train_idx]) & set(groups16[held_idx])
    assert len(np.union1d(train_idx, held_idx)) == len(data16)
    assert abs(len(set(groups16[held_idx])) - 0.15 * len(set(groups16))) <= 1


def test_memorisation_flags_copies_flips_and_shifts_but_not_distinct_images(data16, groups16):
    train_idx, held_idx = metrics.grouped_split(groups16, 0.15, seed=0)
    train = data16[train_idx]
    check = MemorisationCheck(train, feature_fn=None, num_reference=200)
    rng = np.random.default_rng(4)
    pick = lambda: train[rng.choice(len(train), 30, replace=False)]
    copies = {"copy": pick(), "flip": pick()[:, :, ::-1], "shift 1px": np.roll(pick(), 1, axis=2),
              "shift 2px": np.roll(pick(), (2, -1), axis=(1, 2)),
              "copy + noise 0.03": np.clip(pick() + 0.03 * rng.standard_normal((30, 16, 16, 3)), -1, 1)}
    for name, x in copies.items():
        r = check.check(x)
        assert r["flagged"].all(), f"{name}: only {r['share_flagged']:.0%} flagged, ratios {r['pixel_ratio']}"
    held = check.check(data16[held_idx])        # new pictures: no near-copy on the training side
    assert held["share_flagged"] < 0.05, held["share_flagged"]
    assert np.median(held["pixel_ratio"]) > 0.6


def test_an_average_of_pictures_is_flagged_far_less_than_by_distance_alone():
    """The knn condition. In a folder of distinct pictures (data/twemoji-things, no skin-tone
    siblings) a blurry mean of 4 pictures is closer to each of them than two pictures are to
    each other, so the distance alone would call most such means copies; but a mean is not much
    closer to one picture than to the next ones, so most are not flagged."""
    from pathlib import Path
    from ddpm_lessons.data import read_image_folder
    x, _ = read_image_folder(Path(__file__).resolve().parent.parent / "data" / "twemoji-things", 16)
    train = as_unit_float(x)[::3]
    check = MemorisationCheck(train, feature_fn=None, num_reference=200)
    rng = np.random.default_rng(0)
    means = np.stack([train[rng.choice(len(train), 4, replace=False)].mean(0) for _ in range(30)])
    r = check.check(means)
    by_distance_alone = np.mean(r["pixel_ratio"] < check.threshold)
    assert by_distance_alone > 0.8 and r["share_flagged"] < 0.5 * by_distance_alone, \
        (by_distance_alone, r["share_flagged"])


def test_memorisation_in_feature_space_finds_the_copied_image(data16):
    train = data16[:200]
    check = MemorisationCheck(train, num_reference=100)
    r = check.check(train[[5, 50, 150]][:, :, ::-1])
    assert list(r["feature_index"]) == [5, 50, 150] and list(r["pixel_index"]) == [5, 50, 150]
    assert (r["feature_ratio"] < 0.05).all() and r["flagged"].all()
    pairs, order = check.closest_pairs(train[[5, 50, 150]], r, k=3)
    assert pairs.shape == (6, 16, 16, 3)


# ------------------------------------------------------------------ one-call score and callback

def test_evaluate_samples_floor_below_ceilings(data16):
    order = np.random.default_rng(5).permutation(len(data16))
    reference = ScoreReference(data16[order[:600]], swd_patches=32)
    result = evaluate_samples(data16[order[800:864]], reference=reference)
    refs = result["references"]
    floor = refs["real (other half)"]
    assert set(refs) == {"real (other half)", "blurred sigma=1px", "blurred sigma=2px", "noise"}
    for key in ("kid", "swd"):
        assert floor[key] < refs["blurred sigma=2px"][key] < refs["noise"][key], (key, refs)
        assert result[key] < refs["blurred sigma=2px"][key], (key, result[key])   # real samples look real
    assert "samples" in metrics.format_scores(result)


def test_score_callback_scores_every_n_steps_and_keeps_the_best(tmp_path, data16):
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import TrainConfig, Trainer
    from ddpm_lessons.unet import build_unet
    import tensorflow as tf
    x8 = resize_images(data16[:64], 8)
    model = build_unet(image_size=8, base_width=8, channel_mults=(1,), attention_resolutions=(), groups=4)
    trainer = Trainer(model, NoiseSchedule.from_kind("cosine", 1000),
                      TrainConfig(warmup_steps=1, jit_compile=False))
    cb = ScoreCallback(every=2, real_images=x8, num_samples=16, seed=3, num_steps=4,
                       keep_best_dir=tmp_path, verbose=False)
    trainer.fit(tf.data.Dataset.from_tensor_slices(x8).batch(16), 4, callbacks=[cb], progress=False)
    assert [r["step"] for r in cb.history] == [2, 4]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["kid"] == min(r["kid"] for r in cb.history)
    assert (tmp_path / "best_ema.weights.h5").exists()
    again = cb.evaluate(trainer)                                   # fixed seed: same samples again
    assert again["swd"] == pytest.approx(cb.history[-1]["swd"], rel=1e-4)


# ------------------------------------------------------------------ the protocol and the verdict

def test_paired_difference_wins_only_beyond_two_paired_standard_errors(data16):
    reference = ScoreReference(data16[:800], feature_fn=metrics.random_feature_fn, swd_patches=16)
    n = 128
    real = reference.score(reference.a[:n], with_subsets=True)
    other_real = reference.score(reference.a[n:2 * n], with_subsets=True)
    darker = reference.score(np.clip(reference.a[:n] - 0.3, -1, 1), with_subsets=True)
    d = metrics.paired_difference(real, darker)
    assert d["a_wins"] and not d["b_wins"] and d["z"] > 2, d
    assert metrics.paired_difference(darker, real)["b_wins"]
    tie = metrics.paired_difference(real, other_real)
    assert not tie["a_wins"] and not tie["b_wins"], tie           # two real sets: no winner
    with pytest.raises(ValueError):
        metrics.paired_difference(reference.score(reference.a[:n]), darker)   # needs the subsets
