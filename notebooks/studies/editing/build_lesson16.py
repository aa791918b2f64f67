"""Writes notebooks/16_editing.ipynb (cells only, no outputs): `make notebooks` runs and stores it.

Kept beside the study whose results the lesson reads, so that the lesson's text and code can be edited
as plain Python strings and the notebook rebuilt:  .venv/bin/python notebooks/studies/editing/build_lesson16.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesson_cells import code, md, write  # noqa: E402

md(r"""
# Lesson 16 — Use your model: edit a picture, fill a hole, walk between two pictures

> **Runs in about 2 minutes** in the `cpu` profile (to be measured by `make notebooks`).

A trained diffusion model does more than draw new pictures. The first things people ask of one are:
*make this sketch look like my pictures*, *fill in the part I erased*, *morph one picture into another*. Each
is a few lines on top of lesson 08's samplers, because each is only a different **start**, **grid** or
**step** for the same compiled loop (`sampling.make_loop`):

| operation | what changes | module |
|---|---|---|
| SDEdit (Meng et al. 2022) | the start: your picture, noised part of the way; the grid: the rest of the way down | `editing.sdedit` |
| inpainting | the step: after each one, the known pixels are put back | `editing.inpaint_loop_step` |
| RePaint's resampling (Lugmayr et al. 2022) | the grid: it goes back *up* now and then | `editing.repaint_grid` |
| interpolation | the start: a point on the great circle between two noises | `editing.slerp` |
| real pictures | the start: the pictures' own noise, found by running DDIM backwards | `sampling.ddim_invert` |

Each section derives its piece, checks it where the answer is known, shows it, and measures it by
lesson 11's protocol (n = 512, the same real pictures for every contender, detail KID ± its standard error
and SWD).
""")

code(r"""
from ddpm_lessons.profiles import get_profile, sampler_options   # import ddpm_lessons first: it quiets TF's start-up logs
from ddpm_lessons import editing, plotting
from ddpm_lessons.data import decode_picture, default_dataset_path, make_dataset, read_image_folder, to_unit_range
from ddpm_lessons.editing import (inpaint, inpaint_evaluations, interpolate_noise, interpolate_real, mask_preset,
                                  repaint_grid, round_trip, sdedit, slerp, strength_grid)
from ddpm_lessons.sampling import ddim_sample, generate, model_eps_fn, timestep_grid
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig
from ddpm_lessons.unet import build_unet
from ddpm_lessons.weights import load_reference_weights, reference_prediction

import json, time
from pathlib import Path
import numpy as np
import matplotlib.pyplot as plt
from matplotlib import animation
import ipywidgets as widgets
from IPython.display import HTML, display
import keras
import tensorflow as tf

profile = get_profile()
keras.utils.set_random_seed(0)
schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)
study = json.loads(Path("studies/editing/results.json").read_text())      # section 5's measurements
print(f"profile: {profile.name}")
""")

md(r"""
## 0. A model to use

In the `cpu` profile the lesson uses the course's shipped reference network (lesson 09's run on the emoji
portraits, predicting $v$). Other profiles train a small one here for the profile's `lesson_train_steps`:
enough to run every cell, far too few steps for good pictures. To use **your own run** instead, put its
folder in `RUN` (for example `"../runs/20261207-101500-cpu-my-pictures"`): its EMA weights and its pictures
are used from then on.
""")

code(r"""
RUN = ""                                   # your run folder, or "" for the shipped reference

if RUN:
    from ddpm_lessons.runs import load_ema_model
    model, schedule, saved, checkpoint = load_ema_model(RUN)
    prediction = saved["profile"].prediction
    pixels, report = read_image_folder(saved["data"]["path"], saved["profile"].image_size)
    print(f"your run {Path(RUN).name} ({checkpoint}), predicting {prediction}: {len(pixels)} pictures")
