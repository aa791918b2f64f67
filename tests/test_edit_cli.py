"""The command line of lesson 16 (issue #33): `make generate CLASS=... GUIDANCE=w`, `make edit` (SDEdit) and
`make inpaint`, on tiny run folders made here (the tiny profile's U-Net with random weights, saved as a
run's checkpoint with its EMA network). Every user mistake is one 'error: ...' line and exit status 2,
and writes nothing; the edits keep what they must keep, pixel for pixel.
"""
import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm_lessons import runs, sampling
from ddpm_lessons.data import read_image_folder
from ddpm_lessons.profiles import get_profile, with_objective

ROOT = Path(__file__).resolve().parent.parent
TINY = get_profile("tiny")
KINDS = [{"kind": "subcategory", "classes": ["face", "person", "person-role"]},
         {"kind": "skin tone", "classes": ["light", "dark"]}]


def make_run(path, profile, labels=None, seed=0):
    """A run folder with settings.json and a checkpoint ckpt-10 holding ``ema_model`` (random weights)."""
    import tensorflow as tf
    from ddpm_lessons.unet import build_unet
    path = Path(path)
    path.mkdir(parents=True)
    (path / "settings.json").write_text(json.dumps({
        "profile": dataclasses.asdict(profile), "init_from": "", "grayscale": False, "notes": [],
        **({"labels": labels} if labels else {}),
        "data": {"path": "nowhere", "fingerprint": "0", "files": 0, "images": 0}}, indent=1))
    model = build_unet(profile)
    rng = np.random.default_rng(seed)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(np.float32) for w in model.get_weights()])
    tf.train.CheckpointManager(tf.train.Checkpoint(ema_model=model), str(path / "checkpoints"), 1).save(
        checkpoint_number=10)
    return path


