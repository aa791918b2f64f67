"""The benchmark script (ddpm_lessons.bench): its FLOP counts and its worker's output, never its timings."""
import json

import keras
import pytest
import tensorflow as tf

from ddpm_lessons.bench import (flops_summary, format_report, forward_flops, graph_flops,
                                run_worker)
from ddpm_lessons.plotting import plot_bench
from ddpm_lessons.profiles import PROFILES
from ddpm_lessons.unet import build_unet


def conv(r, c_in, c_out, k=3):
    """FLOPs of a k x k conv producing an r x r map: one multiply-add per weight per output pixel."""
    return 2 * r * r * k * k * c_in * c_out


def test_one_conv_layer_matches_the_analytic_count():
    h, w, c_in, c_out = 12, 10, 5, 7
    layer = keras.layers.Conv2D(c_out, 3, padding="same")
    fn = tf.function(lambda x: layer(x)).get_concrete_function(tf.TensorSpec([1, h, w, c_in]))
    total, by_type = graph_flops(fn.graph)
    assert by_type["Conv2D"] == 2 * h * w * 9 * c_in * c_out
    assert total == by_type["Conv2D"] + h * w * c_out            # + the bias, one add per output


def test_einsum_is_counted_by_hand():
    fn = tf.function(lambda q, k: tf.einsum("bnd,bmd->bnm", q, k)).get_concrete_function(
        tf.TensorSpec([2, 6, 4]), tf.TensorSpec([2, 5, 4]))
    assert "Einsum" in {op.type for op in fn.graph.get_operations()}
    total, by_type = graph_flops(fn.graph)
    assert by_type["Einsum"] == total == 2 * 2 * 6 * 5 * 4


def tiny_hand_count():
    """(conv FLOPs, conv + dense + attention FLOPs) of the tiny U-Net, layer by layer (unet.py).

    16x16x3 images, widths 16 @ 16 and 32 @ 8, one res block down / two up, attention at 8
    (down, middle, two up), time embedding 16 -> 64 -> 64.
    """
    convs = (conv(16, 3, 16)                                             # conv_in
             + 2 * conv(16, 16, 16)                                      # down0_res0
             + conv(8, 16, 16)                                           # down0_downsample (stride 2)
             + conv(8, 16, 32) + conv(8, 32, 32) + conv(8, 16, 32, 1)    # down1_res0 + 1x1 shortcut
             + 2 * 2 * conv(8, 32, 32)                                   # mid_res0, mid_res1
             + conv(8, 64, 32) + conv(8, 32, 32) + conv(8, 64, 32, 1)    # up1_res0: 32 + skip 32
             + conv(8, 48, 32) + conv(8, 32, 32) + conv(8, 48, 32, 1)    # up1_res1: 32 + skip 16
             + conv(16, 32, 32)                                          # up1_upsample
             + conv(16, 48, 16) + conv(16, 16, 16) + conv(16, 48, 16, 1)  # up0_res0: 32 + skip 16
             + conv(16, 32, 16) + conv(16, 16, 16) + conv(16, 32, 16, 1)  # up0_res1: 16 + skip 16
             + conv(16, 16, 3))                                          # out_conv
    n, c = 8 * 8, 32
    attention = 4 * (4 * 2 * n * c * c + 2 * 2 * n * n * c)             # q, k, v, proj; q k^T and A v
    dense = 2 * 16 * 64 + 2 * 64 * 64 + 2 * 64 * (16 + 32 + 32 + 32 + 32 + 32 + 16 + 16)  # time MLP, time_proj
    return convs, convs + attention + dense


def test_tiny_unet_flops_match_a_hand_count():
    convs, main = tiny_hand_count()
    total, by_type = forward_flops(build_unet(PROFILES["tiny"]))
    assert by_type["Conv2D"] == convs
    assert by_type["BatchMatMulV2"] + by_type.get("Einsum", 0) == 4 * 2 * 2 * 64 * 64 * 32
    assert main <= total <= 1.05 * main, "element-wise ops (norms, swish, adds) add only a few %"
    shares = flops_summary(by_type)
    assert shares["conv"] > 0.8 and abs(sum(shares.values()) - 1) < 1e-9


def test_worker_reports_every_key_with_positive_values():
    result = run_worker("tiny", "function", steps=2, precision="bfloat16")   # emulated without the flag
    assert result["profile"] == "tiny" and result["mode"] == "function" and result["steps"] == 2
    assert result["precision"] == "bfloat16"
    assert result["batch_size"] == PROFILES["tiny"].batch_size
    for key in ("first_step_s", "step_s", "best_step_s", "images_per_s", "peak_rss_mb", "loss"):
        assert result[key] > 0, key
    json.dumps(result)


