"""Pictures for the lessons: image grids, schedule plots, the benchmark figure (the package's only matplotlib user).

Images may be uint8 in [0, 255] or floats in [-1, 1] (the model's range); both are shown
as uint8 after x -> round((x + 1) * 127.5) clipped to [0, 255].
"""
from __future__ import annotations

import numpy as np

from .data import from_unit_range


def to_uint8(images) -> np.ndarray:
    """uint8 images from uint8 or [-1, 1] floats (TensorFlow tensors are accepted): uint8 pass
    through, floats go through ``data.from_unit_range``, round((x + 1) * 127.5) clipped to 0..255."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return from_unit_range(images)


def image_grid(images, ncols: int = 8, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile (N, H, W, C) images into one (rows*(H+pad)-pad, cols*(W+pad)-pad, C) uint8 array."""
    images = to_uint8(images)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        grid[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = images[i]
    return grid[..., 0] if c == 1 else grid


def show_images(images, ncols: int = 8, title: str | None = None, ax=None, size: float = 1.0):
    """Show a grid of images; returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    grid = image_grid(images, ncols)
    if ax is None:
        n = len(images)
        cols = max(1, min(ncols, n))
        rows = -(-n // cols)
        _, ax = plt.subplots(figsize=(size * cols, size * rows + (0.3 if title else 0)))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def show_labelled_grid(images, ncols: int, row_names=(), col_names=(), col_group: int = 1, ax=None,
                       title: str | None = None, size: float = 0.5):
    """``show_images`` with a name left of each row and above each group of ``col_group`` columns
    (e.g. lesson 13: one row per class, one group of columns per guidance scale); returns the Axes."""
    import matplotlib.pyplot as plt
    images = np.asarray(images)
    h, w = images.shape[1:3]
    rows = -(-len(images) // ncols)
    if ax is None:
        _, ax = plt.subplots(figsize=(size * ncols + 1.5, size * rows + 0.6))
    show_images(images, ncols, None, ax)
    if title:
        ax.set_title(title, pad=14 if col_names else 6)          # above the column names
    for i, name in enumerate(row_names):
        ax.text(-2, i * (h + 1) + h / 2, name, ha="right", va="center", fontsize=8)
    for j, name in enumerate(col_names):
        ax.text((j * col_group + col_group / 2) * (w + 1) - 1, -2, name, ha="center", va="bottom", fontsize=8)
    return ax


def save_grid(path, images, ncols: int = 8) -> None:
    """Write an image grid as a PNG file (no matplotlib needed)."""
    from PIL import Image
    Image.fromarray(image_grid(images, ncols)).save(path)


def plot_schedules(schedules: dict, axes=None):
    """alpha_bar_t, log-SNR and beta_t against t for a dict {label: NoiseSchedule}; returns axes."""
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for label, s in schedules.items():
        t = np.arange(1, s.T + 1)
        axes[0].plot(t, s.alphas_cumprod, label=label)
        axes[1].plot(t, s.log_snr(), label=label)
        axes[2].plot(t, s.betas, label=label)
    axes[0].set(title=r"$\bar\alpha_t$ (signal kept)", xlabel="t")
    axes[1].set(title=r"log-SNR $= \log \bar\alpha_t / (1-\bar\alpha_t)$", xlabel="t")
    axes[1].axhline(0, color="gray", lw=0.8, ls=":")
    axes[2].set(title=r"$\beta_t$ (noise added per step)", xlabel="t", yscale="log")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    plt.tight_layout()
    return axes


class TrainingMonitor:
    """A ``Trainer.fit`` callback for notebooks: a live loss plot, and a grid of samples from the
    EMA network every ``preview_every`` steps (also saved as ``previews/step-NNNNNN.png``).

    ``sample_fn(ema_model) -> images in [-1, 1]`` draws the preview (fixed seed: the grids are
    comparable from one preview to the next). Each preview also prints one line naming the file it
    was saved in, which is what a headless run (``make train``) shows in the terminal; under a
    progress bar (``trainer.progress_mode == "bar"``) the line starts on a fresh line.
    """

    def __init__(self, sample_fn, preview_every: int, plot_every: int = 50, save_dir=None, ncols=8):
        from IPython.display import display
        self.sample_fn, self.preview_every, self.plot_every = sample_fn, preview_every, plot_every
        self.save_dir, self.ncols = save_dir, ncols
        self.loss_view = display("(loss plot appears after the first steps)", display_id=True)
        self.grid_view = display(f"(samples appear every {preview_every} steps)", display_id=True)

    def _show(self, view, fig):
        import matplotlib.pyplot as plt
        view.update(fig)
        plt.close(fig)

    def plot_loss(self, trainer):
        import matplotlib.pyplot as plt
        h = trainer.history
        fig, ax = plt.subplots(figsize=(6, 2.6))
        ax.plot(h["step"], h["loss"], lw=1)
        ax.set(xlabel="step", ylabel="loss", yscale="log", title=f"training loss, step {h['step'][-1]}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        self._show(self.loss_view, fig)

    def preview(self, trainer, step):
        import matplotlib.pyplot as plt
        images = self.sample_fn(trainer.ema_model)
        where = "samples drawn from the EMA weights"
        if self.save_dir is not None:
            from pathlib import Path
            folder = Path(self.save_dir) / "previews"
            folder.mkdir(parents=True, exist_ok=True)
            save_grid(folder / f"step-{step:06d}.png", images, self.ncols)
            where = f"EMA samples saved in previews/step-{step:06d}.png"
        n = len(images)
        fig, ax = plt.subplots(figsize=(self.ncols * 0.8, -(-n // self.ncols) * 0.8 + 0.4))
        show_images(images, self.ncols, title=f"EMA samples at step {step}", ax=ax)
        self._show(self.grid_view, fig)
        fresh_line = "\n" if getattr(trainer, "progress_mode", None) == "bar" else ""   # not after the bar
        print(f"{fresh_line}[preview] step {step}: {where}", flush=True)

    def __call__(self, trainer, logs):
        step = logs["step"]
        if step % self.plot_every == 0:
            self.plot_loss(trainer)
        if step % self.preview_every == 0:
            self.preview(trainer, step)


def plot_bench(path, matmul: dict, result: dict) -> None:
    """``python -m ddpm_lessons.bench``'s figure: achieved GFLOP/s per training mode and precision
    against the conv and matmul limits of each precision; sampling seconds against the bound
    steps x one forward pass. ``matmul``: {precision: matmul_limit rows}."""
    from matplotlib.figure import Figure          # no pyplot: works headless, leaves a notebook's backend alone
    has_sampling = bool(result.get("sampling"))
    fig = Figure(figsize=(12 if has_sampling else 6, 4.2))
    axes = fig.subplots(1, 2 if has_sampling else 1, squeeze=False)
    ax = axes[0, 0]
    runs = list(result.get("training", {}))
    colors = {"float32": "tab:blue", "bfloat16": "tab:orange", "float16": "tab:green"}
    precisions = [result["training"][k].get("precision", "float32") for k in runs]
    ax.bar([k.replace("/", "\n") for k in runs], [result["training"][k]["achieved_gflops"] for k in runs],
           color=[colors.get(p, "tab:gray") for p in precisions])
    for precision, conv in result["conv"].items():
        ax.axhline(conv["limit_gflops"], color=colors.get(precision, "tab:gray"), ls="--",
                   label=f"{precision} conv limit {conv['limit_gflops']:.0f}")
    for precision, rows in matmul.items():
        best_mm = max(r["gflops"] for r in rows)
        ax.axhline(best_mm, color=colors.get(precision, "tab:gray"), ls=":",
                   label=f"{precision} matmul limit {best_mm:.0f}")
    ax.set_ylabel("GFLOP/s (img/s x 3 x forward GFLOP)")
    ax.set_title(f"{result['profile']}: training throughput")
    ax.legend(fontsize=7)
    if has_sampling:
        ax = axes[0, 1]
        rows = result["sampling"]["rows"]
        labels = [("ddpm" if r["sampler"] == "ddpm" else
                   (f"ddim{r['eta']:g}" if r["sampler"] == "ddim" else "dpm++")) + f"\n{r['steps']}"
                  for r in rows]
        xs = range(len(rows))
        ax.bar(xs, [r["seconds"] for r in rows], color="tab:blue", label="measured")
        ax.scatter(xs, [r["bound_s"] for r in rows], color="tab:red", marker="_", s=300, zorder=3,
                   label="bound: steps x forward")
        ax.set_xticks(list(xs), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel(f"seconds for {result['sampling']['batch']} images")
        ax.set_title("sampling")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def unet_skips(model) -> dict:
    """{concat layer name: name of the layer whose output it takes from the skip stack} for a U-Net
    built by ``unet.build_unet``. Public Keras API only: a concat's ``input`` is the list [h, skip] of
    tensors it was called on, and each of them is some layer's ``output``."""
    producer = {id(layer.output): layer.name for layer in model.layers}
    skips = {}
    for layer in model.layers:
        if "concat" in layer.name:
            source = producer.get(id(layer.input[1]))
            if source is None:
                raise ValueError(f"{layer.name}: its second input is not the output of a layer of {model.name}")
            skips[layer.name] = source
    return skips


def draw_unet(model, ax=None):
    """A built U-Net drawn as a U; returns the matplotlib Axes.

    One dot per layer output, in the order the layers run (x); the height is the resolution (log2
    scale), the dot's area grows with its channels, blue = down path, red = middle, green = up path;
    grey arcs join each stored map to the concat that reads it (``unet_skips``); "attn" marks
    self-attention. Each level is labelled with its width. Reads only public Keras API (``layers``,
    ``layer.output.shape``, ``layer.input``), and the layer names of ``unet.build_unet``.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    drawn = [l for l in model.layers if l.name not in ("x_t", "t", "time_embedding")]
    pos = {l.name: i for i, l in enumerate(drawn)}
    res = {l.name: int(l.output.shape[1]) for l in drawn}
    ch = {l.name: int(l.output.shape[-1]) for l in drawn}
    y = {n: np.log2(r) for n, r in res.items()}                       # height = log2(resolution)
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 4.4))
    span = len(drawn)
    for concat, src in unet_skips(model).items():  # a skip: an arc from the stored map to its concat
        s = np.linspace(0, 1, 50)
        xs = pos[src] + s * (pos[concat] - pos[src])
        ax.plot(xs, y[src] + 1.2 * (pos[concat] - pos[src]) / span * np.sin(np.pi * s),
                color="0.6", lw=0.8, zorder=0)
    part = {n: "down" if n.startswith("down") or n == "conv_in" else "mid" if n.startswith("mid") else "up"
            for n in pos}
    colours = {"down": "tab:blue", "mid": "tab:red", "up": "tab:green"}
    ax.plot(list(pos.values()), [y[n] for n in pos], color="0.3", lw=0.8, zorder=1)
    ax.scatter(list(pos.values()), [y[n] for n in pos], s=[ch[n] * 1.5 for n in pos],
               c=[colours[part[n]] for n in pos], zorder=2)
    for n in pos:
        if "attn" in n:
            ax.annotate("attn", (pos[n], y[n]), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=7)
    # the levels: each resolution's tick names its level and width (its first residual block's channels)
    width = {res[n]: (n[len("down"):n.index("_")], ch[n]) for n in pos if n.startswith("down") and n.endswith("_res0")}
    sizes = sorted(set(res.values()))
    ax.set_yticks(np.log2(sizes), [f"{r}x{r}" + (f"\nlevel {width[r][0]}: {width[r][1]} ch" if r in width else "")
                                   for r in sizes], fontsize=8)
    if "mid_res0" in pos:
        middle = [pos[n] for n in pos if part[n] == "mid"]
        ax.annotate(f"middle: {ch['mid_res0']} ch", (np.mean(middle), y["mid_res0"]), textcoords="offset points",
                    xytext=(0, -26), ha="center", fontsize=7, color="tab:red")
    ax.set_ylim(np.log2(sizes[0]) - 0.6, np.log2(sizes[-1]) + 1.4)
    ax.set_xlim(-1, span)
    ax.set_xlabel("layer, in the order they run")
    ax.set_ylabel("resolution")
    handles = [Line2D([], [], marker="o", ls="", color=c, label=f"{p} path" if p != "mid" else "middle")
               for p, c in colours.items()] + [Line2D([], [], color="0.6", label="skip connection")]
    ax.legend(handles=handles, fontsize=7, loc="upper right")
    ax.set_title(f"{model.name}: dot area ~ channels; arcs = skip connections")
    return ax


def animated_gif(frames, labels=None, ncols: int = 8, scale: int = 3, ms: int = 150, last_ms: int = 1500) -> bytes:
    """An animated GIF, as bytes, with one image grid per frame; it loops, holding the last frame.

    ``frames``: (F, N, H, W, C) uint8 or [-1, 1] floats; frame f is ``image_grid(frames[f], ncols)``
    enlarged ``scale`` times (nearest pixel), under its text ``labels[f]`` if given. Each frame shows
    for ``ms`` milliseconds, the last for ``last_ms``. Pillow only, no network resource: show it in a
    notebook with ``IPython.display.Image(data=gif, format="gif")`` or write it to a ``.gif`` file.
    """
    from io import BytesIO
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=11 if scale < 3 else 14)
    except TypeError:                              # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    band = 0 if labels is None else 18
    pictures = []
    for f, frame in enumerate(frames):
        grid = Image.fromarray(image_grid(frame, ncols)).convert("RGB")
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
        picture = Image.new("RGB", (grid.width, grid.height + band), "white")
        picture.paste(grid, (0, band))
        if labels is not None:
            ImageDraw.Draw(picture).text((2, 1), str(labels[f]), fill="black", font=font)
        pictures.append(picture)
    out = BytesIO()
    pictures[0].save(out, format="GIF", save_all=True, append_images=pictures[1:], loop=0,
                     duration=[ms] * (len(pictures) - 1) + [last_ms])
    return out.getvalue()