def make_picture(path, size=(40, 24), seed=0):
    """A non-square picture with some structure (its centre crop is not all of it)."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = rng.integers(0, 256, 3)
    img += rng.integers(0, 20, img.shape).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return Path(path)


def as_training_picture(path, size):
    """The picture as lesson 10's folder reader gives it: the independent reference for what the network sees."""
    folder = Path(path).parent / "as_training"
    folder.mkdir(exist_ok=True)
    shutil.copy(path, folder / Path(path).name)
    images, _ = read_image_folder(folder, size)
    shutil.rmtree(folder)
    return images[0]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def files_under(*folders):
    return sorted(p for f in folders for p in Path(f).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """Three run folders (unconditional eps, conditional with 2 label kinds, flow matching) and a picture."""
    root = tmp_path_factory.mktemp("edit_cli")
    return {"plain": make_run(root / "plain", TINY),
            "cond": make_run(root / "cond", TINY.replace(num_classes=(3, 2)), KINDS, seed=1),
            "flow": make_run(root / "flow", with_objective(TINY, "flow"), seed=2),
            "picture": make_picture(root / "pics" / "cat.png"), "root": root}


def fails(capsys, place, argv, *words):
    """main(argv) ends with one 'error: ...' line holding ``words``, exit status 2, and writes no file."""
    before = files_under(place["root"])
    status = runs.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert files_under(place["root"]) == before, "a failed command must write nothing"
    return err


# ----------------------------------------------------------------------------- generate CLASS=

def test_class_names_pairs_and_numbers_give_the_label_row(place):
    saved = runs.read_settings(place["cond"])
    row = lambda text: runs.class_row(text, saved)
    null = (3, 2)                                                         # the "no label" tokens
    assert [list(r) for r in (row("person-role")[0], row("dark")[0])] == [[2, null[1]], [null[0], 1]]
    r, names = row("Person-Role, DARK")                                   # case-insensitive, a pair
    assert list(r) == [2, 1] and names == ["person-role", "dark"]
    r, names = row("light,face")                                          # any order: named by kind
    assert list(r) == [0, 0] and names == ["face", "light"]
    assert list(row("1")[0]) == [1, null[1]] and row("1")[1] == ["person"]   # a number: the first kind
    assert row("0,dark")[0].dtype == np.int32


def test_class_and_guidance_mistakes_are_one_error_line_and_write_nothing(capsys, place):
    cond, plain = place["cond"], place["plain"]
    err = fails(capsys, place, ["generate", cond, "-n", "2", "--class", "nobody"], "'nobody' is not a class")
    assert "subcategory: face, person, person-role; skin tone: light, dark" in err     # the classes per kind
    fails(capsys, place, ["generate", cond, "-n", "2", "--class", "3"], "CLASS=3", "0 to 2", "skin tone: light, dark")
    fails(capsys, place, ["generate", cond, "-n", "2", "--class", "-1"], "CLASS=-1", "0 to 2")
    fails(capsys, place, ["generate", cond, "-n", "2", "--class", "face,person-role"],
          "'face' and 'person-role' are both subcategory classes")
    fails(capsys, place, ["generate", plain, "-n", "2", "--class", "face"], "unconditional", "CONDITIONAL=1")
    fails(capsys, place, ["generate", cond, "-n", "2", "--class", "face", "--guidance", "lots"],
          "GUIDANCE='lots' is not a number")
    fails(capsys, place, ["generate", cond, "-n", "2", "--class", "face", "--guidance", "-0.5"],
          "GUIDANCE=-0.5", "at least 0")
    fails(capsys, place, ["generate", cond, "-n", "2", "--guidance", "3"], "give CLASS= too")


def test_generate_with_a_class_writes_n_pngs_named_by_it_and_asks_the_network_for_it(capsys, place, monkeypatch):
    calls = []
    real = sampling.generate

    def spy(model, schedule, num_images, **kw):
        calls.append(kw)
        return real(model, schedule, num_images, **kw)

    monkeypatch.setattr(sampling, "generate", spy)
    out = place["cond"] / "generated"
    assert runs.main(["generate", str(place["cond"]), "-n", "3", "--class", "person-role,dark", "--guidance", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"seed0_step10_person-role+dark_w3_{i:04d}.png" for i in range(3)]
    assert pixels(out / names[0]).shape == (16, 16, 3)
    np.testing.assert_array_equal(calls[0]["labels"], [[2, 1]] * 3)
    assert calls[0]["guidance"] == 3.0 and calls[0]["sampler"] == TINY.sampler    # the run's sampler options
    # without GUIDANCE=: lesson 13's w = 2; without CLASS=: no labels at all, as before
    monkeypatch.setattr(sampling, "generate", lambda model, schedule, n, **kw: calls.append(kw) or np.zeros((n, 16, 16, 3)))
    runs.generate_pngs(place["cond"], 2, out=out / "default", progress=False, classes="face")
    assert calls[-1]["guidance"] == runs.DEFAULT_GUIDANCE == 2.0
    np.testing.assert_array_equal(calls[-1]["labels"], [[0, 2]] * 2)
    assert sorted(p.name for p in (out / "default").iterdir())[0] == "seed0_step10_face_w2_0000.png"
    runs.generate_pngs(place["plain"], 2, out=out / "plain", progress=False)
    assert "labels" not in calls[-1] and "guidance" not in calls[-1]
    assert sorted(p.name for p in (out / "plain").iterdir()) == ["seed0_step10_0000.png", "seed0_step10_0001.png"]
    shutil.rmtree(out)


# ----------------------------------------------------------------------------- edit and inpaint: mistakes

def test_edit_mistakes_are_one_error_line_and_write_nothing(capsys, place, tmp_path):
    run, pic = place["plain"], place["picture"]
    broken = place["root"] / "pics" / "broken.png"
    broken.write_bytes(b"this is not a png at all")
    fails(capsys, place, ["edit", "", "--image", pic], "name a run folder")
    fails(capsys, place, ["edit", run, "--image", ""], "name a picture")
    fails(capsys, place, ["edit", place["root"] / "nope", "--image", pic], "is not a run folder")
    fails(capsys, place, ["edit", run, "--image", place["root"] / "missing.png"], "missing.png: no such file")
    fails(capsys, place, ["edit", run, "--image", broken], "broken.png is not a picture")
    fails(capsys, place, ["edit", run, "--image", pic, "--strength", "half"], "STRENGTH='half' is not a number")
    fails(capsys, place, ["edit", run, "--image", pic, "--strength", "1.5"], "STRENGTH=1.5", "in [0, 1]")
    fails(capsys, place, ["edit", run, "--image", pic, "--strength", "-0.1"], "STRENGTH=-0.1", "in [0, 1]")
    fails(capsys, place, ["edit", run, "--image", pic, "-n", "0"], "N=0")
    fails(capsys, place, ["edit", run, "--image", pic, "--eta", "2"], "ETA=2")
    fails(capsys, place, ["edit", place["flow"], "--image", pic], "flow matching", "OBJECTIVE=flow")
    broken.unlink()


def test_inpaint_mistakes_are_one_error_line_and_write_nothing(capsys, place):
    run, pic = place["plain"], place["picture"]
    other = place["root"] / "pics" / "other_size.png"
    Image.new("L", (20, 20), 255).save(other)
    white = place["root"] / "pics" / "white.png"
    Image.new("L", (40, 24), 255).save(white)
    fails(capsys, place, ["inpaint", "", "--image", pic, "--mask", "left-half"], "name a run folder")
    fails(capsys, place, ["inpaint", run, "--mask", "left-half"], "name a picture")
    fails(capsys, place, ["inpaint", run, "--image", place["root"] / "gone.jpg", "--mask", "left-half"], "no such file")
    fails(capsys, place, ["inpaint", run, "--image", pic], "name a mask", "centre-square")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", place["root"] / "nomask.png"],
          "nomask.png: no such file")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", other],
          "is 20x20 pixels", "cat.png is 40x24", "run's pictures are 16x16", "white = keep")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", "middle"],
          "'middle' is not a mask preset", "left-half, centre-square, strokes")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", white], "keeps every pixel")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", "strokes", "-n", "0"], "N=0")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", "strokes", "--resample", "0"], "RESAMPLE=0")
    fails(capsys, place, ["inpaint", run, "--image", pic, "--mask", "strokes", "--resample", "2.5"], "whole number")
    fails(capsys, place, ["inpaint", place["flow"], "--image", pic, "--mask", "strokes"], "flow matching")
    other.unlink(), white.unlink()