else:
    pixels, report = read_image_folder(default_dataset_path(), profile.image_size)   # (N, H, W, 3) uint8
    if profile.name == "cpu":
        prediction = reference_prediction()
        model = load_reference_weights(build_unet(profile), prediction)
        print(f"the shipped reference network, predicting {prediction}; {len(pixels)} pictures")
    else:
        prediction = profile.prediction
        trainer = Trainer(build_unet(profile, precision="float32"), schedule, TrainConfig.from_profile(profile))
        history = trainer.fit(make_dataset(pixels, profile.batch_size, seed=0), profile.lesson_train_steps,
                              progress=False)
        model = trainer.ema_model
        print(f"trained here: {profile.lesson_train_steps} steps, predicting {prediction}; {len(pixels)} pictures")
eps_fn = model_eps_fn(model, schedule, prediction)       # what every sampler and every edit calls
pictures = to_unit_range(pixels)                         # (N, H, W, 3) in [-1, 1]
size = pictures.shape[1]
some = lambda *idx: np.array(idx) % len(pictures)        # the lesson's example pictures, in any folder
""")

md(r"""
## 1. SDEdit: noise your picture part of the way, then let the model finish

Lesson 02's forward process at step $t_0$ keeps $\sqrt{\bar\alpha_{t_0}}$ of the picture and adds noise of
standard deviation $\sqrt{1-\bar\alpha_{t_0}}$:

$$x_{t_0} = \sqrt{\bar\alpha_{t_0}}\,x + \sqrt{1-\bar\alpha_{t_0}}\,z .$$

Noise of that size drowns the picture's fine detail but not its coarse layout: at $t_0 = 500$ on the cosine
schedule, $\sqrt{\bar\alpha} = 0.70$ and the noise's standard deviation is 0.71, so a 4-pixel blob of one
colour survives while a one-pixel edge does not. The model has only ever seen $x_{t_0}$ made from *its*
pictures; run from here, the sampler replaces the drowned detail with detail like theirs and keeps the
layout it was given. That is **SDEdit** (Meng et al. 2022). The **strength** $s \in [0, 1]$ sets
$t_0 = s\,(T-1)$; the sampler walks the rest of lesson 08's DDIM grid at the same step size
(`editing.strength_grid`: $\mathrm{round}(s \cdot \text{steps})$ steps from $t_0$):
""")

code(r"""
for s in (0.0, 0.25, 0.5, 1.0):
    g = strength_grid(schedule, s, 20)
    print(f"strength {s:4.2f}: " + ("no step (the picture itself)" if g is None else
          f"{len(g) - 1:2d} steps, t = {g[0]:3d} -> ... -> {g[-2]} -> x_0;  sqrt(abar_t0) = "
          f"{np.sqrt(schedule.alphas_cumprod[g[0]]):.3f}"))
""")

md(r"""
Two ends are known exactly, and `tests/test_editing.py` checks both: strength 0 returns the picture,
strength 1 forgets it completely and gives the plain DDIM sample of the same seed (the picture's share at
$t = 999$, $\sqrt{\bar\alpha} = 4.9\cdot10^{-5}$, is left out, as every sampler leaves it out). DDIM with
$\eta = 0$ makes the edit *deterministic* given the noise $z$; $\eta = 1$ adds fresh noise at every step
(*stochastic*: more varied, a little further from the input).

The input here is a **sketch**: a picture averaged over 4 × 4 blocks, a mosaic of its colours, the kind of
coarse colour layout SDEdit was made for. Each row is one sketch, edited at rising strength:
""")

code(r"""
sketch = editing.block_sketch                         # each picture averaged over 4x4 blocks (the study's inputs too)
STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
chosen = pictures[some(3, 120, 400, 700, 900)]                              # (5, H, W, 3)
sketches = sketch(chosen)
t0 = time.time()
rows = [sdedit(eps_fn, sketches, schedule, s, steps=20, eta=0.0, seed=1) for s in STRENGTHS]   # 6 x (5, H, W, 3)
grid = np.stack([chosen] + rows, axis=1).reshape(-1, size, size, 3)    # per sketch: picture, then the strengths
plotting.show_labelled_grid(grid, ncols=1 + len(STRENGTHS), col_names=["picture"] + [f"s = {s:g}" for s in STRENGTHS],
                            title="SDEdit of a 4x4-block sketch (DDIM, 20 steps at s = 1, eta = 0)", size=0.9)