def test_report_and_figure_from_a_result(tmp_path):
    matmul = {"float32": [{"n": 512, "gflop": 0.27, "seconds": 0.01, "gflops": 27.0}],
              "bfloat16": [{"n": 512, "gflop": 0.27, "seconds": 0.005, "gflops": 54.0}]}
    level = {"level": 0, "resolution": 16, "channels": 16, "gflop": 0.02, "seconds": 1e-3, "gflops": 20.0}
    result = {"profile": "tiny", "params": 1000, "forward_gflop_per_image": 0.04,
              "flops_shares": {"conv": 0.9, "dense": 0.05, "attention": 0.03, "other": 0.02},
              "conv": {"float32": {"batch": 16, "limit_gflops": 30.0, "levels": [level]},
                       "bfloat16": {"batch": 16, "limit_gflops": 60.0, "levels": [{**level, "gflops": 40.0}]}},
              "bfloat16": {"on": True, "why": "this CPU has avx512_bf16"},
              "training": {"function/float32": {"mode": "function", "precision": "float32", "batch_size": 16,
                                                "steps": 2, "first_step_s": 5.0, "images_per_s": 100.0,
                                                "achieved_gflops": 12.0, "share_of_conv_limit": 0.4,
                                                "peak_rss_mb": 700},
                           "function/bfloat16": {"mode": "function", "precision": "bfloat16", "batch_size": 16,
                                                 "steps": 2, "first_step_s": 5.0, "images_per_s": 150.0,
                                                 "achieved_gflops": 18.0, "share_of_conv_limit": 0.3,
                                                 "peak_rss_mb": 700}},
              "step_profile": {"float32": {"steps": 3, "step_ms": 100.0, "op_ms": 180.0, "input_batch_ms": 0.1,
                                           "ms_by_part": {"convolutions": 120.0, "optimizer": 60.0}}},
              "sampling": {"batch": 32, "forward_s": 0.03, "rows": [
                  {"sampler": "ddim", "eta": 0.0, "steps": 10, "seconds": 0.33, "bound_s": 0.3, "ratio": 1.1,
                   "note": ""}]},
              "chosen": {"mode": "function", "precision": "bfloat16", "why": "an AVX-512 CPU"}}
    machine = {"cpu": "test cpu", "cores": 2, "tensorflow": tf.__version__, "onednn": True,
               "fma_peak": {"gflops": 100.0, "ghz": 2.0, "cores": 2, "flop_per_cycle": 25}}
    text = format_report(machine, matmul, result)
    assert "profile tiny" in text and "conv limit" in text and "ddim eta=0" in text
    assert "float32 30.0, bfloat16 60.0" in text and "bfloat16 training: on" in text
    lines = text.splitlines()
    bf16_row = next(line for line in lines if line.split()[:2] == ["function", "bfloat16"])
    assert "30.0%" in bf16_row and "33.3%" in bf16_row, "shares against the bfloat16 limits (60 conv, 54 matmul)"
    assert "18.0%" in bf16_row, "18 GFLOP/s is 18% of the 100 GFLOP/s FMA peak"
    f32_row = next(line for line in lines if line.split()[:2] == ["function", "float32"])
    assert "make train's choice" in bf16_row and "make train's choice" not in f32_row
    assert "float32 FMA peak: 100 GFLOP/s = 2 cores x 2.00 GHz x 25 FLOP/cycle" in text
    assert "convolutions 67%" in text and "optimizer 33%" in text
    plot_bench(tmp_path / "b.png", matmul, result)
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_step_parts_name_what_an_op_belongs_to():
    from ddpm_lessons.bench import step_part
    assert step_part("ExecutorState::Process") is None and step_part("ParallelFor") is None
    assert step_part("EagerLocalExecute: __inference__train_step_28081") is None   # the whole step
    assert step_part("gradient_tape/unet_1/up0_res1_1/conv_1/convolution/Conv2DBackpropFilter:"
                     "_MklNativeConv2DBackpropFilter") == "convolutions"
    assert step_part("unet_1/down1_attn0_1/norm_1/Reshape:Reshape") == "GroupNorm"
    assert step_part("unet_1/mid_attn_1/einsum/Einsum:BatchMatMulV2") == "attention"
    assert step_part("unet_1/down0_res0_1/Silu:_MklSwish") == "other network ops"
    assert step_part("adam/Sqrt_138:Sqrt") == "optimizer"
    assert step_part("ema_update/AssignVariableOp_3:AssignVariableOp") == "EMA update"
    # the update and the EMA run inside the step's tf.cond (taken only on a finite loss)
    assert step_part("cond/then/_0/cond/adam/Sqrt_179:Sqrt") == "optimizer"
    assert step_part("cond_1/then/_584/cond_1/ema_update/mul_218:Mul") == "EMA update"
    assert step_part("noising/stateful_normal/StatelessRandomNormalV2:StatelessRandomNormalV2") \
        == "noising and loss"