# ----------------------------------------------------------------------------- edit and inpaint: what they write

def test_edit_at_strength_0_writes_the_picture_as_training_reads_it(capsys, place):
    run, pic = place["plain"], place["picture"]
    expected = as_training_picture(pic, 16)                  # centre-cropped 24x24, resized to 16x16
    assert runs.main(["edit", str(run), "--image", str(pic), "--strength", "0", "-n", "2", "--seed", "5"]) == 0
    out = run / "edits"
    assert sorted(p.name for p in out.iterdir()) == ["cat_input.png", "cat_strength0_seed5.png", "cat_strength0_seed6.png"]
    for name in ("cat_input.png", "cat_strength0_seed5.png", "cat_strength0_seed6.png"):
        np.testing.assert_array_equal(pixels(out / name), expected)
    shutil.rmtree(out)


def test_an_edit_is_given_again_by_its_seed_and_changes_the_picture(place, tmp_path):
    run, pic = place["cond"], place["picture"]            # conditional: guided towards "no label", w = 1
    a = runs.edit_pngs(run, pic, 0.6, seed=3, num=1, steps=6, out=tmp_path / "a", progress=False)
    b = runs.edit_pngs(run, pic, 0.6, seed=2, num=2, steps=6, out=tmp_path / "b", progress=False)
    assert [p.name for p in a] == ["cat_input.png", "cat_strength0.6_seed3.png"]
    np.testing.assert_array_equal(pixels(a[1]), pixels(b[2]))          # seed 3 alone, or the second of two
    assert not np.array_equal(pixels(a[1]), pixels(b[1]))              # seed 2 is another picture
    assert not np.array_equal(pixels(a[1]), pixels(a[0]))              # and strength 0.6 changed it