plt.show()
print(f"{time.time() - t0:.1f} s")
""")

md(r"""
Read a row from left to right. At $s = 0$ the sketch comes back as it went in; at $s = 0.2$ the blocks are
smoothed and the first features show on them; from $s = 0.4$ a face or figure of the sketch's colours stands
where the sketch had its colour masses; at $s = 1$ the sketch is forgotten and the row shows the plain
sample of the same starting noise, another person. The
useful range is where the picture has become a picture of the kind the model knows but still has the
sketch's layout. Try it on any picture of the folder, or upload one (it is centre-cropped and resized, as
`make train` reads a folder):
""")

code(r"""
names = [Path(name).name for name in report.used]                  # the folder's files, in the pictures' order
picker = widgets.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=int(some(3)[0]), description="picture")
as_sketch = widgets.Checkbox(value=True, description="as a 4x4 sketch")
upload = widgets.FileUpload(accept="image/*", multiple=False, description="or upload")
strength = widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="strength")
out = widgets.Output()

def chosen_picture():
    if upload.value:                                         # an uploaded file: read as make train reads one
        item = upload.value[0] if isinstance(upload.value, (tuple, list)) else next(iter(upload.value.values()))
        x = to_unit_range(decode_picture(bytes(item["content"]), size)[0][None])
    else:
        x = pictures[picker.value][None]
    return sketch(x) if as_sketch.value else x

def redraw(*changed):
    x = chosen_picture()
    edits = np.concatenate([x] + [sdedit(eps_fn, x, schedule, strength.value, steps=20, eta=eta, seed=seed)
                                  for eta in (0.0, 1.0) for seed in (1, 2)])
    with out:
        out.clear_output(wait=True)
        plotting.show_labelled_grid(edits, ncols=5, col_names=["input", "eta 0, seed 1", "eta 0, seed 2",
                                    "eta 1, seed 1", "eta 1, seed 2"], title=f"strength {strength.value:.2f}", size=1.2)
        plt.show()

for w in (picker, as_sketch, upload, strength):
    w.observe(redraw, names="value")
display(widgets.VBox([widgets.HBox([picker, as_sketch, upload]), strength, out]))
redraw()
""")

md(r"""
## 2. Inpainting: put the known pixels back after every step

A **mask** $m$ is 1 where the picture is kept and 0 in the hole. The simplest idea (Song et al. 2021, used by
RePaint as its base): sample as usual, and after every step $t \to s$ overwrite the known pixels with the
original *noised to the level $s$*, so that the whole $x_s$ is consistent with the forward process there:

$$x_s \leftarrow m \odot \big(\sqrt{\bar\alpha_s}\,x_0 + \sqrt{1-\bar\alpha_s}\,z\big) + (1-m)\odot x_s^{\text{model}} .$$

At the last step $\bar\alpha = 1$: the known pixels come back *exactly* (`tf.where`, bit-exact; tested). In
code this is one **step function** wrapped around lesson 08's DDIM step, run by the same compiled loop
(`editing.inpaint_loop_step`). The mask presets:
""")

code(r"""
masks = {name: mask_preset(name, size, seed=0) for name in editing.MASK_PRESETS}       # (H, W, 1) each, 1 = keep
for name, m in masks.items():
    print(f"{name:14s} {m.shape}: {100 * (1 - m.mean()):.0f}% of the pixels to fill")
shown = np.stack([np.where(m > 0.5, pictures[some(400)[0]], -1.0) for m in masks.values()])
plotting.show_images(shown, 3, title="the hole shown black", size=1.2); plt.show()
""")

md(r"""
**Where replacement goes wrong, where the answer is known.** Take two numbers $x = (x_1, x_2)$ from a
Gaussian with unit variances and correlation $\rho = 0.9$, and inpaint $x_2$ given $x_1 = c = 1.5$. The exact
answer is the conditional $x_2 \mid x_1 = c \sim \mathcal N(\rho c,\, 1-\rho^2) = \mathcal N(1.35, 0.19)$, and
the model's $\epsilon$ is known in closed form: $\epsilon^*(x_t) = \sqrt{1-\bar\alpha_t}\,(\bar\alpha_t\Sigma +
(1-\bar\alpha_t) I)^{-1} x_t$. 4,000 fills each, DDIM with $\eta = 1$:
""")

code(r"""
rho, c = 0.9, 1.5
abar = tf.constant(schedule.alphas_cumprod, tf.float32)
cov = tf.constant([[1.0, rho], [rho, 1.0]])
def gaussian_eps(x, t):                                                 # exact eps* of N(0, cov): (B, 2) -> (B, 2)
    a = tf.reshape(tf.gather(abar, t), [-1, 1, 1])
    return tf.sqrt(1 - a[:, 0]) * tf.linalg.solve(a * cov + (1 - a) * tf.eye(2), x[..., None])[..., 0]

