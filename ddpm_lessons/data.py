"""Lessons 00 and 10 — pictures from a folder, as a tf.data pipeline in [-1, 1].

    read_image_folder   folder -> uint8 array (N, size, size, 3) + a report of what was used,
                        skipped (and why) and duplicated
    make_dataset        uint8 array -> shuffled, flipped float32 batches in [-1, 1]
    load_image_folder   both in one call

The model works on pixels scaled to [-1, 1], the range of the noise it is mixed with:

    x = pixel / 127.5 - 1          (0 -> -1, 127.5 -> 0, 255 -> +1)
    pixel = round((x + 1) * 127.5), clipped to 0..255

Every picture goes through the same steps, whatever it came as: decode by content (JPEG,
PNG, WebP, BMP, GIF first frame, ...; the extension does not matter), turn upright by its
EXIF orientation, convert to 8-bit RGB (transparency composited onto white; 16-bit scaled,
not clipped; CMYK, grayscale and palette converted), centre-crop to a square and resize.
A file that cannot be used is skipped and named in the report with its reason; nothing
is dropped silently. The course's default data is an ordinary folder read the same way
(``default_dataset_path()``). This module imports neither matplotlib nor ipywidgets, and
TensorFlow only for ``make_dataset`` (so checking a folder is quick and quiet). About 390 lines,
most of them the checks and messages of reading a learner's folder: one path from file to batch.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions that announce a picture: such a file that cannot be used is reported as skipped.
# Any other file is tried too (decoding is by content), and ignored quietly if it is no image.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .bmp .dib .gif .tif .tiff .heic .heif .avif".split())
BACKGROUND = (255, 255, 255)  # transparent pixels become white
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: more is treated as a decompression bomb

# Each skip reason starts with one of these words.
REASONS = ("empty file", "not an image", "unreadable", "too small", "too large")

_REBUILD = ("Rebuild it with `python data/build_emoji_portraits.py --package <unpacked "
            "emoji-datasource-google@16.0.0> --out data/emoji-portraits` (see data/README.md), "
            "or pass the path of your own image folder instead.")


def default_dataset_path() -> Path:
    """The shipped default image folder, ``<repo>/data/emoji-portraits``."""
    path = Path(__file__).resolve().parent.parent / "data" / "emoji-portraits"
    if not path.is_dir():
        raise FileNotFoundError(f"the default image folder is missing: {path}. {_REBUILD}")
    return path


def read_labels(path=None) -> list[dict]:
    """Rows of ``labels.csv`` (a folder holding it, or the file itself) as dicts."""
    path = Path(default_dataset_path() if path is None else path)
    if path.is_dir():
        path = path / "labels.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def emoji_base_name(name: str) -> str:
    """An emoji's name without its gender or age word, so that the pictures of one idea group
    together: 'woman superhero' -> 'superhero', 'man: red hair' -> 'red hair', 'older man' -> 'older'."""
    base = re.sub(r"^(man|woman|person|men|women|people)\b:?\s*", "", name.strip())
    base = re.sub(r"\b(man|woman|person)\b", "", base).strip()
    return base or name.strip()


# The shipped portraits' two label kinds (labels.csv): the face-* subcategories merged into "face".
SUBCATEGORIES = ("face", "person", "person-gesture", "person-role", "person-fantasy")
SKIN_TONES = ("none", "light", "medium-light", "medium", "medium-dark", "dark")


def emoji_labels(files, rows=None) -> np.ndarray:
    """(N, 2) int32 labels of the shipped portraits, in the order of ``files`` (e.g. ``report.used``):
    column 0 the subcategory (index into SUBCATEGORIES, face-* merged), column 1 the skin tone
    (index into SKIN_TONES). ``rows``: ``read_labels()`` by default."""
    by_file = {r["file"]: r for r in (read_labels() if rows is None else rows)}
    out = []
    for f in files:
        r = by_file[Path(f).name]
        sub = "face" if r["subcategory"].startswith("face") else r["subcategory"]
        out.append((SUBCATEGORIES.index(sub), SKIN_TONES.index(r["skin_tone"])))
    return np.array(out, np.int32).reshape(-1, 2)


def subfolder_labels(report) -> tuple[np.ndarray, list]:
    """One label kind from the first level of sub-folders, for conditional training: (labels (N, 1)
    int32 in the order of ``report.used``, class names = the sorted sub-folder names). A picture at
    the folder's top level gets the "no label" token (= the number of classes)."""
    tops = [Path(rel).parts[0] if len(Path(rel).parts) > 1 else None for rel in report.used]
    names = sorted({t for t in tops if t is not None})
    if not names:
        raise ValueError(f"{report.path} has no sub-folders with pictures: conditional training takes its "
                         "classes from the first level of sub-folders (one folder per class)")
    index = {name: i for i, name in enumerate(names)}
    return np.array([[index.get(t, len(names))] for t in tops], np.int32), names


