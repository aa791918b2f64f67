"""data/build_tuxpaint_photos.py on a tiny fake package tree (no network, no apt-get)."""
import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_tuxpaint_photos", ROOT / "data" / "build_tuxpaint_photos.py")
builder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(builder)


def _stamp(path, size, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = np.zeros(size[::-1] + (4,), np.uint8)                      # transparent ...
    im[size[1] // 4: 3 * size[1] // 4, size[0] // 4: 3 * size[0] // 4] = colour + (255,)   # ... with an opaque box
    Image.fromarray(im, "RGBA").save(path)


@pytest.fixture
def package(tmp_path):
    stamps = tmp_path / "pkg" / builder.STAMPS
    rng = np.random.default_rng(0)
    for i in range(120):                       # 120 stamps over three study categories, some in sub-folders
        cat = ("food", "plants", "town")[i % 3]
        sub = "cartoon/" if i % 10 == 0 else ("fruit/" if i % 3 == 0 else "")
        _stamp(stamps / cat / f"{sub}thing_{i}.png", (40 + i % 30, 24 + i % 17), tuple(int(v) for v in rng.integers(0, 200, 3)))
    _stamp(stamps / "food" / "thing_0_mirror.png", (40, 24), (1, 2, 3))      # mirror images are left out
    (stamps / "food" / "readme.txt").write_text("not a picture")
    for i in range(5):
        _stamp(stamps / "animals" / f"cat_{i}.png", (30, 30), (100, 50, 0))   # the held-out category
    doc = tmp_path / "pkg" / builder.COPYRIGHT
    doc.parent.mkdir(parents=True)
    doc.write_text("License: GPL-2\n")
    return tmp_path / "pkg"


def test_builder_makes_square_white_folders_and_fixed_nested_subsets(package, tmp_path):
    counts = builder.build(package, tmp_path / "out")
    assert counts["tuxpaint-photos"] == 120
    out = tmp_path / "out" / "tuxpaint-photos"
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 120 and not any("mirror" in p.name for p in pngs)
    im = np.asarray(Image.open(pngs[0]))
    assert im.shape == (64, 64, 3) and (im[0, 0] == 255).all()      # square, RGB, transparent -> white
    rows = list(csv.DictReader(open(out / "sources.csv")))
    assert len(rows) == 120 and {r["category"] for r in rows} == {"food", "plants", "town"}
    assert sum(int(r["drawing"]) for r in rows) == 12                # the cartoon/ sub-folders are marked
    assert "GPL-2" in (out / "LICENSE.txt").read_text()
    assert counts["tuxpaint-animals"] == 5 and len(list((tmp_path / "out" / "tuxpaint-animals").glob("*.png"))) == 5
    # 120 < 300: no 300 subset; the 100 subset would be drawn from the 300 one, so none either
    assert "tuxpaint-photos-300" not in counts and "tuxpaint-photos-100" not in counts


def test_builder_subsets_are_nested_and_the_same_on_a_rebuild(package, tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "SUBSETS", (50, 20))
    first = builder.build(package, tmp_path / "a")
    builder.build(package, tmp_path / "b")
    names = lambda d, k: {p.name for p in (tmp_path / d / f"tuxpaint-photos-{k}").glob("*.png")}
    assert first["tuxpaint-photos-50"] == 50 and first["tuxpaint-photos-20"] == 20
    assert names("a", 20) <= names("a", 50) and names("a", 50) == names("b", 50) and names("a", 20) == names("b", 20)
    for p in (tmp_path / "a" / "tuxpaint-photos-20").glob("*.png"):   # the same bytes as in the whole folder
        assert p.read_bytes() == (tmp_path / "a" / "tuxpaint-photos" / p.name).read_bytes()


def test_builder_refuses_a_folder_without_the_stamps(tmp_path):
    with pytest.raises(SystemExit, match="usr/share/tuxpaint"):
        builder.build(tmp_path, tmp_path / "out")