known = np.tile(np.array([[c, 0.0]], np.float32), (4000, 1))           # x2's 0 is never read
keep_x1 = np.array([1.0, 0.0], np.float32)
fills = {}
print(f"exact:                               mean {rho * c:.3f}  variance {1 - rho ** 2:.3f}")
for label, kw in (("replacement, 50 steps", dict(steps=50)), ("replacement, 200 steps", dict(steps=200)),
                  ("RePaint, 50 steps x 5 (jump 5)", dict(steps=50, resample=5, jump=5)),
                  ("RePaint, 50 steps x 10 (jump 5)", dict(steps=50, resample=10, jump=5))):
    x2 = inpaint(gaussian_eps, known, keep_x1, schedule, eta=1.0, seed=0, clip_x0=None, **kw)[:, 1]
    fills[label] = x2
    print(f"{label:36s} mean {x2.mean():.3f}  variance {x2.var():.3f}   "
          f"({inpaint_evaluations(schedule, kw['steps'], kw.get('resample', 1), kw.get('jump', 5))} evaluations)")
""")

md(r"""
Replacement lands well short of the answer, and more steps do not help: the unknown half is made by the
model from an $x_t$ whose known half was pasted in *after* the model's step, so at every step the model has
been given a known half it did not produce, and the fill only learns of it through the next step's small
correction. Early on, when the fill's coarse value is decided, the known half is still mostly noise, so
that value is decided on too little. **RePaint's resampling** (Lugmayr et al. 2022) gives the two halves
time to agree: every `jump` steps, the walk goes back *up* by the forward process,

$$x_{s} = \sqrt{\bar\alpha_s/\bar\alpha_t}\;x_t + \sqrt{1-\bar\alpha_s/\bar\alpha_t}\;z, \qquad s > t,$$

(which keeps $x_s$ distributed as the forward process says; tested) and comes down again, `resample` times
in all, each visit with fresh noise. The walk is just another grid for the same loop, one that goes up now
and then (`editing.repaint_grid`; going up costs no network evaluation):
""")

code(r"""
walk, keys = repaint_grid(timestep_grid(schedule, 10), jump=3, resample=3)
print("plain grid:", timestep_grid(schedule, 10).tolist())
print("RePaint:   ", walk.tolist())
""")

md(r"""
On pictures, with the hole of each preset (one row per method, the same seed; the pictures' known part is
the original):
""")

code(r"""
show = pictures[some(3, 120, 400, 700)]                                      # (4, H, W, 3)
methods = {"replacement, 50 steps": dict(steps=50), "RePaint, 20 steps x 5": dict(steps=20, resample=5, jump=5)}
t0 = time.time()
rows, row_names = [], []
for mname, m in masks.items():
    rows.append(np.where(m > 0.5, show, -1.0)); row_names.append(f"{mname}: input")
    for label, kw in methods.items():
        rows.append(inpaint(eps_fn, show, m, schedule, eta=1.0, seed=3, **kw)); row_names.append(label)
plotting.show_labelled_grid(np.concatenate(rows), ncols=len(show), row_names=row_names, size=0.9,
                            title="inpainting: replacement against RePaint's resampling")
plt.show()
print(f"{time.time() - t0:.1f} s")
""")

md(r"""
Look for the **seam**, where a fill is a plausible picture on its own but not the continuation of what
surrounds it. Here: with the centre square lost, replacement gives the haloed boy a darker face than his ears
and neck, RePaint a matching one; with the left half lost, replacement leaves a dark smear beside the kissing
face, RePaint a whole face. Not every fill gains: RePaint gives the pilot a lighter face than his ears (centre
square), and the woman with the left half lost a second, faint face. Section 5 measures it over 512 pictures.
Try your own picture and mask:
""")

code(r"""
mask_pick = widgets.Dropdown(options=list(editing.MASK_PRESETS), value="centre-square", description="mask")
method = widgets.ToggleButtons(options=list(methods), value="RePaint, 20 steps x 5")
paint_out = widgets.Output()

