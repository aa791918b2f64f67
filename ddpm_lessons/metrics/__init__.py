"""Lesson 11 — how good is it? Sample-quality scores with no downloaded weights, and memorisation.

    features   the feature networks: ``feature_fn`` maps images -> (N, 128) features of a small CNN
               trained on the shipped data (weights in ``assets/feature_net.weights.h5``;
               ``train_feature_net`` reproduces them); ``random_feature_fn`` and
               ``detail_feature_fn``: a network that is never trained, on whole pictures and on
               their fine detail (the calibrated score, section 7); ``layout_feature_fn``: the same
               over a 4x4 grid (where things are); ``as_unit_float``, ``resize_images``
    scores     ``kid``: Kernel Inception Distance (Binkowski et al. 2018), the unbiased MMD^2 with
               the kernel k(x, y) = (x.y / d + 1)^3, +- a standard error from disjoint subsets;
               ``kid_test``: KID with a permutation test (both sides' sizes in its standard error);
               ``swd``: multi-scale sliced Wasserstein distance on Laplacian-pyramid patches
               (Karras et al. 2018), no network at all; ``ScoreReference``: real data split in
               halves, scores against one half with the floor (real vs real) and ceilings (noise,
               blurred data) at the same size; ``evaluate_samples``: all of it in one call -> dict;
               the evaluation protocol: ``PROTOCOL_SAMPLES`` = 512, ``paired_difference``
    copies     memorisation: each sample's nearest training image (pixels and features, flips and
               small shifts included) and which samples are near-copies (``MemorisationCheck``);
               ``near_duplicate_groups`` and ``grouped_split`` for held-out pictures
    references known-bad pictures made from the folder: blurred, noise, and blobs (phase-randomised:
               the pictures' colours and textures, no thing in it)
    verdict    what the end of every run prints: a call (like / apart / too-small) from a permutation
               test of two scores (fine detail, layout) that "like" may only make when the blobs are
               apart, the references, the share of near-copies, one sentence on what next
    callback   ``ScoreCallback``: score a fixed seed's EMA samples every N training steps; keep the best

Images are (N, H, W, 3), uint8 or floats in [-1, 1]. Command line (``__main__.py``):

    python -m ddpm_lessons.metrics score <folder-or-npz> [--real <folder>] [--size 32]
    python -m ddpm_lessons.metrics train-features      # rebuild the shipped feature network

This package imports neither matplotlib nor ipywidgets.
"""
# (_pyr_up: tests/test_metrics.py rebuilds an image from its Laplacian pyramid with it)
from .callback import ScoreCallback
from .verdict import CALLS, FolderVerdict, advice, format_verdict, verdict
from .references import blob_images, noise_images
from .copies import (MemorisationCheck, feature_nearest, grouped_split, near_duplicate_groups, pixel_distances,
                     pixel_nearest)
from .features import (ASSETS, FEATURE_INFO, FEATURE_SIZE, FEATURE_WEIGHTS, SKIN_TONES, SUBCATEGORIES,
                       as_unit_float, build_feature_net, classify_images, feature_fn, feature_info, feature_split,
                       detail_feature_fn, detail_images, layout_feature_fn, load_feature_net, load_labelled_data,
                       random_feature_fn, resize_images,
                       train_feature_net)
from .scores import (PROTOCOL_SAMPLES, ScoreReference, _pyr_up, paired_difference, evaluate_samples, format_scores, gaussian_blur, kid, kid_test,
                     laplacian_pyramid, mmd2_unbiased, polynomial_kernel, sliced_wasserstein, swd,
                     swd_descriptors)


def main(argv=None):
    """The command line (``python -m ddpm_lessons.metrics``, see ``__main__.py``)."""
    from .__main__ import main
    return main(argv)
