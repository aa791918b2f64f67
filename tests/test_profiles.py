"""Profiles: names, the environment variable, the GPU fallback, and the knobs' consistency."""
import dataclasses

import pytest

from ddpm_lessons import profiles
from ddpm_lessons.profiles import PROFILES, get_profile


def test_named_profiles_and_env_var(monkeypatch):
    assert set(PROFILES) == {"tiny", "cpu", "gpu"}
    monkeypatch.setenv("DDPM_PROFILE", "tiny")
    assert get_profile().name == "tiny"
    monkeypatch.setenv("DDPM_PROFILE", " CPU ")
    assert get_profile().name == "cpu", "names are trimmed and case-insensitive"
    assert get_profile("gpu").name == "gpu", "an explicit name wins over the environment"


@pytest.mark.parametrize("has_gpu, expected", [(True, "gpu"), (False, "cpu")])
def test_without_env_var_the_device_decides(monkeypatch, has_gpu, expected):
    monkeypatch.delenv("DDPM_PROFILE", raising=False)
    monkeypatch.setattr(profiles, "gpu_available", lambda: has_gpu)
    assert get_profile().name == expected


def test_unknown_name_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("DDPM_PROFILE", "huge")
    with pytest.raises(ValueError) as err:
        get_profile()
    msg = str(err.value)
    assert "'huge'" in msg and "tiny, cpu, gpu" in msg and "DDPM_PROFILE" in msg


def test_max_steps_caps_every_training_length_and_nothing_else(monkeypatch):
    """DDPM_MAX_STEPS (make test-gpu): the gpu profile's 50,000 steps become 500, the warm-up at most a
    fifth of them, checkpoints and previews at least twice; the network and the sampler stay the same."""
    monkeypatch.setenv("DDPM_MAX_STEPS", "500")
    full, test = PROFILES["gpu"], get_profile("gpu")
    assert (test.train_steps, test.lesson_train_steps, test.toy_train_steps) == (500, 500, 500)
    assert test.warmup_steps == 100 and test.checkpoint_every == 250 and test.preview_every == 250
    changed = {f.name for f in dataclasses.fields(full) if getattr(full, f.name) != getattr(test, f.name)}
    assert changed == {"train_steps", "lesson_train_steps", "toy_train_steps", "warmup_steps",
                       "checkpoint_every", "preview_every"}
    assert get_profile("tiny") == PROFILES["tiny"], "a cap above every length changes nothing"
    assert profiles.capped_steps(3000) == 500 and profiles.capped_steps(100) == 100
    monkeypatch.delenv("DDPM_MAX_STEPS")
    assert get_profile("gpu") == full and profiles.capped_steps(3000) == 3000
    for bad in ("0", "-5", "ten", "2.5"):
        monkeypatch.setenv("DDPM_MAX_STEPS", bad)
        with pytest.raises(ValueError, match="DDPM_MAX_STEPS"):
            get_profile("gpu")


def test_profiles_are_frozen_and_consistent():
    p = PROFILES["cpu"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.batch_size = 1
    assert p.replace(batch_size=8).batch_size == 8 and p.batch_size != 8
    for prof in PROFILES.values():
        levels = len(prof.channel_mults)
        assert prof.image_size % 2 ** (levels - 1) == 0, prof.name
        widths = [prof.base_width * m for m in prof.channel_mults]
        assert all(w % prof.groups == 0 for w in widths), f"{prof.name}: GroupNorm groups must divide widths"
        assert prof.timesteps == 1000, "T is the same in every profile so lesson outputs match"
    assert PROFILES["tiny"].image_size < PROFILES["cpu"].image_size < PROFILES["gpu"].image_size == 64
    with pytest.raises(ValueError, match="cannot be halved"):
        p.replace(image_size=30, channel_mults=(1, 2, 2, 2))


@pytest.mark.parametrize("change, words", [
    (dict(learning_rate=-1e-3), "learning_rate = -0.001 must lie in (0, 1)"),
    (dict(image_size=36), "cannot be halved 3 times"),
    (dict(batch_size=0), "batch_size = 0 must be a positive whole number"),
    (dict(ema_decay=1.0), "ema_decay = 1.0 must lie in [0, 1)"),
    (dict(groups=7), "groups = 7 must divide every level's width"),
    (dict(sample_spacing="log"), "sample_spacing = 'log' must be 'uniform' or 'karras'"),
    (dict(sample_sigma_max=0.5), "sample_sigma_max = 0.5 must be None"),
    (dict(sample_churn=-1.0), "sample_churn = -1.0 must be 0 or more"),
    (dict(sample_steps=5000), "must not exceed T = 1000"),
    (dict(sampler="euler"), "sampler = 'euler' must be 'ddim', 'dpm++2m', 'heun' or 'ddpm'"),
])
def test_bad_settings_name_the_knob_and_the_fix(change, words):
    with pytest.raises(ValueError) as err:
        PROFILES["cpu"].replace(**change)
    assert words in str(err.value)


def test_the_compile_mode_follows_the_machine_class_and_a_request_wins():
    from ddpm_lessons.profiles import resolve_compile
    avx2 = {"avx2", "fma", "avx"}
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512_vnni"}
    assert resolve_compile("auto", flags=avx2, gpu=False)[0] is True            # an AVX2 laptop: XLA
    assert resolve_compile("auto", flags=avx512, gpu=False)[0] is False         # AVX-512: tf.function
    assert resolve_compile("auto", flags=avx512, gpu=True)[0] is True           # a GPU: XLA
    assert resolve_compile("function", flags=avx2, gpu=True) == (False, "compile = 'function' was asked for")
    assert resolve_compile("xla", flags=avx512, gpu=False)[0] is True
    with pytest.raises(ValueError, match="compile"):
        resolve_compile("fast")
    with pytest.raises(ValueError, match="compile = 'jit'"):
        get_profile("tiny").replace(compile="jit")
    from ddpm_lessons.training import TrainConfig
    assert TrainConfig.from_profile(get_profile("tiny").replace(compile="xla")).jit_compile is True
    assert TrainConfig.from_profile(get_profile("tiny").replace(compile="function")).jit_compile is False
    assert TrainConfig.from_profile(get_profile("cpu")).jit_compile is None     # auto: the Trainer resolves it
    assert TrainConfig.from_profile(get_profile("tiny")).jit_compile is False   # tiny: tf.function (its comment says why)
