"""Tests of ddpm_lessons.data: every awkward kind of file a learner's folder may hold.

All pictures are generated in pytest's tmp_path at run time; nothing is committed.
"""
import csv
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ddpm_lessons import data

SIZE = 16
RED, BLUE, GREEN = (230, 20, 20), (20, 20, 230), (20, 200, 20)


def _jpeg_bytes(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _crafted_png_header(width, height):
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """A folder with good pictures in many encodings, bad files and a duplicate.

    Returns (folder, good, bad) where good lists the relative names expected in ``used``
    and bad maps each file expected in ``skipped`` to the start of its reason.
    """
    d = tmp_path_factory.mktemp("messy")
    (d / "sub").mkdir()
    good_rgb = Image.new("RGB", (48, 32), GREEN)
    (d / "a_good.jpg").write_bytes(_jpeg_bytes(good_rgb))
    (d / "b_truncated.jpg").write_bytes(_jpeg_bytes(Image.effect_noise((64, 64), 60).convert("RGB"))[:700])
    (d / "c_empty.jpg").write_bytes(b"")
    (d / "d_text.png").write_text("this is not a picture\n")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(d / "e_cmyk.jpg", quality=95)  # red ink
    Image.fromarray(np.full((24, 24), 32896, np.uint16)).save(d / "f_gray16.png")
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)       # index 0 black (transparent), 1 red
    pal.paste(1, (0, 0, 16, 32))                               # left half red, right half index 0
    pal.save(d / "g_palette.png", transparency=0)
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))           # transparent black ...
    rgba.paste((20, 20, 230, 255), (8, 8, 24, 24))             # ... around an opaque blue square
    rgba.save(d / "h_rgba.png")
    rot = Image.new("RGB", (60, 40), BLUE)                     # landscape as stored ...
    rot.paste(RED, (0, 0, 30, 20))                             # ... red marker top-left
    exif = Image.Exif()
    exif[0x0112] = 6                                           # Orientation: rotate 90 deg CW to view
    (d / "i_exif_rotated.jpg").write_bytes(_jpeg_bytes(rot, exif=exif.tobytes()))
    Image.new("RGB", (4, 4), RED).save(d / "j_tiny.png")
    Image.new("RGB", (120, 100), RED).save(d / "k_bomb.png")   # 12,000 px > max_pixels below
    Image.new("RGB", (32, 32), BLUE).save(d / "l_picture.webp", lossless=True)
    frames = [Image.new("P", (32, 32), i) for i in (1, 2)]
    frames[0].putpalette([0, 0, 0, 230, 20, 20, 20, 20, 230] + [0] * 759)
    frames[0].save(d / "m_anim.gif", save_all=True, append_images=[frames[1]], duration=100)
    Image.new("RGB", (32, 32), GREEN).save(d / "n_png_named.jpg", format="PNG")   # content wins
    Image.new("RGB", (32, 32), RED).save(d / "sub" / "nested.bmp")
    shutil.copy(d / "a_good.jpg", d / "sub" / "z_copy_of_good.jpg")               # exact duplicate
    (d / "labels.csv").write_text("file,name\na_good.jpg,green\n")                # ignored quietly
    (d / "LICENSE.txt").write_text("license text\n")
    (d / ".hidden.jpg").write_bytes(b"")                                           # hidden: not seen

    good = ["a_good.jpg", "e_cmyk.jpg", "f_gray16.png", "g_palette.png", "h_rgba.png",
            "i_exif_rotated.jpg", "l_picture.webp", "m_anim.gif", "n_png_named.jpg",
            "sub/nested.bmp"]
    bad = {"b_truncated.jpg": "unreadable", "c_empty.jpg": "empty file",
           "d_text.png": "not an image", "j_tiny.png": "too small", "k_bomb.png": "too large"}
    return d, good, bad


@pytest.fixture(scope="module")
def messy(messy_folder):
    d, good, bad = messy_folder
    images, report = data.read_image_folder(d, SIZE, min_size=16, max_pixels=10_000)
    return images, report, good, bad


def _pixels(images, report, name):
    return images[report.used.index(name)].astype(int)


def test_used_are_exactly_the_good_files(messy):
    images, report, good, _ = messy
    assert report.used == good                       # sorted, sub-folder included, dup excluded
    assert images.shape == (len(good), SIZE, SIZE, 3) and images.dtype == np.uint8
    assert report.files_seen == len(good) + 5 + 1 + 2   # good + bad + duplicate + csv/txt


def test_each_bad_file_is_reported_with_its_reason(messy):
    _, report, _, bad = messy
    reasons = dict(report.skipped)
    assert set(reasons) == set(bad)
    for name, start in bad.items():
        assert reasons[name].startswith(start), (name, reasons[name])
        assert reasons[name].split(":")[0].split(" (")[0] in data.REASONS


def test_duplicates_and_non_images(messy):
    _, report, _, _ = messy
    assert report.duplicates == [("sub/z_copy_of_good.jpg", "a_good.jpg")]
    assert report.ignored == ["LICENSE.txt", "labels.csv"]     # quiet: not in skipped


def test_summary_names_files_relative_to_the_folder(messy, messy_folder):
    _, report, _, bad = messy
    text = report.summary()
    for name in list(bad) + ["sub/z_copy_of_good.jpg"]:
        assert name in text
    assert str(messy_folder[0]) not in text and "/tmp" not in text
    assert str(report) == text and str(messy_folder[0]) not in repr(report)


