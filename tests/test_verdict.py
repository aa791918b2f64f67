"""The verdict's parts: the blob reference, the permutation test, and the call it is written from
(like / apart / too-small), on constructed cases where the right call is known."""
import json
from pathlib import Path

import numpy as np
import pytest

from ddpm_lessons import metrics
from ddpm_lessons.data import read_image_folder
from ddpm_lessons.metrics import as_unit_float
from ddpm_lessons.metrics.references import blob_images
from ddpm_lessons.metrics.scores import kid_test, mmd2_unbiased
from ddpm_lessons.metrics.verdict import CALLS, advice, format_verdict, verdict

TWEMOJI = Path(__file__).resolve().parent.parent / "data" / "twemoji-things"


@pytest.fixture(scope="module")
def things16():
    """data/twemoji-things at 16x16, shuffled (distinct pictures, no skin-tone siblings)."""
    x, _ = read_image_folder(TWEMOJI, 16)
    return as_unit_float(x)[np.random.default_rng(1).permutation(len(x))]


# ------------------------------------------------------------------ the blob reference

def _power_spectrum(x):
    return np.abs(np.fft.fft2(x.astype(np.float64), axes=(1, 2))) ** 2


def test_blobs_keep_each_pictures_histogram_and_power_spectrum_and_lose_its_layout(things16):
    x = things16[:24]
    b = blob_images(x, seed=0)
    assert b.shape == x.shape and b.dtype == np.float32
    # the per-channel histogram: exactly the same values, in another order
    np.testing.assert_allclose(np.sort(b.reshape(24, -1, 3), 1), np.sort(x.reshape(24, -1, 3), 1), atol=1e-6)
    # the power spectrum: within 15% (summed absolute error over the spectrum, median picture);
    # a random shuffle of the pixels keeps the histogram but whitens the spectrum (checked far off)
    err = lambda y: np.abs(_power_spectrum(y) - _power_spectrum(x)).sum((1, 2, 3)) / _power_spectrum(x).sum((1, 2, 3))
    shuffled = np.stack([p.reshape(-1, 3)[np.random.default_rng(i).permutation(256)].reshape(16, 16, 3)
                         for i, p in enumerate(x)])
    assert np.median(err(b)) < 0.15 and np.median(err(shuffled)) > 0.3, (np.median(err(b)), np.median(err(shuffled)))
    # the layout: the correlation of each blob with its picture falls from 1 to near 0
    corr = [np.corrcoef(p.ravel(), q.ravel())[0, 1] for p, q in zip(x, b)]
    assert np.median(corr) < 0.3, np.median(corr)
    # more blobs than pictures: new phases for the second round, and reproducible with the seed
    more = blob_images(x[:4], n=8, seed=0)
    assert not np.allclose(more[:4], more[4:]) and np.array_equal(more, blob_images(x[:4], n=8, seed=0))


# ------------------------------------------------------------------ the permutation test

def test_kid_test_gives_the_unbiased_kid_and_a_null_that_counts_both_sides():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((60, 8)), rng.standard_normal((30, 8))
    t = kid_test(a, b, n_permutations=300)
    assert t["kid"] == pytest.approx(mmd2_unbiased(a, b), rel=1e-9)
    assert abs(t["z"]) < 3 and t["p"] > 0.01 and t["n"] == (60, 30)
    # a shifted set is apart; and the null's spread shrinks when the *smaller* side grows
    assert kid_test(a + 0.7, b)["z"] > 5
    wide = kid_test(rng.standard_normal((600, 8)), rng.standard_normal((30, 8)))["se"]
    narrow = kid_test(rng.standard_normal((600, 8)), rng.standard_normal((300, 8)))["se"]
    assert narrow < 0.5 * wide, (narrow, wide)
    # calibrated: over random splits of one set, p < 0.05 about 5% of the time (binomial bound)
    pooled = rng.standard_normal((120, 8))
    ps = [kid_test(pooled[o[:60]], pooled[o[60:]], n_permutations=100, seed=s)["p"]
          for s, o in enumerate(rng.permuted(np.tile(np.arange(120), (60, 1)), axis=1))]
    assert np.mean(np.array(ps) < 0.05) <= 0.15, ps


# ------------------------------------------------------------------ the call

def test_other_real_pictures_are_called_like_blobs_apart_and_the_call_writes_the_advice(things16):
    pictures, others = things16[:500], things16[500:756]
    like = verdict(others, pictures, steps=100)
    assert like["call"] == "like" and like["apart_by"] == [], format_verdict(like)
    assert like["references"]["blobs"]["layout"]["apart"]           # the power the call needs
    assert not like["references"]["real (half vs half)"]["layout"]["apart"]
    assert "score like your own pictures" in like["advice"]
    blobs = verdict(blob_images(others, seed=5), pictures, steps=100)
    assert blobs["call"] == "apart" and "layout" in blobs["apart_by"], format_verdict(blobs)
    assert "blobs" in blobs["advice"] and "STEPS=200" in blobs["advice"]
    noise = verdict(np.clip(np.random.default_rng(0).standard_normal(others.shape), -1, 1), pictures, steps=100)
    assert noise["call"] == "apart" and "far from your pictures" in noise["advice"] and noise["near_copies"] == 0
    copies = verdict(pictures[:128][:, :, ::-1], pictures, steps=100)
    assert copies["near_copies"] > 0.9 and "near-copies" in copies["advice"]
    assert set(like) >= {"n", "n_pictures", "call", "scores", "references", "near_copies", "advice", "seconds"}
    json.dumps(like)                                                  # results.json can hold it
    for call in CALLS:                                                # the advice follows the call alone
        assert advice(dict(like, call=call, apart_by=["layout"] if call == "apart" else [])) != \
            advice(dict(like, call=[c for c in CALLS if c != call][0], apart_by=[]))


def test_a_folder_that_cannot_tell_blobs_from_pictures_is_too_small_never_like():
    """Pictures of pure noise: their blobs are noise too, so no score can tell them apart and
    samples of more noise must not be called "like" (an advice that skips the power check does)."""
    rng = np.random.default_rng(3)
    pictures = np.clip(0.5 * rng.standard_normal((40, 16, 16, 3)), -1, 1).astype(np.float32)
    samples = np.clip(0.5 * rng.standard_normal((128, 16, 16, 3)), -1, 1).astype(np.float32)
    v = verdict(samples, pictures, steps=100)
    assert not v["references"]["blobs"]["layout"]["apart"], format_verdict(v)
    assert v["call"] == "too-small" and "too small" in v["advice"] and "pictures would let it judge" in v["advice"]
    few = verdict(samples, pictures[:8])
    assert few["call"] == "too-small" and "too few" in few["advice"]
