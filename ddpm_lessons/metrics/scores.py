"""Sample-quality scores of lesson 11: KID in the feature network's space, SWD in pixel space.

    kid               Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2
                      (Gretton et al. 2012) with the kernel k(x, y) = (x.y / d + 1)^3
    swd               multi-scale sliced Wasserstein distance on Laplacian-pyramid patches
                      (Karras et al. 2018)
    ScoreReference    real data in halves: scores against one half, floor and ceilings
    evaluate_samples  all of it in one call -> dict; format_scores prints it
"""
from __future__ import annotations


import numpy as np

from .features import as_unit_float, feature_fn
from .references import _filter_axis, gaussian_blur, noise_images  # noqa: F401 (gaussian_blur: re-exported)


# ============================================================================ the binomial filter

_GAUSS5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0   # the binomial filter of cv2.pyrDown


# ============================================================================ KID

def polynomial_kernel(a, b, degree: int = 3, gamma=None, coef0: float = 1.0):
    """k(x, y) = (gamma x.y + coef0)^degree with gamma = 1/d: (len(a), len(b))."""
    gamma = 1.0 / a.shape[1] if gamma is None else gamma
    return (gamma * (a @ b.T) + coef0) ** degree


def mmd2_unbiased(fa, fb, estimator: str = "unbiased", **kernel) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) between feature sets (m, d) and (n, d):

        1/(m(m-1)) sum_{i!=j} k(a_i, a_j) + 1/(n(n-1)) sum_{i!=j} k(b_i, b_j) - 2/(mn) sum_{i,j} k(a_i, b_j)

    ``estimator="u-statistic"`` (m = n only) also leaves the pairs i = j out of the cross term
    (Gretton et al. Lemma 6); both are unbiased for independent sets. They differ when a set is
    compared with *itself*: the u-statistic gives exactly 0, the default gives
    -2/(n-1) (mean k(a_i, a_i) - mean k(a_i, a_j)), slightly below 0 (a set is not an
    independent draw of itself). Binkowski et al.'s KID code uses the default.
    """
    m, n = len(fa), len(fb)
    if m < 2 or n < 2:
        raise ValueError(f"MMD^2 needs at least 2 points per set, got {m} and {n}")
    kaa, kbb, kab = polynomial_kernel(fa, fa, **kernel), polynomial_kernel(fb, fb, **kernel), \
        polynomial_kernel(fa, fb, **kernel)
    within = (kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
    if estimator == "unbiased":
        return float(within - 2.0 * kab.mean())
    if estimator == "u-statistic":
        if m != n:
            raise ValueError(f"the u-statistic estimator needs sets of equal size, got {m} and {n}")
        return float(within - 2.0 * (kab.sum() - np.trace(kab)) / (m * (m - 1)))
    raise ValueError(f"unknown estimator {estimator!r}: 'unbiased' or 'u-statistic'")


def kid(fa, fb, n_subsets: int = 10, seed: int = 0, min_subset: int = 4,
        estimator: str = "unbiased") -> dict:
    """Kernel Inception Distance between two feature sets (m, d) and (n, d).

    ``kid``: the unbiased MMD^2 with the cubic polynomial kernel over *all* points (it is 0 in
    expectation when both sets come from one distribution, and can then be slightly negative;
    ``estimator``: see ``mmd2_unbiased``).
    ``se``: its standard error, from ``n_subsets`` **disjoint** random subsets of each set: the
    subset estimates are independent and unbiased, so std / sqrt(n_subsets) is an honest
    standard error of their mean, and a conservative one for the all-points estimate (which
    uses more pairs). ``subset_kids`` holds them. Binkowski et al. and clean-fid instead average
    overlapping subsets of 1000; with our few hundred images that is no longer needed.
    """
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise ValueError(f"expected feature arrays (m, d) and (n, d), got {fa.shape} and {fb.shape}")
    small = min(len(fa), len(fb))
    if small < n_subsets * min_subset:
        raise ValueError(f"KID with {n_subsets} disjoint subsets of at least {min_subset} needs "
                         f"{n_subsets * min_subset} points per set, got {len(fa)} and {len(fb)}: "
                         "use more samples or fewer n_subsets")
    rng = np.random.default_rng(seed)
    pa, pb = rng.permutation(len(fa)), rng.permutation(len(fb))
    subs = np.array([mmd2_unbiased(fa[ia], fb[ib], estimator) for ia, ib in
                     zip(np.array_split(pa, n_subsets), np.array_split(pb, n_subsets))])
    return {"kid": mmd2_unbiased(fa, fb, estimator), "se": float(subs.std(ddof=1) / np.sqrt(n_subsets)),
            "subset_kids": subs, "n": (len(fa), len(fb))}


def kid_test(fa, fb, n_permutations: int = 200, seed: int = 0) -> dict:
    """Is set a drawn like set b? KID(a, b) against its spread when they are (a permutation test).

    Under "a and b come from one distribution" every split of the pooled set into sizes (m, n)
    is as likely as the observed one; KID over ``n_permutations`` random splits gives that
    null's mean and standard deviation, which accounts for *both* sets' sizes (with a small folder
    the real side's few pictures dominate the spread). Returns {"kid", "se" (the null's std),
    "z" = (kid - null mean) / se, "p" (share of splits at least as large), "n": (m, n)}.
    "Apart beyond 2 standard errors" is z > 2.
    """
    fa, fb = np.asarray(fa, np.float64), np.asarray(fb, np.float64)
    m, n = len(fa), len(fb)
    if m < 2 or n < 2:
        raise ValueError(f"kid_test needs at least 2 points per set, got {m} and {n}")
    pooled = np.concatenate([fa, fb])
    k = polynomial_kernel(pooled, pooled)
    np.fill_diagonal(k, 0.0)                         # the unbiased estimator leaves i = j out
    total = k.sum()
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_permutations + 1, m + n))
    labels[0, :m] = 1.0                              # row 0: the observed split
    for row in labels[1:]:
        row[rng.permutation(m + n)[:m]] = 1.0
    ka = k @ labels.T                                # (m + n, P): each point's kernel sum with set a
    s_aa = np.einsum("ip,pi->p", ka, labels)         # sum over pairs inside a
    s_ab = (ka.sum(0) - s_aa)                        # pairs (a, b), each counted once
    s_bb = total - s_aa - 2.0 * s_ab
    stats = s_aa / (m * (m - 1)) + s_bb / (n * (n - 1)) - 2.0 * s_ab / (m * n)
    observed, null = float(stats[0]), stats[1:]
    se = float(null.std(ddof=1))
    return {"kid": observed, "se": se, "z": (observed - float(null.mean())) / se if se > 0 else 0.0,
            "p": float((np.sum(null >= observed) + 1) / (len(null) + 1)), "n": (m, n)}


# ============================================================================ SWD

def _pyr_down(x):
    """(N, H, W, C) -> (N, H/2, W/2, C): 5x5 binomial blur, keep every other pixel (cv2.pyrDown)."""
    return _filter_axis(_filter_axis(x, _GAUSS5, 1), _GAUSS5, 2)[:, ::2, ::2]


def _pyr_up(x):
    """(N, H, W, C) -> (N, 2H, 2W, C): zeros between pixels, then the blur times 4 (cv2.pyrUp)."""
    n, h, w, c = x.shape
    up = np.zeros((n, 2 * h, 2 * w, c), x.dtype)
    up[:, ::2, ::2] = x
    return _filter_axis(_filter_axis(up, 2 * _GAUSS5, 1), 2 * _GAUSS5, 2)


def laplacian_pyramid(images, min_resolution: int = 8) -> list:
    """Levels of the Laplacian pyramid, finest first: band-pass details at H, H/2, ..., and the
    blurred low-pass image at ``min_resolution`` last. Summing the upsampled levels gives back
    the image."""
    x = as_unit_float(images).astype(np.float64)
    levels = [x]
    while levels[-1].shape[1] > min_resolution and levels[-1].shape[1] % 2 == 0:
        low = _pyr_down(levels[-1])
        levels[-1] = levels[-1] - _pyr_up(low)
        levels.append(low)
    return levels


def _patches(level, n_patches, patch, rng):
    """``n_patches`` random patch x patch neighbourhoods (n, patch, patch, C), from random images."""
    n, h, w, c = level.shape
    r = patch // 2
    img = rng.integers(0, n, n_patches)
    y = rng.integers(r, h - r, n_patches)
    x = rng.integers(r, w - r, n_patches)
    off = np.arange(-r, r + 1)
    return level[img[:, None, None], (y[:, None] + off)[:, :, None], (x[:, None] + off)[:, None, :]]


def swd_descriptors(images, patches_per_image: int = 128, patch: int = 7, min_resolution: int = 8,
                    seed: int = 0, n_descriptors=None) -> list:
    """Per pyramid level: random 7x7 patches, each channel normalised to mean 0, std 1 over the
    set (as Karras et al. do), flattened to (n_descriptors, 7*7*C) float32."""
    rng = np.random.default_rng(seed)
    levels = laplacian_pyramid(images, min_resolution)
    n = n_descriptors or patches_per_image * len(levels[0])
    out = []
    for level in levels:
        if level.shape[1] < patch:
            raise ValueError(f"pyramid level {level.shape[1]}x{level.shape[1]} is smaller than the "
                             f"{patch}x{patch} patch; raise min_resolution")
        d = _patches(level, n, patch, rng)
        d = d - d.mean(axis=(0, 1, 2), keepdims=True)
        d = d / (d.std(axis=(0, 1, 2), keepdims=True) + 1e-8)
        out.append(d.reshape(n, -1).astype(np.float32))
    return out


def sliced_wasserstein(a, b, num_directions: int = 512, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between projections.

    a, b: (n, d) with the same n. Projected on a direction, each set is a list of n numbers;
    W1 between two such lists is the mean |difference| of their sorted values.
    """
    if len(a) != len(b):
        raise ValueError(f"sliced_wasserstein needs sets of equal size, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    total = 0.0
    for chunk in np.array_split(np.arange(num_directions), max(1, num_directions // 128)):
        dirs = rng.standard_normal((a.shape[1], len(chunk))).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
        total += float(np.abs(pa - pb).mean(axis=0).sum())
    return total / num_directions


def swd(images_a, images_b, patches_per_image: int = 128, num_directions: int = 512,
        min_resolution: int = 8, seed: int = 0, descriptors_b=None) -> dict:
    """Multi-scale sliced Wasserstein distance (Karras et al. 2018, Sec. 5 and Appendix D).

    Both sets go through a Laplacian pyramid (finest level first, down to ``min_resolution``);
    at each level ``patches_per_image`` x len(smaller set) random 7x7 patches are taken from
    each set, normalised per channel, and compared with the sliced Wasserstein distance.
    Returns {"levels": {resolution: SWD x 1e3}, "swd": their mean x 1e3} (Karras report x 1e3).
    ``descriptors_b``: ``swd_descriptors`` of images_b made as below (seed + 1, n descriptors),
    to reuse them across calls (``ScoreReference`` does).
    """
    n = patches_per_image * min(len(images_a), len(images_b))
    da = swd_descriptors(images_a, patch=7, min_resolution=min_resolution, seed=seed, n_descriptors=n)
    if descriptors_b is None or len(descriptors_b[0]) != n:
        descriptors_b = swd_descriptors(images_b, patch=7, min_resolution=min_resolution,
                                        seed=seed + 1, n_descriptors=n)
    size = np.asarray(images_a).shape[1]
    levels = {size // 2 ** i: 1e3 * sliced_wasserstein(a, b, num_directions, seed=seed + 2 + i)
              for i, (a, b) in enumerate(zip(da, descriptors_b))}
    return {"levels": levels, "swd": float(np.mean(list(levels.values())))}


# ============================================================================ reference points

class ScoreReference:
    """Real images split into two disjoint halves A and B (fixed seed).

    ``score(samples)`` compares samples with half B. ``references(n)`` compares, at the same
    sample count n, with half B: n real images of half A (the **floor**: what a perfect model
    scores), pure Gaussian noise clipped to [-1, 1], and half A blurred with sigma = 1 px and
    2 px (the **ceilings**). Features of B are computed once, SWD descriptors of B once per
    sample count (their number, patches x min(n, len(B)), depends on it).
    """

    def __init__(self, real_images, feature_fn=feature_fn, seed: int = 0, n_subsets: int = 10,
                 swd_patches: int = 128, swd_min_resolution: int = 8):
        real = as_unit_float(real_images)
        order = np.random.default_rng(seed).permutation(len(real))
        half = len(real) // 2
        # random order (not sorted): any slice a[:n] is a random sample (files come sorted by kind)
        self.a, self.b = real[order[:half]], real[order[half:]]
        self.feature_fn, self.seed, self.n_subsets = feature_fn, seed, n_subsets
        self.swd_patches, self.swd_min_resolution = swd_patches, swd_min_resolution
        self.features_b = feature_fn(self.b) if feature_fn is not None else None
        self._references = {}
        self._swd_b = {}                 # descriptor count -> SWD descriptors of B

    @property
    def image_shape(self):
        return self.b.shape[1:]

    def score(self, samples, with_subsets: bool = False) -> dict:
        """{"kid", "kid_se", "swd", "swd_levels", "n"} of samples against half B."""
        x = as_unit_float(samples)
        if x.shape[1:] != self.b.shape[1:]:
            raise ValueError(f"samples have shape {x.shape[1:]}, the real images {self.b.shape[1:]}: "
                             "resize one of them")
        out = {"n": len(x)}
        if self.feature_fn is not None:
            k = kid(self.feature_fn(x), self.features_b, n_subsets=self._subsets(len(x)), seed=self.seed)
            out["kid"], out["kid_se"] = k["kid"], k["se"]
            if with_subsets:
                out["kid_subsets"] = k["subset_kids"]
        s = swd(x, self.b, patches_per_image=self.swd_patches, min_resolution=self.swd_min_resolution,
                seed=self.seed, descriptors_b=self._descriptors_b(len(x)))
        out["swd"], out["swd_levels"] = s["swd"], s["levels"]
        return out

    def _descriptors_b(self, n_samples):
        """SWD descriptors of B for n_samples samples: the same call as inside ``swd``, cached."""
        n = self.swd_patches * min(n_samples, len(self.b))
        if n not in self._swd_b:
            self._swd_b[n] = swd_descriptors(self.b, patch=7, min_resolution=self.swd_min_resolution,
                                             seed=self.seed + 1, n_descriptors=n)
        return self._swd_b[n]

    def _subsets(self, n):
        return max(2, min(self.n_subsets, n // 8))

    def baselines(self, n: int) -> dict:
        """The reference image sets of size n (n <= len(A)): real, noise, blur1, blur2."""
        n = min(n, len(self.a))
        real = self.a[:n]
        return {"real (other half)": real,
                "blurred sigma=1px": gaussian_blur(real, 1.0),
                "blurred sigma=2px": gaussian_blur(real, 2.0),
                "noise": noise_images(real.shape, seed=self.seed + 7)}

    def references(self, n: int) -> dict:
        """{name: score dict} for the baselines at sample count n (cached)."""
        n = min(n, len(self.a))
        if n not in self._references:
            self._references[n] = {k: self.score(v) for k, v in self.baselines(n).items()}
        return self._references[n]


# ============================================================================ the protocol

# The course's evaluation protocol, for every comparison (samplers, recipes, guidance; lesson 11):
# n = 512 samples from fresh seeds, every contender scored by one ScoreReference (the same real
# subsets), KID +- its standard error and SWD both reported, and a "win" only when the paired
# difference exceeds 2 standard errors.
PROTOCOL_SAMPLES = 512


def paired_difference(a: dict, b: dict) -> dict:
    """KID(b) - KID(a) with its *paired* standard error: a and b are results of
    ``ScoreReference.score(..., with_subsets=True)`` of one reference at the same n, so their
    subset j uses the same real images. d_j = KID_b,j - KID_a,j; se = std(d) / sqrt(m).
    ``a_wins`` when diff > 2 se (a is lower, i.e. better), ``b_wins`` when diff < -2 se."""
    if "kid_subsets" not in a or "kid_subsets" not in b or a["n"] != b["n"]:
        raise ValueError("paired_difference needs two score(..., with_subsets=True) results at the same n")
    d = np.asarray(b["kid_subsets"]) - np.asarray(a["kid_subsets"])
    diff, se = float(b["kid"] - a["kid"]), float(d.std(ddof=1) / np.sqrt(len(d)))
    return {"diff": diff, "se": se, "z": diff / se if se > 0 else float("inf") * np.sign(diff),
            "a_wins": diff > 2 * se, "b_wins": diff < -2 * se}


def evaluate_samples(samples, real_images=None, reference: ScoreReference | None = None,
                     feature_fn=feature_fn, references: bool = True, seed: int = 0) -> dict:
    """Score samples against real images, with the floor and ceilings at the same sample count.

    Returns {"kid", "kid_se", "swd", "swd_levels", "n", "references": {"real (other half)": {...},
    "blurred sigma=1px": ..., "blurred sigma=2px": ..., "noise": ...}}. Samples are compared with
    half of the real images; the other half gives the floor. Pass ``reference`` to reuse one.
    """
    if reference is None:
        if real_images is None:
            raise ValueError("give real_images or a ScoreReference")
        reference = ScoreReference(real_images, feature_fn=feature_fn, seed=seed)
    out = reference.score(samples)
    if references:
        out["references"] = reference.references(out["n"])
    return out


def format_scores(result: dict) -> str:
    """A small table of a result of ``evaluate_samples`` (samples and every reference)."""
    rows = [("samples", result)] + list(result.get("references", {}).items())
    has_kid = "kid" in result
    lines = [f"{'':22s} {'KID x 1e3':>16s} {'SWD x 1e3':>10s}   (n = {result['n']})"]
    for name, r in rows:
        k = f"{1e3 * r['kid']:8.2f} +- {1e3 * r['kid_se']:5.2f}" if has_kid else ""
        lines.append(f"{name:22s} {k:>16s} {r['swd']:10.1f}")
    return "\n".join(lines)