def test_16_bit_and_cmyk_are_converted_not_clipped(messy):
    images, report, _, _ = messy
    gray = _pixels(images, report, "f_gray16.png")
    assert np.all(np.abs(gray - 128) <= 1)           # 16-bit 32896 -> 128, not clipped to 255
    cmyk = _pixels(images, report, "e_cmyk.jpg")[SIZE // 2, SIZE // 2]
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60          # red ink -> red


def test_transparency_becomes_white(messy):
    images, report, _, _ = messy
    pal = _pixels(images, report, "g_palette.png")
    assert np.all(pal[:, -3:] >= 250)                # transparent index -> white, not black
    assert pal[8, 2, 0] > 180 and pal[8, 2, 1] < 60  # opaque red half stays red
    rgba = _pixels(images, report, "h_rgba.png")
    assert np.all(rgba[0, 0] >= 250) and np.all(rgba[-1, -1] >= 250)   # transparent -> white
    assert rgba[SIZE // 2, SIZE // 2, 2] > 200 and rgba[SIZE // 2, SIZE // 2, 0] < 60


def test_gif_first_frame_webp_and_content_over_extension(messy):
    images, report, _, _ = messy
    gif = _pixels(images, report, "m_anim.gif")
    assert np.all(gif[..., 0] > 200) and np.all(gif[..., 2] < 60)     # first frame (red), not blue
    webp = _pixels(images, report, "l_picture.webp")
    assert np.all(webp[..., 2] > 200)
    assert report.formats["PNG"] == 4 and report.formats["GIF"] == 1  # png_named.jpg is a PNG


def test_exif_orientation_is_applied(messy):
    images, report, _, _ = messy
    im = _pixels(images, report, "i_exif_rotated.jpg")
    q = SIZE // 4

    def is_red(p):
        return p[0] > 180 and p[2] < 80

    # stored 60x40 with the marker top-left; rotated 90 deg clockwise it is 40x60 with the
    # marker top-right; the centre square crop keeps it in the top-right quadrant.
    assert is_red(im[q, SIZE - 1 - q])
    assert not is_red(im[q, q])                       # would be red without the rotation
    assert not is_red(im[SIZE - 1 - q, q])            # would be red for a counter-clockwise turn
    assert not is_red(im[SIZE - 1 - q, SIZE - 1 - q])


def test_real_decompression_bomb_header_is_skipped(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_crafted_png_header(50_000, 50_000))  # 2.5 G pixels
    Image.new("RGB", (20, 20), RED).save(tmp_path / "ok.png")
    images, report = data.read_image_folder(tmp_path, SIZE)   # default max_pixels
    assert report.used == ["ok.png"] and len(images) == 1
    assert report.skipped[0][0] == "bomb.png" and report.skipped[0][1].startswith("too large")


def test_errors_name_the_path(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        data.read_image_folder(missing, SIZE)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="contains no files") as e:
        data.read_image_folder(empty, SIZE)
    assert str(empty) in str(e.value)
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"")
    (only_bad / "y.png").write_text("nope")
    with pytest.raises(ValueError, match="no usable image") as e:
        data.read_image_folder(only_bad, SIZE)
    assert str(only_bad) in str(e.value) and "x.jpg: empty file" in str(e.value)
    a_file = only_bad / "y.png"
    with pytest.raises(NotADirectoryError, match="y.png"):
        data.read_image_folder(a_file, SIZE)


def test_unit_range_round_trip():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = data.to_unit_range(pixels)
    assert x.dtype == np.float32 and x.min() == -1.0 and x.max() == 1.0
    assert np.array_equal(data.from_unit_range(x), pixels)
    assert np.array_equal(data.from_unit_range(tf.constant([[-3.0, 0.0, 3.0]])), [[0, 128, 255]])


def test_make_dataset_batches_in_unit_range():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    batches = list(data.make_dataset(images, 4, seed=1))
    assert len(batches) == 2                                # drop_remainder: 10 // 4
    for b in batches:
        assert b.dtype == tf.float32 and b.shape == (4, 8, 8, 3)
        assert -1.0 <= float(tf.reduce_min(b)) and float(tf.reduce_max(b)) <= 1.0
    with pytest.raises(ValueError, match="batch_size 11"):
        data.make_dataset(images, 11)


def test_flip_is_a_left_right_mirror_and_shuffle_is_seeded():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 4, 6, 3), dtype=np.uint8)
    plain = data.to_unit_range(images)
    mirrored = plain[:, :, ::-1]
    out = np.concatenate(list(data.make_dataset(images, 64, shuffle=False, flip=True)))
    same = np.all(out == plain, axis=(1, 2, 3))
    flipped = np.all(out == mirrored, axis=(1, 2, 3))
    assert np.all(same | flipped)                           # each image: itself or its mirror
    assert 10 < flipped.sum() < 54                          # about half are flipped
    a = np.concatenate(list(data.make_dataset(images, 8, seed=3, flip=False)))
    b = np.concatenate(list(data.make_dataset(images, 8, seed=3, flip=False)))
    assert np.array_equal(a, b) and not np.array_equal(a, plain)


def test_shipped_default_dataset_matches_its_labels():
    folder = data.default_dataset_path()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert len(pngs) >= 1000
    rows = data.read_labels(folder)
    assert sorted(r["file"] for r in rows) == pngs
    assert {r["skin_tone"] for r in rows} == {"none", "light", "medium-light", "medium",
                                              "medium-dark", "dark"}
    assert (folder / "LICENSE.txt").read_text().count("Apache License") >= 1
    with open(folder / "labels.csv", newline="") as f:
        assert next(csv.reader(f)) == ["file", "name", "subcategory", "skin_tone"]


def test_load_image_folder_end_to_end(messy_folder):
    d, good, _ = messy_folder
    ds, report = data.load_image_folder(d, SIZE, batch_size=5, max_pixels=10_000)
    batches = list(ds)
    assert len(batches) == len(good) // 5 and batches[0].shape == (5, SIZE, SIZE, 3)
    assert report.used == good
