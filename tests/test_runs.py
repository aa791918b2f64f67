"""Tests of ddpm_lessons.runs: which run folder a command trains in, and bad folders.

Every folder is generated in tmp_path; nothing here trains a network (the end-to-end run with
`make train DATA=...` is in test_make_train.py).
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_lessons import runs
from ddpm_lessons.data import default_dataset_path
from ddpm_lessons.profiles import get_profile

ROOT = Path(__file__).resolve().parent.parent
TINY = get_profile("tiny")


def make_folder(path, n=20, gray=False, seed=0, size=24):
    """n small pictures (coloured squares on a plain background), some in a sub-folder."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    (path / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size, 3), rng.integers(0, 256, 3), np.uint8)
        y, x = rng.integers(0, size // 2, 2)
        img[y: y + size // 2, x: x + size // 2] = rng.integers(0, 256, 3)
        if gray:
            img[:] = img.mean(-1, keepdims=True).astype(np.uint8)
        Image.fromarray(img).save(path / ("sub" if i % 3 == 0 else "") / f"pic_{i:03d}.png")
    return path


def prepare(root, data, **kw):
    return runs.prepare_run(root, data, TINY, **kw)


def test_default_steps_cap_the_passes_over_the_data():
    # 100 images, batch 32, at most 200 passes: ceil(200 * 100 / 32) = 625 steps
    assert runs.default_train_steps(100, 32, 1800) == 625
    assert runs.default_train_steps(1115, 32, 1800) == 1800          # a large folder: the profile's
    assert runs.default_train_steps(5, 5, 1800) == runs.MIN_STEPS       # never fewer than MIN_STEPS
    assert runs.default_train_steps(5, 5, 30) == 30                     # nor more than the profile's
    for n in (50, 100, 300, 700):
        steps = runs.default_train_steps(n, 32, 10**6)
        assert (steps - 1) * 32 / n < runs.MAX_PASSES <= steps * 32 / n


def test_the_estimate_adds_steps_previews_final_samples_and_the_verdict():
    s = get_profile("cpu").replace(train_steps=1000, preview_every=250, sampler="ddim", sample_steps=50,
                                   verdict_samples=256)
    est = runs.estimate_seconds(s, 0, step_seconds=0.5, eval_seconds_per_image=0.01)
    # 1000 steps x 0.5 s; (4 previews x 16 + 256 verdict samples) x 50 evaluations x 0.01 s; scoring
    assert est["training"] == 500 and est["previews"] == 4
    assert est["sampling"] == pytest.approx((4 * 16 + 256) * 50 * 0.01)
    assert est["total"] == pytest.approx(500 + 160 + runs.VERDICT_SECONDS)
    resumed = runs.estimate_seconds(s, 600, 0.5, 0.01, final_samples=16, with_verdict=False)
    assert resumed["steps_left"] == 400 and resumed["previews"] == 2 and resumed["scoring"] == 0
    assert resumed["total"] == pytest.approx(200 + (2 * 16 + 16) * 50 * 0.01)
    ddpm = runs.estimate_seconds(s.replace(sampler="ddpm"), 0, 0.5, 0.01)
    assert ddpm["sampling"] == pytest.approx((4 * 16 + 256) * 1000 * 0.01)   # DDPM runs all T steps
    heun = runs.estimate_seconds(s.replace(sampler="heun", sample_steps=10), 0, 0.5, 0.01)
    assert heun["sampling"] == pytest.approx((4 * 16 + 256) * 19 * 0.01)     # Heun: 2 x 10 - 1 evaluations


def test_fingerprint_sees_added_removed_and_rewritten_files(tmp_path):
    folder = make_folder(tmp_path / "pics", n=6)
    before = runs.list_folder(folder)
    assert len(before) == 6 and "sub/pic_000.png" in before
    (folder / "sub" / "pic_003.png").unlink()
    (folder / "new.png").write_bytes((folder / "pic_001.png").read_bytes())
    (folder / "pic_002.png").write_bytes(b"x")
    after = runs.list_folder(folder)
    assert runs.fingerprint(before) != runs.fingerprint(after)
    assert runs.fingerprint(before) == runs.fingerprint(dict(reversed(list(before.items()))))
    text = runs.describe_change(before, after)
    assert "1 file added (new.png)" in text and "1 file removed (sub/pic_003.png)" in text
    assert "1 file changed (pic_002.png)" in text


def test_a_run_is_continued_only_on_the_same_folder_profile_and_size(tmp_path):
    a, b = make_folder(tmp_path / "a"), make_folder(tmp_path / "b", seed=1)
    root = tmp_path / "runs"
    run_a, plan = prepare(root, a)
    assert not plan["continued"] and run_a.name.endswith("-tiny-a")
    assert prepare(root, a)[0] == run_a, "an unfinished run on the same folder is continued"
    time.sleep(1.1)
    run_b, _ = prepare(root, b)
    assert run_b != run_a, "a run on another folder is never continued"
    assert prepare(root, a)[0] == run_a, "...and the first folder's run is still found"
    time.sleep(1.1)
    assert prepare(root, a, image_size=8)[0] != run_a, "another image size is another run"
    other = runs.prepare_run(root, a, get_profile("cpu"))[0]
    assert other != run_a and other.name.endswith("-cpu-a"), "another profile is another run"
    time.sleep(1.1)
    assert prepare(root, a, fresh=True)[0] != run_a, "fresh=True starts a new run"
    (run_b / "finished.json").write_text("{}")
    time.sleep(1.1)
    assert prepare(root, b)[0] != run_b, "a finished run is not continued"


def test_an_emoji_run_is_not_continued_by_another_folder(tmp_path):
    root = tmp_path / "runs"
    emoji, plan = prepare(root, None)
    saved = json.loads((emoji / "settings.json").read_text())
    assert saved["data"]["path"] == str(default_dataset_path().resolve())
    assert emoji.name.endswith("-tiny-emoji-portraits") and plan["images"] == saved["data"]["images"]
    time.sleep(1.1)
    mine, _ = prepare(root, make_folder(tmp_path / "mine"))
    assert mine != emoji and json.loads((mine / "settings.json").read_text())["init_from"] == ""


def test_a_changed_folder_is_said_plainly(tmp_path):
    folder, root = make_folder(tmp_path / "pics"), tmp_path / "runs"
    run, _ = prepare(root, folder)
    Image.new("RGB", (20, 20), "blue").save(folder / "added.png")
    with pytest.raises(runs.FolderChanged) as err:
        prepare(root, folder)
    msg = str(err.value)
    assert "1 file added (added.png)" in msg and run.name in msg and "FRESH=1" in msg and "CONTINUE=1" in msg
    assert prepare(root, folder, continue_changed=True)[0] == run
    assert len(list(root.iterdir())) == 1, "no new run folder was made"


def test_a_small_folder_adapts_the_batch_and_the_steps(tmp_path):
    run, plan = runs.prepare_run(tmp_path / "runs", make_folder(tmp_path / "few", n=10), get_profile("cpu"))
    s = runs.read_settings(run)["profile"]
    assert s.batch_size == 10 and s.train_steps == runs.MIN_STEPS
    assert any("batch is 10 instead of 32" in note for note in plan["notes"])
    assert "10 (after de-duplication)" in runs.describe_run(run)


def test_a_grayscale_folder_trains_as_rgb_and_comes_out_grayscale(tmp_path):
    run, plan = prepare(tmp_path / "runs", make_folder(tmp_path / "gray", gray=True))
    assert plan["grayscale"] and json.loads((run / "settings.json").read_text())["grayscale"]
    assert not prepare(tmp_path / "runs2", make_folder(tmp_path / "colour"))[1]["grayscale"]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    paths = runs.save_pngs(x, tmp_path / "out", grayscale=True)
    assert Image.open(paths[0]).mode == "L" and Image.open(paths[0]).size == (8, 8)


@pytest.mark.parametrize("case, words", [
    ("missing", "image folder not found"),
    ("empty", "contains no files"),
    ("unusable", "no usable image"),
    ("a file", "is a file, not a folder"),
])
def test_bad_data_exits_2_with_the_path_and_leaves_no_run_folder(tmp_path, case, words):
    data = tmp_path / "bad"
    if case == "empty":
        data.mkdir()
    elif case == "unusable":
        data.mkdir()
        (data / "photo.jpg").write_bytes(b"not a jpeg at all")
        (data / "notes.txt").write_text("hello")
    elif case == "a file":
        data.write_text("hello")
    root = tmp_path / "runs"
    with pytest.raises(runs.UserError) as err:
        prepare(root, data)
    assert words in str(err.value) and str(data) in str(err.value)
    assert not root.exists(), "a bad folder must not leave a run folder behind"


def test_command_line_errors_are_messages_not_tracebacks(tmp_path):
    """What `make train DATA=...` runs first: exit 2, 'error: ...' naming the folder, no traceback."""
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ddpm_lessons.runs", "prepare", "--runs", str(root)]
    env = {"DDPM_PROFILE": "tiny", "PATH": "/usr/bin:/bin"}
    missing = subprocess.run(cmd + ["--data", str(tmp_path / "nope")], capture_output=True, text=True,
                             env=env, cwd=ROOT)
    assert missing.returncode == 2 and missing.stderr.startswith("error: image folder not found")
    assert str(tmp_path / "nope") in missing.stderr and "Traceback" not in missing.stderr
    folder = make_folder(tmp_path / "pics", n=12)
    ok = subprocess.run(cmd + ["--data", str(folder)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    run = Path(ok.stdout.strip().splitlines()[-1])
    assert (run / "settings.json").exists() and run.parent == root
    (folder / "pic_004.png").unlink()
    changed = subprocess.run(cmd + ["--data", str(folder)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert changed.returncode == 2 and "1 file removed (pic_004.png)" in changed.stderr
    assert "Traceback" not in changed.stderr
    bad_size = subprocess.run(cmd + ["--data", str(folder), "--size", "25", "--fresh"], capture_output=True,
                              text=True, env=env, cwd=ROOT)
    assert bad_size.returncode == 2 and "image_size = 25" in bad_size.stderr
    assert len(list(root.iterdir())) == 1


def test_prepare_without_a_profile_prints_no_tensorflow_start_up_lines(tmp_path):
    """`make train` without PROFILE=: prepare imports TensorFlow to look for a GPU, and its start-up
    lines (absl's 'WARNING: All log messages before ...', oneDNN's notice) must not reach the user."""
    env = {"PATH": "/usr/bin:/bin"}                                       # no DDPM_PROFILE
    out = subprocess.run([sys.executable, "-m", "ddpm_lessons.runs", "prepare", "--runs", str(tmp_path / "runs"),
                          "--data", str(make_folder(tmp_path / "pics", n=12)), "--size", "16"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert Path(out.stdout.strip()).parent == tmp_path / "runs"


def test_a_bad_augmentation_a_tiny_folder_and_an_unknown_init_are_errors_with_no_run_left(tmp_path):
    """AUGMENT=1.5, a folder of 3 pictures, INIT=nothing: exit 2, one 'error:' line, no traceback,
    and no run folder made."""
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "ddpm_lessons.runs", "prepare", "--runs", str(root)]
    env = {"DDPM_PROFILE": "tiny", "PATH": "/usr/bin:/bin"}
    folder = make_folder(tmp_path / "pics", n=12)
    cases = {"the augmentation probability must lie in [0, 1)": ["--data", str(folder), "--augment", "1.5"],
             "is not a number": ["--data", str(folder), "--augment", "lots"],
             "has only 3 usable pictures": ["--data", str(make_folder(tmp_path / "three", n=3))],
             "INIT='nothing' is not known": ["--data", str(folder), "--init", "nothing"]}
    for message, args in cases.items():
        out = subprocess.run(cmd + args, capture_output=True, text=True, env=env, cwd=ROOT)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    other_size = subprocess.run(cmd + ["--data", str(folder), "--init", "general", "--size", "64"],
                                capture_output=True, text=True, env={**env, "DDPM_PROFILE": "cpu"}, cwd=ROOT)
    assert other_size.returncode == 2 and "INIT=general needs PROFILE=cpu at its image size" in other_size.stderr
    assert not root.exists() or not list(root.iterdir())


def test_augment_gives_the_network_the_augmentation_input(tmp_path):
    folder = make_folder(tmp_path / "pics", n=12)
    run, plan = prepare(tmp_path / "runs", folder, augment=0.15)
    s = runs.read_settings(run)["profile"]
    assert s.augment_p == 0.15 and s.augment_dim == 5
    assert "augment     each transform" in runs.describe_run(run)
    plain, _ = prepare(tmp_path / "runs2", folder)
    assert runs.read_settings(plain)["profile"].augment_dim == 0
    with pytest.raises(runs.UserError, match="has no augmentation input"):     # it would leak
        runs.prepare_run(tmp_path / "runs3", folder, get_profile("cpu"), init_from="reference", augment=0.2)
    assert not (tmp_path / "runs3").exists()


def test_the_default_start_is_the_general_prior_for_your_own_folder_and_says_why(tmp_path):
    """INIT left out ("auto"): your own folder in the cpu profile fine-tunes the shipped general prior
    with its default steps and augmentation; the shipped portraits, another profile or size, and a
    conditional run train from scratch; the plan names the choice and the reason; flags win."""
    cpu = get_profile("cpu")
    assert runs.choose_init(False, cpu)[0] == "general"
    for shipped, profile, conditional in ((True, cpu, False), (False, cpu, True), (False, TINY, False),
                                          (False, cpu.replace(image_size=64), False)):
        init, reason = runs.choose_init(shipped, profile, conditional)
        assert init == "" and len(reason) > 20
    folder = make_folder(tmp_path / "pics", n=120)          # 200 passes of 32 = 750 steps from scratch
    run, plan = runs.prepare_run(tmp_path / "runs", folder, cpu, init_from="auto")
    saved = runs.read_settings(run)
    s = saved["profile"]
    assert saved["init_from"] == "general" and saved["chosen"]["init"] == "general"
    assert s.train_steps == runs.FINETUNE_STEPS < runs.default_train_steps(120, 32, cpu.train_steps)
    assert s.augment_p == runs.FINETUNE_AUGMENT and s.augment_dim == 5
    assert "start       general, chosen by default: your own folder" in runs.describe_run(run)
    # each alternative has its flag: steps, no augmentation, from scratch
    run2, _ = runs.prepare_run(tmp_path / "runs2", folder, cpu, init_from="auto", steps=300, augment=0.0)
    s2 = runs.read_settings(run2)["profile"]
    assert s2.train_steps == 300 and s2.augment_p == 0 and s2.augment_dim == 5
    run3, _ = runs.prepare_run(tmp_path / "runs3", folder, cpu, init_from="")
    saved3 = runs.read_settings(run3)
    assert saved3["init_from"] == "" and "chosen" not in saved3 and saved3["profile"].augment_dim == 0
    # the shipped portraits keep the course's recipe, and the plan says so
    run4, _ = runs.prepare_run(tmp_path / "runs4", None, cpu, init_from="auto")
    saved4 = runs.read_settings(run4)
    assert saved4["init_from"] == "" and saved4["chosen"]["init"] == "scratch"
    assert saved4["profile"].train_steps == cpu.train_steps


def test_a_checkpoint_missing_a_weight_of_the_network_is_refused(tmp_path):
    """Catches: loading a run's EMA with expect_partial() alone, which leaves every weight the checkpoint
    lacks at its initial value without a word (here: a checkpoint of the raw network, without its EMA)."""
    import tensorflow as tf
    from ddpm_lessons.unet import build_unet
    folder = make_folder(tmp_path / "pics", n=12)
    run, _ = prepare(tmp_path / "runs", folder)
    settings = runs.read_settings(run)["profile"]
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=build_unet(settings)), str(run / "checkpoints"), 1)
    manager.save(checkpoint_number=10)
    with pytest.raises(runs.UserError, match="does not hold every weight"):
        runs.load_ema_model(run)


def test_objective_flow_starts_its_own_run_from_scratch_and_refuses_the_shipped_weights(tmp_path):
    """OBJECTIVE=flow (lesson 15): a new run with prediction "flow" and the flow sampler, trained from
    scratch even where your own folder would fine-tune the general prior (a v network); it never continues
    an unfinished v run on the same folder, and INIT=general with it is refused before any run folder."""
    from ddpm_lessons.profiles import FLOW_SAMPLING, FLOW_TIME_SAMPLING
    folder = make_folder(tmp_path / "pics")
    v_run, _ = runs.prepare_run(tmp_path / "runs", folder, get_profile("cpu"))       # the cpu profile's v
    assert runs.read_settings(v_run)["profile"].prediction == "v"
    flow_run, plan = runs.prepare_run(tmp_path / "runs", folder, get_profile("cpu"), init_from="auto", objective="flow")
    s = runs.read_settings(flow_run)["profile"]
    assert flow_run != v_run and s.prediction == "flow" and s.sampler == FLOW_SAMPLING["sampler"]
    assert s.time_sampling == FLOW_TIME_SAMPLING == "logit-normal"
    assert plan["chosen"]["init"] == "scratch" and "flow matching" in plan["chosen"]["reason"]
    again, _ = runs.prepare_run(tmp_path / "runs", folder, get_profile("cpu"), objective="flow")
    assert again == flow_run, "an unfinished flow run on the same folder is continued"
    before = sorted((tmp_path / "runs").iterdir())
    out = subprocess.run([sys.executable, "-m", "ddpm_lessons.runs", "prepare", "--runs", str(tmp_path / "runs"),
                          "--data", str(folder), "--init", "general", "--objective", "flow"],
                         capture_output=True, text=True, cwd=ROOT, env={"DDPM_PROFILE": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "INIT=general and OBJECTIVE=flow" in out.stderr and "Traceback" not in out.stderr
    assert sorted((tmp_path / "runs").iterdir()) == before