def paint(*changed):
    x, m = pictures[picker.value][None], masks[mask_pick.value]
    filled = inpaint(eps_fn, np.repeat(x, 4, 0), m, schedule, eta=1.0, seed=5, **methods[method.value])
    with paint_out:
        paint_out.clear_output(wait=True)
        plotting.show_images(np.concatenate([np.where(m > 0.5, x, -1.0), filled]), 5,
                             title=f"{mask_pick.value}, {method.value}: 4 fills", size=1.2)
        plt.show()

for w in (mask_pick, method):
    w.observe(paint, names="value")
display(widgets.VBox([widgets.HBox([picker, mask_pick]), method, paint_out]))
paint()
""")

md(r"""
## 3. Walking between two pictures

**Between two noises.** Every start $x_T$ of a deterministic sampler (DDIM, $\eta = 0$) gives one picture, so a
path between two starts gives a path between two pictures. The straight line is the wrong path: two
Gaussian noises of $d$ pixels both have norm close to $\sqrt d$, and nearly orthogonal directions, so their
midpoint has norm about $\sqrt{d/2}$, a noise the network has never seen at $t = T$. **Spherical
interpolation** (slerp) keeps the norm, moving along the great circle between them at a constant angle:

$$z(a) = \frac{\sin((1-a)\theta)}{\sin\theta}\,z_0 + \frac{\sin(a\theta)}{\sin\theta}\,z_1, \qquad \cos\theta = \frac{\langle z_0, z_1\rangle}{|z_0|\,|z_1|}.$$
""")

code(r"""
z0, z1 = (tf.random.stateless_normal((size, size, 3), seed=(s, 0)).numpy() for s in (1, 2))
line = np.stack([(1 - a) * z0 + a * z1 for a in np.linspace(0, 1, 5)])
arc = slerp(z0, z1, np.linspace(0, 1, 5))                                 # (5, H, W, 3)
norm = lambda z: np.linalg.norm(z.reshape(len(z), -1), axis=1)
print(f"d = {z0.size} pixels, sqrt(d) = {np.sqrt(z0.size):.1f}, angle between the noises {np.degrees(np.arccos(np.sum(z0 * z1) / norm(np.stack([z0, z1])).prod())):.1f} degrees")
print("norm along the line: ", np.round(norm(line), 1))
print("norm along the slerp:", np.round(norm(arc), 1))
""")

code(r"""
t0 = time.time()
frames = interpolate_noise(eps_fn, (size, size, 3), schedule, seed_a=11, seed_b=12, frames=12, steps=50)  # (12, H, W, 3)
plotting.show_images(frames, 12, title="DDIM-50 from slerp(z_11, z_12, a), a = 0 ... 1", size=0.9); plt.show()
print(f"{time.time() - t0:.1f} s")
""")

md(r"""
The same frames as an animation (matplotlib's own, stored in the notebook as HTML and PNG frames: no GIF or
video encoder needed):
""")

code(r"""
fig, ax = plt.subplots(figsize=(1.6, 1.6), dpi=60)
ax.set_axis_off()
shown_frame = ax.imshow(plotting.to_uint8(frames[0]))
def frame(i):
    shown_frame.set_data(plotting.to_uint8(frames[i]))
    return [shown_frame]
