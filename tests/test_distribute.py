"""The Trainer under tf.distribute (issue: beyond one device), on the CPU split into two logical devices.

The device split must happen before TensorFlow initialises, so the measurements run in a subprocess
(tests/distribute_check.py) and this test asserts on what it prints."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def measured():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "distribute_check.py")], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_two_replicas_take_the_same_step_as_one_device_with_the_clip_engaged(measured):
    """Same global batch, same t and noise (global stateless seeds, sliced per replica): the loss, the
    weights and the EMA after one step agree to float32 rounding (stated: 1e-6), with a global-norm
    clip that is engaged (without it the weights differ by > 1e-4) and applied after the all-reduce."""
    assert measured["same_t"]
    assert abs(measured["loss_one"] - measured["loss_two"]) < 1e-5, measured
    assert measured["weights"] < 1e-6, measured
    assert measured["unclipped_vs_clipped"] > 1e-4, "the clip must be engaged for the comparison to mean anything"


def test_a_global_batch_that_the_replicas_do_not_divide_takes_the_same_step(measured):
    """7 images on 2 replicas are parts of 4 and 3: each replica's slice of the global draws starts after
    the parts before it (all-gathered sizes), so t, the loss and the weights are still one device's."""
    assert measured["odd_same_t"], measured
    assert abs(measured["odd_loss_one"] - measured["odd_loss_two"]) < 1e-5, measured
    assert measured["odd_weights"] < 1e-6, measured


def test_float16_with_loss_scaling_takes_the_same_step_on_two_replicas(measured):
    """What precision "auto" picks on a GPU: the loss is scaled, LossScaleOptimizer unscales the
    gradients, and the inner Adam sums them over the replicas and clips the sum at grad_clip. The gradient Adam receives (its first moment)
    agrees with one device and with float32 to float16 rounding (stated: 1e-2 of its largest entry;
    measured 5e-4). A clip that forgot the scale would shrink it ~30,000-fold."""
    assert abs(measured["f16_loss_one"] - measured["f16_loss_two"]) < 1e-4, measured
    assert not measured["f16_skipped"] and measured["f16_scale"] > 1, measured
    assert measured["f16_grad_two_vs_one"] < 1e-2, measured
    assert measured["f16_grad_vs_f32"] < 1e-2, measured


def test_batches_with_their_own_noise_take_the_same_step_on_two_replicas(measured):
    """Reflow's pairs (lesson 15): each replica trains on its slice of the given noise, so the loss and the
    weights are one device's; and the given noise is used (the step on drawn noise had another loss)."""
    assert measured["pair_same_t"], measured
    assert abs(measured["pair_loss_one"] - measured["pair_loss_two"]) < 1e-5, measured
    assert measured["pair_weights"] < 1e-6, measured
    assert measured["pair_vs_drawn_loss"] > 1e-3, measured


def test_the_gradients_are_summed_over_the_replicas_once(measured):
    """Catches a step that all-reduces the gradients itself and then gives them to Keras's optimizer,
    which sums them over the replicas again (twice the traffic; the step had to divide by R)."""
    assert measured["gradient_sums_per_replica"] == 1, measured


@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_nan_in_one_replicas_part_skips_the_step_on_every_replica(measured, precision):
    """Catches replicas that apply their gradients before the loss is checked (each replica's weights
    then turn NaN while the EMA and the counter stand still), and, in float16, a loss-scale optimizer
    that judges the step by the first replica's gradients alone."""
    assert measured[f"nan_{precision}_moved"] == 0.0, measured
    assert measured[f"nan_{precision}_step"] == 1 and measured[f"nan_{precision}_bad_step"] == 2, measured


def test_a_resumed_two_replica_run_continues_with_the_same_weights(measured):
    assert measured["resumed_at"] == 2 and measured["resumed_step"] == 3, measured
    assert measured["resume"] < 1e-6, measured


def test_pick_strategy_mirrors_only_over_several_gpus():
    import tensorflow as tf
    from ddpm_lessons.training import pick_strategy
    assert pick_strategy("auto", gpus=0)[0] is None and pick_strategy("auto", gpus=1)[0] is None
    assert pick_strategy("off", gpus=4)[0] is None
    strategy, why = pick_strategy("auto", gpus=2)
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and "2 GPUs" in why
    with pytest.raises(ValueError, match="distribute"):
        pick_strategy("on")