def test_step_profile_finds_every_part_of_a_real_step():
    """The profiler trace of the tiny U-Net's step: every part took time, convolutions the most of
    the network's parts (they hold >80% of its FLOPs), and nothing fell outside the parts."""
    from ddpm_lessons.bench import STEP_PARTS, profile_step
    result = profile_step(PROFILES["tiny"], "float32", steps=2)
    ms = result["ms_by_part"]
    assert set(ms) == set(STEP_PARTS) and all(ms[p] > 0 for p in STEP_PARTS), ms
    assert ms["convolutions"] > max(ms["GroupNorm"], ms["attention"])
    assert abs(sum(ms.values()) - result["op_ms"]) < 1e-6 and result["step_ms"] > 0
    assert 0 < result["input_batch_ms"] < result["step_ms"]


def test_speed_check_reports_consistent_rates_and_shares():
    """The GPU owner's one-minute check, run for a second on the tiny profile: images/s are the timed
    steps' images over their seconds, the share is achieved / the best matmul, and the report says both."""
    from ddpm_lessons.bench import format_speed_check, speed_check
    r = speed_check("tiny", seconds=1.0, precision="float32", sizes=(64, 128), log=lambda line: None)
    assert r["steps"] >= 3 and r["precision"] == "float32" and r["batch_size"] == PROFILES["tiny"].batch_size
    assert [m["n"] for m in r["matmul"]] == [64, 128] and r["timed_s"] >= 1.0
    model_flops, _ = forward_flops(build_unet(PROFILES["tiny"]))
    assert r["forward_gflop_per_image"] == model_flops / 1e9
    assert r["loss"] == r["loss"] and r["loss"] > 0
    text = format_speed_check(r)
    assert f"{r['images_per_s']:,.1f} img/s" in text and f"{r['share_of_matmul']:.1%}" in text and "float32" in text
    assert json.loads(json.dumps(r)) == r, "the result is what --speed-check writes as JSON"


def test_speed_check_arithmetic_on_a_fake_clock(monkeypatch):
    """The rates from known inputs: a fake clock that advances 0.25 s per training step, a forward pass of
    0.25 GFLOP per image, matmul limits of 1,000 and 2,000 GFLOP/s, an FMA peak of 500. Four timed steps
    of batch 16 in 1 s are 64 img/s, 64 x 3 x 0.25 = 48 GFLOP/s achieved, 2.4% of the matmul limit and 9.6%
    of the peak. Catches a rate over the wrong time or count, a backward pass not counted as two
    forwards, a share against the wrong limit (the real-run test above cannot: its inputs are measured)."""
    from types import SimpleNamespace
    from ddpm_lessons import bench
    clock = {"now": 100.0}
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))

    def train_step(x0):
        clock["now"] += 0.25
        return 0.5

    trainer = SimpleNamespace(train_step=train_step, config=SimpleNamespace(jit_compile=False), ema_model=None)
    monkeypatch.setattr(bench, "bench_trainer", lambda profile, precision, jit_compile=None: (trainer, None))
    monkeypatch.setattr(bench, "forward_flops", lambda model: (0.25e9, {}))
    monkeypatch.setattr(bench, "matmul_limit", lambda sizes, repeats, dtype: [{"n": 64, "gflops": 1000.0},
                                                                             {"n": 128, "gflops": 2000.0}])
    monkeypatch.setattr(bench, "device_facts", lambda: {"gpus": [], "cpu": "fake", "cores": 2, "tensorflow": "-"})
    monkeypatch.setattr(bench, "fma_peak", lambda: {"gflops": 500.0})
    r = bench.speed_check("tiny", seconds=1.0, precision="float32", log=lambda line: None)
    assert PROFILES["tiny"].batch_size == 16
    assert r["untimed_s"] == 0.5 and r["steps"] == 4 and r["timed_s"] == 1.0
    assert r["images_per_s"] == 64.0 and r["achieved_gflops"] == 48.0 and r["matmul_limit_gflops"] == 2000.0
    assert r["share_of_matmul"] == pytest.approx(0.024) and r["share_of_fma_peak"] == pytest.approx(0.096)