movie = animation.FuncAnimation(fig, frame, frames=len(frames), interval=150, blit=True)
plt.close(fig)
HTML(movie.to_jshtml(default_mode="reflect"))                             # there and back
""")

md(r"""
**Between two real pictures** the starts are not known: they have to be found. DDIM with $\eta = 0$ is a
discretised ODE, and run *forwards* it maps a picture to a noise from which DDIM returns (nearly) to the
picture: **DDIM inversion** (Song et al. 2021, Sec. 4.3; `sampling.ddim_invert`, lesson 08). "Nearly": each
inverted step uses $\epsilon$ at the start of its interval where the decoding step uses it at the end, so the
round trip has an error that shrinks with the number of steps. It is measured, not assumed:
""")

code(r"""
few = pictures[np.linspace(0, len(pictures) - 1, 16).astype(int)]        # 16 pictures across the folder
for k in (10, 50):
    t0 = time.time()
    codes, back = round_trip(eps_fn, few, schedule, steps=k)
    err = np.abs(back - few).mean(axis=(1, 2, 3))
    print(f"{k:3d} steps: mean |picture - reconstruction| {err.mean():.4f} ({127.5 * err.mean():.1f} of 255 levels), "
          f"worst picture {err.max():.3f}; codes: mean {codes.mean():+.3f}, std {codes.std():.3f} ({time.time() - t0:.1f} s)")
plotting.show_labelled_grid(np.concatenate([few[:8], np.clip(back[:8], -1, 1)]), ncols=8,
                            row_names=["pictures", "round trip, 50"], size=0.9); plt.show()
""")

code(r"""
a, b = pictures[some(120, 700)]
t0 = time.time()
path = interpolate_real(eps_fn, a, b, schedule, frames=8, steps=50)      # (8, H, W, 3)
_, ends = round_trip(eps_fn, np.stack([a, b]), schedule, steps=50)
print(f"first frame - reconstruction of the first picture: max |difference| {np.abs(path[0] - ends[0]).max():.1e}; "
      f"last frame - reconstruction of the second: {np.abs(path[-1] - ends[1]).max():.1e}")
print(f"reconstruction errors (mean |.|): {np.abs(ends[0] - a).mean():.3f} and {np.abs(ends[1] - b).mean():.3f}   ({time.time() - t0:.1f} s)")
plotting.show_images(np.concatenate([a[None], np.clip(path, -1, 1), b[None]]), 10,
                     title="picture | 8 frames decoded from slerp between the two DDIM codes | picture", size=0.9)
plt.show()
""")

md(r"""
The walk starts and ends at the two pictures' *reconstructions*, not at the pictures: the frames are the
decodings of the two codes, so what the round trip changes the walk shows too.

## 4. From the command line

The same operations on a finished run, writing PNG files into its folder (each refuses a missing picture,
a strength outside $[0, 1]$ or a mask of another size with one `error:` line and exit code 2, before writing
anything):

```
make edit    RUN=runs/<run> IMAGE=my-sketch.png STRENGTH=0.5       # -> runs/<run>/edits/
make inpaint RUN=runs/<run> IMAGE=photo.png MASK=centre-square     # or MASK=hole.png (white = keep)
make generate RUN=runs/<run> N=20 CLASS=person-role GUIDANCE=2     # a conditional run (lesson 13)
```
""")

md(r"""
## 5. Measured

`notebooks/studies/editing/editing_study.py` (35 minutes on 2 CPU cores, shared with other work when it was run) runs each operation at the
protocol's size on the shipped reference network and stores `results.json`, which this cell reads.
""")

code(r"""
print(f"{study['network']}; n = {study['n']}, sampling seeds from {study['seed']}; detail KID x1e3 against half B")
fl = study["floor"]
print(f"floor (n real pictures of half A): detail KID {fl['kid_x1e3']:.2f} +- {fl['kid_se_x1e3']:.2f}, SWD {fl['swd_x1e3']:.1f}\n")
sd = study["sdedit"]
print(f"SDEdit of 4x4 sketches, DDIM {sd['steps']} steps at strength 1")
print("strength   " + "".join(f"{s:>8.1f}" for s in sd["strengths"]))
for name, rows in sd["runs"].items():
    print(f"{name:8s} |input - edit|  " + "".join(f"{r['distance']:8.3f}" for r in rows)[6:])
    print(f"{name:8s} detail KID      " + "".join(f"{r['kid_x1e3']:8.2f}" for r in rows)[6:])
    print(f"{name:8s}   +- se         " + "".join(f"{r['kid_se_x1e3']:8.2f}" for r in rows)[6:])
    print(f"{name:8s} SWD             " + "".join(f"{r['swd_x1e3']:8.1f}" for r in rows)[6:])
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
for name, rows in sd["runs"].items():
    s = [r["strength"] for r in rows]
    axes[0].plot(s, [r["distance"] for r in rows], "o-", label=name)
    axes[1].errorbar(s, [r["kid_x1e3"] for r in rows], [2 * r["kid_se_x1e3"] for r in rows], fmt="o-", capsize=3, label=name)
    axes[2].plot(s, [r["swd_x1e3"] for r in rows], "o-", label=name)