EMOJI_LABEL_KINDS = (("subcategory", SUBCATEGORIES), ("skin tone", SKIN_TONES))


def class_labels(report) -> tuple[np.ndarray, list]:
    """Labels for conditional training (lesson 13): (labels (N, K) int32 in the order of
    ``report.used``, kinds = [(kind name, class names), ...]). The shipped portraits have two kinds
    (``emoji_labels``: subcategory and skin tone); any other folder has one, its first level of
    sub-folders (``subfolder_labels``; a folder without sub-folders raises ``ValueError``)."""
    if Path(report.path).resolve() == default_dataset_path().resolve():
        return emoji_labels(report.used, read_labels(report.path)), [(k, list(c)) for k, c in EMOJI_LABEL_KINDS]
    labels, names = subfolder_labels(report)
    return labels, [("folder", names)]


# ----------------------------------------------------------------------------- the report

@dataclass(repr=False)
class FolderReport:
    """What ``read_image_folder`` did with each file. File names are relative to ``path``."""
    path: Path
    image_size: int
    files_seen: int = 0
    used: list = field(default_factory=list)        # relative file names, in array order
    skipped: list = field(default_factory=list)     # (file, reason)
    duplicates: list = field(default_factory=list)  # (file, the earlier file with the same bytes)
    ignored: list = field(default_factory=list)     # files that are not pictures (csv, txt, ...)
    formats: dict = field(default_factory=dict)     # e.g. {"JPEG": 120, "PNG": 3}
    upscaled: list = field(default_factory=list)    # used files smaller than image_size

    @property
    def num_images(self) -> int:
        return len(self.used)

    def summary(self, max_items: int = 40) -> str:
        """Counts, then every skipped file and why (paths relative to the folder)."""
        s = self.image_size
        formats = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        lines = [f"image folder '{Path(self.path).name}': {self.files_seen} files",
                 f"  used        {len(self.used):5d}  -> array ({len(self.used)}, {s}, {s}, 3) uint8"
                 + (f"  [{formats}]" if formats else ""),
                 f"  skipped     {len(self.skipped):5d}",
                 f"  duplicates  {len(self.duplicates):5d}  (same bytes as an earlier file; not used)",
                 f"  not images  {len(self.ignored):5d}"
                 + (f"  ({_shorten(self.ignored, 4)})" if self.ignored else "")]
        if self.upscaled:
            lines.append(f"  note: {len(self.upscaled)} used images are smaller than {s}x{s} "
                         "and were enlarged (they will look soft)")
        if 0 < len(self.used) < 100:
            lines.append(f"  note: only {len(self.used)} images; a diffusion model learns "
                         "better from hundreds")
        if self.skipped:
            lines.append("skipped:")
            lines += _listing(self.skipped, max_items)
        if self.duplicates:
            lines.append("duplicates (the first copy is kept):")
            lines += _listing([(f, f"same bytes as {g}") for f, g in self.duplicates], max_items)
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return (f"FolderReport('{Path(self.path).name}': {len(self.used)} used, "
                f"{len(self.skipped)} skipped, {len(self.duplicates)} duplicates)")

    def _repr_pretty_(self, printer, cycle):  # how IPython / Jupyter displays it
        printer.text(self.summary())


def _shorten(names, k):
    return ", ".join(names[:k]) + (f", ... {len(names) - k} more" if len(names) > k else "")


def _listing(pairs, max_items):
    width = min(max(len(f) for f, _ in pairs), 40)
    lines = [f"  {f:{width}s}  {why}" for f, why in pairs[:max_items]]
    if len(pairs) > max_items:
        lines.append(f"  ... and {len(pairs) - max_items} more")
    return lines