def test_compare_settings_alternates_the_settings_and_takes_ratios_of_medians(monkeypatch):
    """The paired comparison runs every setting once per round, in turn, with its environment (and
    the AVX2 hold when asked), and divides medians by 'oneDNN off, tf.function' (no timing asserted:
    the workers are replaced by fixed numbers)."""
    from ddpm_lessons import bench
    calls, rates = [], iter([10, 20, 30, 40, 12, 18, 33, 44, 11, 25, 27, 41])
    def fake(profile, mode, steps, precision="float32", env=None):
        calls.append((mode, env["TF_ENABLE_ONEDNN_OPTS"], env.get("ONEDNN_MAX_CPU_ISA")))
        return {"images_per_s": float(next(rates)), "first_step_s": 1.0}
    monkeypatch.setattr(bench, "run_worker", fake)
    r = bench.compare_settings("tiny", rounds=3, steps=2, emulate_avx2=True, log=lambda s: None)
    assert calls[:4] == [("function", "0", "AVX2"), ("xla", "0", "AVX2"), ("function", "1", "AVX2"), ("xla", "1", "AVX2")]
    assert calls[4:8] == calls[:4] and len(calls) == 12              # the same order in every round
    assert r["median"] == {"oneDNN off, tf.function": 11.0, "oneDNN off, XLA": 20.0,
                           "oneDNN on, tf.function": 30.0, "oneDNN on, XLA": 41.0}
    assert r["ratio_to_off_function"]["oneDNN on, XLA"] == 41.0 / 11.0
    rates = iter([1.0] * 4)
    assert bench.compare_settings("tiny", rounds=1, steps=2, log=lambda s: None)["env"] == {} and calls[-1][2] is None


def test_fma_peak_from_flags_and_clock():
    """The peak the bench prints: cores x GHz x FLOP per cycle (two FMA units x 2 x float32 lanes)."""
    from ddpm_lessons.bench import cpu_ghz, fma_flop_per_cycle, fma_peak
    assert cpu_ghz("model name\t: Intel(R) Xeon(R) Processor @ 2.80GHz\ncpu MHz\t\t: 2800.000\n") == 2.8
    assert cpu_ghz("model name\t: AMD EPYC 7B13\ncpu MHz\t\t: 2450.000\ncpu MHz\t\t: 2449.000\n") == 2.45
    assert cpu_ghz("nothing here") is None
    assert fma_flop_per_cycle({"avx2", "fma"}) == 32 and fma_flop_per_cycle({"avx2", "fma", "avx512f"}) == 64
    assert fma_flop_per_cycle({"sse2"}) == 16
    # the AVX2 EPYC of the speed issue: 2 cores x 2.45 GHz x 32 = 156.8 GFLOP/s
    assert fma_peak({"avx2", "fma"}, 2.45, 2)["gflops"] == pytest.approx(156.8)
    assert fma_peak({"avx2"}, 0, 2)["gflops"] is None               # no clock known: no peak
    # held to AVX2 the way --emulate-avx2 holds oneDNN: the AVX2 peak, and the report says so
    import os
    from unittest import mock
    with mock.patch.dict(os.environ, {"ONEDNN_MAX_CPU_ISA": "AVX2"}), \
            mock.patch("ddpm_lessons.profiles.cpu_flags", return_value={"avx2", "fma", "avx512f"}):
        held = fma_peak(ghz=2.8, cores=2)
    assert held["flop_per_cycle"] == 32 and held["gflops"] == pytest.approx(179.2) and "AVX2" in held["held_to"]


def test_forward_flops_counts_a_unet_with_the_augmentation_input():
    """Lesson 10's 64-px cell counts the FLOPs of the fine-tuned general prior's U-Net, which takes a
    third input (the augmentation labels, zeros when sampling): the count is the plain U-Net's plus its
    one small dense layer (2 x augment_dim x 4 width multiply-adds per image)."""
    from ddpm_lessons.bench import forward_flops
    from ddpm_lessons.profiles import PROFILES
    from ddpm_lessons.unet import build_unet
    tiny = PROFILES["tiny"]
    plain, _ = forward_flops(build_unet(tiny))
    told, _ = forward_flops(build_unet(tiny, augment_dim=5))
    assert plain < told <= plain + 2 * 5 * 4 * tiny.base_width + 64