for ax, title in zip(axes, ("mean |input - edit| (pixels in [-1, 1])", "detail KID x1e3 (+- 2 se)", "SWD x1e3")):
    ax.set_title(title); ax.set_xlabel("strength")
for ax, key in zip(axes[1:], ("kid_x1e3", "swd_x1e3")):
    ax.axhline(fl[key], color="gray", ls=":", label="real pictures (floor)")
axes[1].legend(); plt.tight_layout(); plt.show()
""")

md(r"""
What the numbers say (512 sketches, the same ones at every strength; KID ×10³ in the detail features):

* **The distance to the sketch grows with the strength**, at every step and for both $\eta$: from 0.002 at
  $s = 0$ (the block averages rounded to 8 bits) through 0.165 ($\eta = 0$) and 0.191 ($\eta = 1$) at
  $s = 0.5$ to 0.447 at $s = 1$, where nothing of the sketch is left.
* **The detail KID falls toward the plain samples' score, after a first rise.** The sketches themselves
  score 13.2 ± 0.8. Two DDIM steps from $t = 100$ ($s = 0.1$) make it worse, 18.4 ± 0.9: the edits are
  still mosaics, with the first fine detail drawn on the blocks (between the $s = 0$ and $s = 0.2$ columns
  of section 1's grid). From
  there it falls at every step: 7.36 ± 0.54 at $s = 0.5$, 1.50 ± 0.31 at 0.9, and 0.47 ± 0.10 at $s = 1$,
  the plain DDIM-20 samples (real pictures against real ones: −0.02 ± 0.07).
* **$\eta = 1$ gets there sooner**: 3.72 ± 0.39 at $s = 0.5$ against $\eta = 0$'s 7.36 ± 0.54, at a distance of
  0.191 against 0.165. Fresh noise at every step lets the edit move further from its input.
* **SWD has its minimum in the middle**: 21.5 at $s = 0.7$ with $\eta = 1$ (23.5 at 0.8 with $\eta = 0$), close to
  the real pictures' 18.4, then it climbs back to 57-58 at $s = 1$. SWD compares the colours and contrasts of
  small patches at each scale; the sketches carry the real pictures' own colours, which the edits keep,
  while the plain DDIM-20 samples have the model's. So an edit of a sketch is, by this measure, nearer
  to the real pictures than the model's own samples are.

A strength of 0.5-0.7 is where a sketch becomes a portrait of its colours (the grid above). "The stronger
the edit, the more it scores like the model's own samples" holds from $s = 0.1$ on, not at the first step.
""")

code(r"""
ip = study["inpainting"]
print(f"inpainting, mask {ip['mask']}: the hole's SWD = SWD x1e3 of the 16x16 centre crops against half B's crops "
      f"(real pictures of half A: {ip['hole_floor_swd_x1e3']:.1f}); seam = mean |jump| across the hole's edge "
      f"(real pictures: {ip['seam_real']:.3f})\n")
print(f"{'':26s} {'evaluations':>11s} {'hole SWD':>9s} {'seam':>6s} {'detail KID x1e3':>16s} {'SWD':>6s}  known pixels exact")
for name, r in ip["contenders"].items():
    print(f"{name:26s} {r['network_evaluations']:11d} {r['hole_swd_x1e3']:9.1f} {r['seam']:6.3f} "
          f"{r['kid_x1e3']:9.2f} +- {r['kid_se_x1e3']:4.2f} {r['swd_x1e3']:6.1f}  {r['known_pixels_exact'] if 'unconditional' not in name else '-'}")
print()
for name, p in ip["paired"].items():
    verdict = "RePaint better" if p["b_wins"] else ("RePaint worse" if p["a_wins"] else "no difference beyond 2 se")
    print(f"{name}: detail KID {p['diff']:+.2f} +- {p['se']:.2f} (paired): {verdict}")
""")

md(r"""
What the numbers say (the centre square, a quarter of the picture, lost from 512 pictures of half A):

* **The known pixels come back exactly** in all 3 × 512 fills (the last column).
* **The filled hole is as like the real pictures' centres as the model's own samples are, and more**: its
  SWD is 43-46 against the unconditional samples' 55.2 (the real centres of half A: 29.9), well within the
  goal set before measuring (at most 1.5 × the unconditional samples' SWD). The surrounding pixels tell the model what belongs
  in the middle.
* **The seam is small on these pictures, and resampling makes it smaller**: the mean jump across the hole's
  edge is 0.206 in real pictures, 0.237 and 0.234 after replacement on 50 and 80 steps, 0.224 after RePaint
  at the same 80 evaluations: the excess over the real pictures falls from 0.028 (replacement, 80 steps) to
  0.018. This is a mean without a standard error; by eye (section 2's grid) the difference is in a
  minority of pictures, where replacement fills a face of another skin tone or a second outline.
* **By the protocol's detail KID the three fills are the same**: RePaint against replacement at equal
  evaluations +0.004 ± 0.016 (paired), no difference beyond 2 standard errors. The whole picture is scored,
  and three quarters of it are the real picture in every fill (all three are better than the unconditional
  samples, −0.35 ± 0.16 for RePaint, for that reason).

So on 32 × 32 portraits plain replacement is already good; RePaint's advantage, which the 2-D Gaussian in
section 2 shows in full (mean 1.23 against 0.92, exact 1.35), is a small one here, visible in the seam.
""")

code(r"""
rt = study["round_trip"]
print(f"DDIM round trip (invert, then decode on the same grid), {rt['pictures']} pictures of half A:")
for r in rt["rows"]:
    print(f"  {r['steps']:3d} steps: mean |error| {r['mae']:.4f} = {r['mae_levels']:4.1f} of 255 levels; "
          f"median picture {r['median_picture_mae']:.4f}, worst {r['worst_picture_mae']:.3f}")
""")

md(r"""
**The round trip needs steps.** With 10 steps the decoded picture is on average 0.286 away from the
original (36 of 255 levels): a different person, often (the codes decode to pictures of the model's own).
With 50 steps the error is 0.034 (4.3 levels; the worst of 64 pictures 0.19), with 100 steps 0.015 (1.9
levels, worst 0.045). DDIM's inversion assumes the network's $\epsilon$ changes little over one step; with 10
steps of 100 timesteps each it changes a lot. Interpolating between real pictures therefore uses 50 steps
or more, and what section 3's walk starts from is the reconstruction, 0.03 away from the picture.
""")

md(r"""
## Checks
""")

code(r"""
# NBVAL_CHECK_OUTPUT
x = pictures[:4]
assert np.array_equal(sdedit(eps_fn, x, schedule, 0.0), x)                                  # strength 0: the picture
assert np.array_equal(sdedit(eps_fn, x, schedule, 1.0, steps=5, seed=9),                     # strength 1: the sample
                      ddim_sample(eps_fn, x.shape, schedule, num_steps=5, eta=0.0, seed=9, clip_x0=1.0))
m = masks["strokes"]
filled = inpaint(eps_fn, x, m, schedule, steps=5, seed=9, resample=2, jump=2)
assert np.array_equal(filled[:, m[..., 0] > 0.5], x[:, m[..., 0] > 0.5])                     # known pixels exact
path = slerp(x[0], x[1], [0.0, 0.5, 1.0])
assert np.array_equal(path[0], x[0]) and np.array_equal(path[-1], x[1])                       # slerp's ends
miss = {k: abs(v.mean() - rho * c) for k, v in fills.items()}
assert miss["RePaint, 50 steps x 5 (jump 5)"] < 0.5 * miss["replacement, 50 steps"]            # resampling: closer
print("all checks passed")
""")

md(r"""
**Where this leads:** every edit here runs on your own run: section 0's `RUN`, or `make edit` and
`make inpaint` from the command line. What was measured here is the shipped portraits' network; on your
folder, look at the grids first, and measure with `editing_study.py` as a model for the script.
""")

write("16_editing.ipynb")