# ----------------------------------------------------------------------------- reading

def _list_files(root: Path) -> list[str]:
    """Relative posix paths of all files under root, sorted; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        found += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]
    return sorted(found)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency composited onto white."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if im.mode.startswith("I;16") or 255 < top <= 65535:
            a = a / 257.0                         # 16-bit: 65535 -> 255, 32896 -> 128
        elif im.mode == "F" and top <= 1.0:
            a = a * 255.0                         # float in [0, 1]
        elif top > 65535:
            a = a * (255.0 / top)
        return Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "1":
        im = im.convert("L")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, BACKGROUND + (255,))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def _square_resize(im: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to size x size (Lanczos)."""
    w, h = im.size
    short = min(w, h)
    left, top = (w - short) // 2, (h - short) // 2
    return im.resize((size, size), Image.Resampling.LANCZOS,
                     box=(left, top, left + short, top + short), reducing_gap=3.0)


def _read_one(data: bytes, image_size: int, min_size: int, max_pixels: int):
    """Decode one file. Returns (rgb uint8 array, format, (w, h)) or raises _Skip(reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise _Skip("not an image (content not recognised as a picture)") from None
    except Image.DecompressionBombError as e:
        raise _Skip(f"too large (possible decompression bomb): {e}") from None
    except Exception as e:  # noqa: BLE001 - any broken header
        raise _Skip(f"unreadable: {type(e).__name__}: {e}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise _Skip(f"too large (possible decompression bomb): {w}x{h} = {w * h:,} pixels "
                        f"> max_pixels {max_pixels:,}")
        if min(w, h) < min_size:
            raise _Skip(f"too small: {w}x{h}, short side {min(w, h)} < min_size {min_size}")
        fmt = im.format or "?"
        try:
            if fmt in ("JPEG", "MPO"):
                im.draft(None, (2 * image_size, 2 * image_size))  # decode big JPEGs at 1/2..1/8
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # e.g. "Palette images with transparency ..."
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _square_resize(_to_rgb(im), image_size)
        except Exception as e:  # noqa: BLE001 - truncated or corrupt data, odd modes, ...
            raise _Skip(f"unreadable (truncated or corrupt?): {type(e).__name__}: {e}") from None
    return np.asarray(rgb, dtype=np.uint8), fmt, (w, h)


class _Skip(Exception):
    pass


def decode_picture(data: bytes, image_size: int, min_size: int = 1) -> tuple[np.ndarray, tuple]:
    """One picture's bytes (a file's, an upload's) read as ``read_image_folder`` reads each file: decoded by
    content, turned upright, RGB, centre-cropped square, resized to ``image_size``. Returns (uint8
    (S, S, 3), its (width, height) as stored); a ValueError says why a file cannot be used."""
    try:
        pixels, _, size = _read_one(data, image_size, min_size, DEFAULT_MAX_PIXELS)
    except _Skip as skip:
        raise ValueError(str(skip)) from None
    return pixels, size


def read_image_folder(path, image_size: int, min_size: int = 16,
                      max_pixels: int = DEFAULT_MAX_PIXELS, drop_duplicates: bool = True):
    """Read every picture under ``path`` (sub-folders too, in sorted order).

    Returns ``(images, report)``: images is uint8 (N, image_size, image_size, 3), in the order
    of ``report.used``. Files that cannot be used are listed in ``report.skipped`` with the
    reason (one of ``REASONS``); files with the same bytes as an earlier one go to
    ``report.duplicates`` (used once, unless ``drop_duplicates=False``). Raises if the folder is
    missing, empty, or has no usable picture. ``max_pixels`` guards against decompression
    bombs (Pillow's own limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``, applies as well).
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {path}. Check the spelling, or give "
                                "the full path of a folder of JPEG/PNG pictures.")
    if not root.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder: give the folder that holds "
                                 "the pictures.")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    files = _list_files(root)
    if not files:
        raise ValueError(f"image folder {path} contains no files (sub-folders were searched "
                         "too). Put JPEG, PNG, WebP, BMP or GIF pictures in it.")

    report = FolderReport(path=root, image_size=image_size, files_seen=len(files))
    images, first_with_hash = [], {}
    for rel in files:
        announced = Path(rel).suffix.lower() in IMAGE_EXTENSIONS
        try:
            data = (root / rel).read_bytes()
        except OSError as e:
            report.skipped.append((rel, f"unreadable: cannot open the file ({e.strerror})"))
            continue
        if not data:
            (report.skipped.append((rel, "empty file (0 bytes)")) if announced
             else report.ignored.append(rel))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if drop_duplicates and digest in first_with_hash:
            report.duplicates.append((rel, first_with_hash[digest]))
            continue
        try:
            pixels, fmt, (w, h) = _read_one(data, image_size, min_size, max_pixels)
        except _Skip as skip:
            reason = str(skip)
            if not announced and reason.startswith("not an image"):
                report.ignored.append(rel)          # labels.csv, LICENSE.txt, notes ...
            else:
                report.skipped.append((rel, reason))
            continue
        first_with_hash.setdefault(digest, rel)
        images.append(pixels)
        report.used.append(rel)
        report.formats[fmt] = report.formats.get(fmt, 0) + 1
        if min(w, h) < image_size:
            report.upscaled.append(rel)

    if not images:
        reasons = "; ".join(f"{f}: {why}" for f, why in report.skipped[:5]) or (
            f"no file was recognised as a picture ({_shorten(report.ignored, 5)})")
        raise ValueError(f"no usable image in {path} ({len(files)} files). First problems: "
                         f"{reasons}. Add JPEG/PNG pictures at least {min_size}x{min_size}.")
    return np.stack(images), report