def test_inpaint_keeps_the_known_pixels_exactly_and_fills_the_hole(place, tmp_path):
    run, pic = place["plain"], place["picture"]
    hole = np.full((24, 40), 255, np.uint8)
    hole[6:18, 12:30] = 0                                   # black = fill, in the picture's own 40x24
    Image.fromarray(hole).save(tmp_path / "hole.png")
    paths = runs.inpaint_pngs(run, pic, str(tmp_path / "hole.png"), seed=1, num=2, resample=2, jump=2, steps=4,
                              out=tmp_path / "out", progress=False)
    assert [p.name for p in paths] == ["cat_hole_masked.png", "cat_hole_seed1.png", "cat_hole_seed2.png"]
    picture = as_training_picture(pic, 16)
    keep = as_training_picture(tmp_path / "hole.png", 16)[..., 0] > 127.5        # the mask cropped as the picture
    assert 0 < keep.sum() < keep.size
    for path in paths[1:]:
        filled = pixels(path)
        np.testing.assert_array_equal(filled[keep], picture[keep])
        assert np.any(filled[~keep] != picture[~keep])
    masked = pixels(paths[0])
    np.testing.assert_array_equal(masked[keep], picture[keep])
    assert np.all(masked[~keep] == runs.HOLE_GREY)


def test_a_mask_of_the_runs_size_keeps_grey_above_one_half(place, tmp_path):
    grey = np.full((16, 16), 153, np.uint8)                 # 0.6: keep
    grey[:, :5] = 100                                       # 0.39: fill
    Image.fromarray(grey).save(tmp_path / "m.png")
    mask, name = runs.read_mask(str(tmp_path / "m.png"), 16, "cat.png", (40, 24))
    assert name == "m" and mask.shape == (16, 16, 1)
    assert np.all(mask[:, :5] == 0) and np.all(mask[:, 5:] == 1)
    preset, name = runs.read_mask("centre-square", 16, "cat.png", (40, 24))
    assert name == "centre-square" and preset[8, 8, 0] == 0 and preset[0, 0, 0] == 1


def test_inpaint_from_the_command_line_with_a_preset(capsys, place):
    run, pic = place["cond"], place["picture"]
    assert runs.main(["inpaint", str(run), "--image", str(pic), "--mask", "left-half", "-n", "1", "--resample", "1"]) == 0
    out = run / "inpainted"
    assert sorted(p.name for p in out.iterdir()) == ["cat_left-half_masked.png", "cat_left-half_seed0.png"]
    picture, filled = as_training_picture(pic, 16), pixels(out / "cat_left-half_seed0.png")
    np.testing.assert_array_equal(filled[:, 8:], picture[:, 8:])
    assert np.any(filled[:, :8] != picture[:, :8])
    shutil.rmtree(out)


# ----------------------------------------------------------------------------- the Makefile

@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not on PATH")
def test_make_passes_the_new_variables_and_generate_without_class_is_unchanged():
    def commands(*args):
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}   # under make test
        out = subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=ROOT, capture_output=True, text=True,
                             env=env)
        assert out.returncode == 0, out.stderr
        return " ".join(out.stdout.replace("\\\n", " ").split())

    assert commands("generate", "RUN=r", "N=3").endswith('-m ddpm_lessons.runs generate "r" -n 3 --seed 0')
    assert commands("generate", "RUN=r", "CLASS=person-role,dark", "GUIDANCE=3").endswith(
        'generate "r" -n 100 --seed 0 --class "person-role,dark" --guidance "3"')
    assert commands("edit", "RUN=r", "IMAGE=a b.png").endswith(
        'edit "r" --image "a b.png" --strength "" --seed 0 --eta ""')                  # N left to edit's 4
    assert commands("edit", "RUN=r", "IMAGE=x.png", "STRENGTH=0.3", "N=2", "SEED=4", "ETA=1").endswith(
        'edit "r" --image "x.png" --strength "0.3" --seed 4 --eta "1" -n 2')
    assert commands("inpaint", "RUN=r", "IMAGE=x.png", "MASK=strokes", "RESAMPLE=1").endswith(
        'inpaint "r" --image "x.png" --mask "strokes" --seed 0 --resample "1" --eta ""')