# ----------------------------------------------------------------------------- scaling, tf.data

def to_unit_range(images):
    """uint8 pixels -> float32 in [-1, 1]: x = pixel / 127.5 - 1 (NumPy in, NumPy out; tensor in, tensor out)."""
    if type(images).__module__.startswith("tensorflow"):   # a tensor (eager or inside tf.data)
        import tensorflow as tf
        return tf.cast(images, tf.float32) / 127.5 - 1.0
    return np.asarray(images, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def from_unit_range(x) -> np.ndarray:
    """[-1, 1] floats (array or tensor) -> uint8 pixels: round((x + 1) * 127.5), clipped to 0..255."""
    x = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_dataset(images_uint8, batch_size: int, shuffle: bool = True, flip: bool = True,
                 seed: int = 0, repeat: bool = False, drop_remainder: bool = True, labels=None):
    """A tf.data pipeline of float32 batches (B, H, W, 3) in [-1, 1]; with ``labels`` ((N, K) ints,
    one row per image: a conditional U-Net's label kinds), batches of (images, labels (B, K) int32).

    shuffle (seeded, reshuffled every pass) -> [repeat] -> random left-right flip (seeded,
    stateless) -> scale to [-1, 1] -> batch -> prefetch. Returns a ``tf.data.Dataset``.
    """
    import tensorflow as tf
    images = np.asarray(images_uint8)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} "
                         f"{images.shape}")
    n = len(images)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size {batch_size} must be between 1 and the number of images "
                         f"({n}); use a smaller batch or add pictures")
    if labels is not None:
        labels = np.asarray(labels, np.int32).reshape(n, -1) if len(labels) == n else None
        if labels is None:
            raise ValueError(f"labels must have one row per image ({n} images)")
    ds = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if flip:
        pair_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        flip_one = lambda x, s: tf.image.stateless_random_flip_left_right(x, seed=s)
        ds = tf.data.Dataset.zip((ds, pair_seeds)).map(
            (lambda x, s: flip_one(x, s)) if labels is None else (lambda xy, s: (flip_one(xy[0], s), xy[1])),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(to_unit_range if labels is None else (lambda x, y: (to_unit_range(x), y)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def load_image_folder(path, image_size: int, batch_size: int = 32, shuffle: bool = True,
                      flip: bool = True, seed: int = 0, **read_kwargs):
    """``read_image_folder`` + ``make_dataset``: returns ``(dataset, report)``."""
    images, report = read_image_folder(path, image_size, **read_kwargs)
    return make_dataset(images, batch_size, shuffle=shuffle, flip=flip, seed=seed), report
