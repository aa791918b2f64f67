"""Writes notebooks/15_flow_matching.ipynb (cells only, no outputs): `make notebooks` runs and stores it.

Kept beside the study whose results the lesson reads, so that the lesson's text and code can be edited
as plain Python strings and the notebook rebuilt:  .venv/bin/python notebooks/studies/flow/build_lesson15.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lesson_cells import code, md, write  # noqa: E402

md(r"""
# Lesson 15 — Flow matching: a straight path from noise to pictures

> **Runs in about 1 minute** in the `cpu` profile (to be measured by `make notebooks`).

Everything so far followed DDPM: a noise schedule $\bar\alpha_t$ on 1,000 integer timesteps, a network that
predicts $\epsilon$ or $v$, and samplers that walk the schedule back (lessons 01-08). Most image generators
trained since 2023 (Stable Diffusion 3, Flux) use **flow matching** instead (Lipman et al. 2023; Liu et al.
2023, "rectified flow"): pictures and noise are joined by a *straight line*

$$x_t = (1-t)\,x_0 + t\,\epsilon,\qquad t \in [0, 1],$$

the network learns the line's **velocity** $u = dx_t/dt = \epsilon - x_0$, and sampling integrates the ODE
$dx/dt = u_\theta(x, t)$ from pure noise at $t = 1$ down to $t = 0$. This lesson builds it from what you already
have — lesson 02's path, lesson 12's velocity, lesson 08's ODE samplers and lesson 03's exact check — as an
*objective* of the same code: `ddpm_lessons/flow.py` holds `FlowMatching`, which has the interface of
lesson 07's `Diffusion` (`noised`, `predict`), so the same `Trainer` trains it and the same compiled
sampling loop samples it. Then it measures, at equal training compute and by lesson 11's protocol, what
flow matching changes on the course's portraits and what it does not.
""")

code(r"""
from ddpm_lessons.profiles import get_profile       # import ddpm_lessons first: it quiets TF's start-up logs
from ddpm_lessons import plotting, toy
from ddpm_lessons.data import default_dataset_path, make_dataset, read_image_folder, to_unit_range
from ddpm_lessons.diffusion import Diffusion
from ddpm_lessons.flow import FlowMatching, flow_sample, heun_loop_step, velocity_fn
from ddpm_lessons.sampling import generate
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.training import Trainer, TrainConfig
from ddpm_lessons.unet import build_unet

import inspect, json, time
from pathlib import Path
import keras
import numpy as np
import matplotlib.pyplot as plt
import tensorflow as tf

profile = get_profile()
schedule = NoiseSchedule.from_kind(profile.schedule, profile.timesteps)    # lesson 01's cosine schedule
flow = FlowMatching()                                                       # the straight path
print(f"profile: {profile.name}; the DDPM recipe of this profile: {profile.schedule} schedule, T = {schedule.T}, "
      f"prediction = {profile.prediction!r}")
""")

md(r"""
## 1. The straight path is a noise schedule

Lesson 02 wrote every noising as $x_t = a_t x_0 + s_t\,\epsilon$. The straight path is the same form with
$a_t = 1 - t$ and $s_t = t$, in continuous time. Two differences from the cosine schedule:

* it is **not variance preserving**: $a_t^2 + s_t^2 = (1-t)^2 + t^2$ dips to $1/2$ at $t = 1/2$ (for unit-variance
  pictures, $x_t$ is "smaller" in the middle of the path);
* its **signal-to-noise ratio** $\mathrm{SNR}_t = a_t^2/s_t^2 = ((1-t)/t)^2$ runs from $\infty$ to exactly 0: at
  $t = 1$ there is no picture left at all, where the cosine schedule stops at $\bar\alpha_{999} = 2.4\cdot10^{-9}$.

What matters to a network is the SNR it sees, so the two schedules are compared on $\log \mathrm{SNR}$ below
(right): uniform $t$ on the straight path spends more of its steps at moderate SNR than uniform timesteps on
the cosine schedule do.
""")

code(r"""
rng = np.random.default_rng(0)
x0 = rng.uniform(-1, 1, (4, 8, 8, 3))                            # (4, 8, 8, 3) "pictures", float64
eps = rng.standard_normal((4, 8, 8, 3))
x_start, _, _ = flow.noised(tf.constant(x0), tf.zeros([4], tf.float64), tf.constant(eps))
x_end, _, _ = flow.noised(tf.constant(x0), tf.ones([4], tf.float64), tf.constant(eps))
print("x_t at t = 0 is x0:", np.array_equal(x_start.numpy(), x0), "  at t = 1 is eps:", np.array_equal(x_end.numpy(), eps))

t_cont = np.linspace(0, 1, 1001)[1:-1]                            # (999,) inside (0, 1)
a_cos, s_cos = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod      # (T,) each
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
axes[0].plot(np.arange(schedule.T) / schedule.T, a_cos, label=r"cosine $a_t=\sqrt{\bar\alpha_t}$")
axes[0].plot(np.arange(schedule.T) / schedule.T, s_cos, label=r"cosine $s_t$")
axes[0].plot(t_cont, 1 - t_cont, "--", label="straight $a_t = 1-t$")
axes[0].plot(t_cont, t_cont, "--", label="straight $s_t = t$")
axes[0].set(xlabel="t (cosine: timestep / T)", title="signal and noise coefficients"); axes[0].legend(fontsize=7)
axes[1].plot(np.arange(schedule.T) / schedule.T, np.log(schedule.snr()), label="cosine schedule")
axes[1].plot(t_cont, 2 * np.log((1 - t_cont) / t_cont), "--", label="straight path")
axes[1].set(xlabel="t", ylabel="log SNR", title="signal-to-noise ratio"); axes[1].legend(fontsize=8)
plt.tight_layout(); plt.show()

images, _ = read_image_folder(default_dataset_path(), profile.image_size)
picture = to_unit_range(images[:1])                                # (1, H, W, 3) in [-1, 1]
z = np.random.default_rng(1).standard_normal(picture.shape).astype("float32")
ts = [0.0, 0.25, 0.5, 0.75, 1.0]
row = [flow.noised(tf.constant(picture), tf.constant([t], tf.float32), tf.constant(z))[0][0].numpy() for t in ts]
plotting.show_images(np.clip(np.stack(row), -1, 1), ncols=len(ts), size=1.6,
                     title="the straight path at t = " + ", ".join(f"{t:g}" for t in ts))
plt.show()
""")

md(r"""
## 2. The velocity, and why it is lesson 12's $v$ in other units

The target is the path's derivative, $u = dx_t/dt = \epsilon - x_0$, and from a predicted $\hat u$ at $(x_t, t)$ both
unknowns follow without a division (as for $v$ in lesson 12):

$$\hat x_0 = x_t - t\,\hat u,\qquad \hat\epsilon = x_t + (1-t)\,\hat u .$$

**The link to $v$.** Divide $x_t$ by $r_t = \sqrt{(1-t)^2 + t^2}$: the result $x_t/r_t = \cos\phi\,x_0 + \sin\phi\,\epsilon$
with $\cos\phi = (1-t)/r_t$, $\sin\phi = t/r_t$ is a point of a variance-preserving path, lesson 12's circle, whose
velocity is $v = \cos\phi\,\epsilon - \sin\phi\,x_0$. Writing $\epsilon$ and $x_0$ through $(x_t/r_t, v)$ (lesson 12's
rotation) gives

$$u = (\cos\phi + \sin\phi)\,v + (\sin\phi - \cos\phi)\,x_t / r_t .$$

So a flow network and a v-network carry the same information: each output is a known linear function of
the other and of the input. What differs is the **weight** of each noise level in the loss:
$\|u - \hat u\|^2 = (\cos\phi + \sin\phi)^2\,\|v - \hat v\|^2$, and in picture units
$\|u - \hat u\|^2 = \|x_0 - \hat x_0\|^2 / t^2 = (\mathrm{SNR}_t + 1)\,\|x_0 - \hat x_0\|^2 / r_t^2$, lesson 12's $v$
weight divided by $r_t^2 \in [\tfrac12, 1]$ — and **which noise levels** training draws (section 1's curves).
Checked numerically: the target against finite differences of the path, the $u \leftrightarrow v$ identity, and
the weight:
""")

code(r"""
t = tf.constant([0.1, 0.35, 0.6, 0.9], tf.float64)
h = 1e-4
x_t, u, _ = flow.noised(tf.constant(x0), t, tf.constant(eps))
fd = (flow.noised(tf.constant(x0), t + h, tf.constant(eps))[0] - flow.noised(tf.constant(x0), t - h, tf.constant(eps))[0]) / (2 * h)
print(f"max |u - finite difference of the path| = {float(tf.reduce_max(tf.abs(u - fd))):.1e}")

tb = t.numpy()[:, None, None, None]
r = np.sqrt((1 - tb) ** 2 + tb ** 2)
cos, sin = (1 - tb) / r, tb / r
v = cos * eps - sin * x0                                           # lesson 12's velocity on the circle
u_from_v = (cos + sin) * v + (sin - cos) * x_t.numpy() / r
print(f"max |u - ((cos + sin) v + (sin - cos) x_t / r)| = {np.abs(u.numpy() - u_from_v).max():.1e}")

u_hat = u.numpy() + 0.01 * rng.standard_normal(u.shape)            # a slightly wrong prediction
eps_hat, x0_hat = flow.predict(tf.constant(u_hat), x_t, t)
lhs = np.sum((u.numpy() - u_hat) ** 2, axis=(1, 2, 3))
rhs = np.sum((x0 - x0_hat.numpy()) ** 2, axis=(1, 2, 3)) / t.numpy() ** 2
print("||u - u_hat||^2 / (||x0 - x0_hat||^2 / t^2) =", np.round(lhs / rhs, 12))
""")

md(r"""
## 3. Sampling: the same ODE solvers, and Euler *is* DDIM

The samples come from the ODE $dx/dt = u_\theta(x, t)$, run from $x = \epsilon$ at $t = 1$ to $t = 0$. Its simplest
solver, **Euler**, steps $x_s = x_t + (s - t)\,\hat u$. Lesson 08's DDIM step with $\eta = 0$ is
$x_s = a_s\,\hat x_0 + s_s\,\hat\epsilon$; with the straight path's $a_s = 1-s$, $s_s = s$ and section 2's $\hat x_0$, $\hat\epsilon$:

$$x_s = (1-s)(x_t - t\hat u) + s\,(x_t + (1-t)\hat u) = x_t + (s - t)\,\hat u .$$

The two are one step, so `flow_sample(..., sampler="euler")` *is* `sampling.ddim_loop_step(0.0)` in the compiled
loop of lesson 08, given the objective's $a_t$, $s_t$ (`sampling._Context.alpha_sigma`); nothing is written twice.
**Heun** (Karras et al. 2022) adds a corrector: an Euler step, then the average of the velocities at both ends,
one more network evaluation per step (the last step, to $t = 0$, is Euler alone: $2K - 1$ evaluations for $K$ steps):
""")

code(r"""
print(inspect.getsource(heun_loop_step))
lin = velocity_fn(lambda x, t: 0.5 * x - 0.2)                      # a velocity field we can step by hand
z3 = np.random.default_rng(3).standard_normal((5, 3))
two = flow_sample(lin, z3.shape, num_steps=2, sampler="euler", x_T=z3, dtype=tf.float64)   # t: 1 -> 0.5 -> 0
half = z3 - 0.5 * (0.5 * z3 - 0.2)
print("two Euler steps by hand = the sampler's:", np.allclose(two, half - 0.5 * (0.5 * half - 0.2), atol=1e-12))
""")

md(r"""
## 4. The exact check of lesson 03, redone for flow matching

For lesson 03's Gaussian mixture $p_0 = \sum_k w_k\,\mathcal N(\mu_k, \Sigma_k)$ the best velocity is known in
closed form. Within component $k$, $(x_0, \epsilon, x_t)$ are jointly Gaussian; $x_t$ has mean $(1-t)\mu_k$ and covariance
$C_k = (1-t)^2\Sigma_k + t^2 I$, and with $d = x - (1-t)\mu_k$:

$$E[x_0 \mid x, k] = \mu_k + (1-t)\,\Sigma_k C_k^{-1} d,\quad E[\epsilon \mid x, k] = t\,C_k^{-1} d,\quad
u^*(x, t) = \sum_k r_k(x)\,\big[(tI - (1-t)\Sigma_k)\,C_k^{-1} d - \mu_k\big],$$

with $r_k(x)$ the responsibility of component $k$ for $x$ under $p_t$ (`GaussianMixture.velocity_star`; finite at both
ends, unlike $\epsilon^*$ which needs $\sqrt{1-\bar\alpha_t}$). First against a Monte Carlo average of
$\epsilon - x_0$ over pairs whose $x_t$ lands near a point:
""")

code(r"""
mix = toy.default_mixture()
probe, t_mc = np.array([[0.3, -0.2]]), 0.5
x0_pool = mix.sample(3_000_000, seed=1).astype(np.float64)                  # (M, 2)
eps_pool = np.random.default_rng(2).standard_normal(x0_pool.shape)
x_t_pool = (1 - t_mc) * x0_pool + t_mc * eps_pool
near = np.linalg.norm(x_t_pool - probe, axis=1) < 0.04
mc = (eps_pool - x0_pool)[near].mean(0)
mc_se = (eps_pool - x0_pool)[near].std(0) / np.sqrt(near.sum())
u_exact = mix.velocity_star(tf.constant(probe), t_mc).numpy()[0]
mc_z = np.abs(mc - u_exact) / mc_se
print(f"at x = {probe[0]}, t = {t_mc}: u* = {np.round(u_exact, 3)}, Monte Carlo ({near.sum()} pairs) = "
      f"{np.round(mc, 3)} +- {np.round(mc_se, 3)}  (|z| = {np.round(mc_z, 1)})")
""")

md(r"""
Then a small MLP (lesson 03's `ToyMLP`, the same width and steps in every profile) trained on the velocity
with `train_toy(..., objective=FlowMatching())`, compared with $u^*$ **where the data has mass**: at points
$x_t$ of the path itself, for several $t$. The number printed is the relative error
$\sqrt{E\|\hat u - u^*\|^2 / E\|u^*\|^2}$ over 20,000 such points; then both fields are sampled with Heun (50 steps)
and compared with fresh draws of the mixture by lesson 03's sliced $W_2$ against its floor.
""")

code(r"""
TOY_STEPS, TOY_WIDTH = 2000, 128
data = mix.sample(20_000, seed=1)                                               # (20000, 2)
keras.utils.set_random_seed(0)
mlp = toy.build_toy_mlp(width=TOY_WIDTH, seed=0)
start = time.time()
toy_loss = toy.train_toy(mlp, data, schedule, steps=TOY_STEPS, batch=256, lr=2e-3, seed=0, objective=flow)
print(f"trained {TOY_STEPS} steps in {time.time() - start:.0f} s; last 200 losses {toy_loss[-200:].mean():.3f}")
u_mlp = lambda x, t: mlp(tf.cast(x, tf.float32), FlowMatching.unet_time(tf.broadcast_to(t, [tf.shape(x)[0]])))
x0_probe = mix.sample(20_000, seed=21).astype(np.float64)
rel_err = {}
for t_ in (0.1, 0.3, 0.5, 0.7, 0.9):
    e = np.random.default_rng(int(100 * t_)).standard_normal(x0_probe.shape)
    x_t_probe = tf.constant((1 - t_) * x0_probe + t_ * e)                      # (20000, 2) points on the path
    exact = mix.velocity_star(x_t_probe, t_).numpy()
    learned = u_mlp(x_t_probe, tf.constant(t_, tf.float32)).numpy()
    rel_err[t_] = float(np.sqrt(np.mean(np.sum((learned - exact) ** 2, 1)) / np.mean(np.sum(exact ** 2, 1))))
print("relative error of the learned velocity on the path:", {k: round(v, 3) for k, v in rel_err.items()})

x_ref = mix.sample(2000, seed=100)
x_star = flow_sample(velocity_fn(lambda x, t: mix.velocity_star(x, t)), (2000, 2), num_steps=50, sampler="heun", seed=0)
x_learned = flow_sample(velocity_fn(u_mlp), (2000, 2), num_steps=50, sampler="heun", seed=0)    # the same noise
floor_sw = toy.distance_floor(lambda s: mix.sample(2000, seed=s), x_ref, repeats=8)["sw2"]
sw = {name: toy.sliced_wasserstein_w2(x, x_ref) for name, x in (("exact u*", x_star), ("learned", x_learned))}
print(f"sliced W2 to fresh draws: exact u* {sw['exact u*']:.3f}, learned {sw['learned']:.3f}; "
      f"floor {floor_sw.mean():.3f} +- {floor_sw.std():.3f}")
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharex=True, sharey=True)
for ax, x, title in [(axes[0], x_ref, "fresh draws"), (axes[1], x_star, "Heun-50, exact u*"),
                     (axes[2], x_learned, "Heun-50, learned u")]:
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4); ax.set_title(title); ax.set_aspect("equal")
axes[0].set_xlim(-2.5, 2.5); axes[0].set_ylim(-2.5, 2.5)
plt.show()
""")

md(r"""
## 5. How fast the error falls: Euler is first order, Heun second

With the exact field there is no training error left, only the solver's. Theory says Euler's error at $t = 0$
falls like $1/K$ with $K$ steps and Heun's like $1/K^2$. Measured against Heun with 1,000 steps from the same
noise, as the median over 1,000 points (a few points near the boundary between two modes, where $u^*$ is steep
at small $t$, converge late and would dominate a mean):
""")

code(r"""
exact_fn = velocity_fn(lambda x, t: mix.velocity_star(x, t))
z2 = np.random.default_rng(1).standard_normal((1000, 2))
x_best = flow_sample(exact_fn, z2.shape, num_steps=1000, sampler="heun", x_T=z2, dtype=tf.float64)
step_counts = np.array([8, 16, 32, 64])
order_err, order_slope = {}, {}
for sampler in ("euler", "heun"):
    order_err[sampler] = [float(np.median(np.linalg.norm(flow_sample(exact_fn, z2.shape, num_steps=int(k), sampler=sampler,
                                  x_T=z2, dtype=tf.float64) - x_best, axis=1))) for k in step_counts]
    order_slope[sampler] = float(np.polyfit(np.log(step_counts), np.log(order_err[sampler]), 1)[0])
    print(f"{sampler:5s}: median error {['%.1e' % e for e in order_err[sampler]]} at {step_counts.tolist()} steps; "
          f"slope {order_slope[sampler]:+.2f}")
fig, ax = plt.subplots(figsize=(5, 3.4))
for sampler in order_err:
    nfe = step_counts if sampler == "euler" else 2 * step_counts - 1
    ax.loglog(nfe, order_err[sampler], "o-", label=f"{sampler} (slope {order_slope[sampler]:+.2f} per step)")
ax.set(xlabel="network evaluations", ylabel="median error at t = 0", title="exact field: solver error")
ax.legend(fontsize=8); ax.grid(alpha=0.3, which="both")
plt.show()
""")

md(r"""
## 6. Reflow: straighten the paths, and one step is enough

Why do few steps fail? Training joins *independent* pairs $(x_0, \epsilon)$ by straight lines, and many of those
lines pass through one point $x_t$, heading for different pictures; the network learns their average,
$u^* = E[\epsilon - x_0 \mid x_t]$, and the ODE's paths bend (section 4's figure). At $t = 1$ the average is
$u^*(z, 1) = z - E[x_0]$, so **one** Euler step from any noise $z$ lands on the data's mean. Liu et al.'s
remedy, **reflow**: run the trained ODE from noise $z$ to its picture $x_0 = \mathrm{ODE}(z)$, and train again
on these *couples*. ODE paths never cross, so no other couple's line passes through the line from $z$ to
$\mathrm{ODE}(z)$: the new field's paths are straight, and a single step lands where the ODE goes.

On the mixture, with the exact field as a perfect first round: 20,000 couples from Heun-50, and section 4's
ToyMLP with its steps trained twice: on the couples, and on the same points with fresh noise (the first
round's independent pairs) — so that what changes is only the coupling:
""")

code(r"""
z_pairs = np.random.default_rng(5).standard_normal((20_000, 2))                         # (20000, 2) the noise z
x_pairs = flow_sample(exact_fn, z_pairs.shape, num_steps=50, sampler="heun", x_T=z_pairs, dtype=tf.float64)  # ODE(z)
fields = {"exact u* (first round)": exact_fn}
for name, noise in (("same points, fresh noise", None), ("reflow (couples)", z_pairs)):
    m = toy.build_toy_mlp(width=TOY_WIDTH, seed=0)
    loss = toy.train_toy(m, x_pairs, schedule, steps=TOY_STEPS, batch=256, lr=2e-3, seed=0, objective=flow, noise=noise)
    fields[name] = velocity_fn(lambda x, t, m=m: m(tf.cast(x, tf.float32),
                                                   FlowMatching.unet_time(tf.broadcast_to(t, [tf.shape(x)[0]]))))
    print(f"{name:26s} last 200 losses {loss[-200:].mean():.4f}")
z3 = np.random.default_rng(6).standard_normal((2000, 2))                               # fresh noise
ode_end = flow_sample(exact_fn, z3.shape, num_steps=50, sampler="heun", x_T=z3, dtype=tf.float64)
reflow_dist, reflow_sw, one_step = {}, {}, {}
print(f"\n{'Euler steps':>11s}  " + "  ".join(f"{name:>26s}" for name in fields))
for k in (1, 2, 4):
    for name, fn in fields.items():
        x = flow_sample(fn, z3.shape, num_steps=k, sampler="euler", x_T=z3,
                        dtype=tf.float64 if fn is exact_fn else tf.float32)
        reflow_dist[name, k] = float(np.median(np.linalg.norm(x - ode_end, axis=1)))   # from where the ODE goes
        reflow_sw[name, k] = toy.sliced_wasserstein_w2(x, x_ref)                        # from the mixture
        one_step.setdefault(name, x)
    print(f"{k:11d}  " + "  ".join(f"{reflow_dist[name, k]:8.3f} away, SW {reflow_sw[name, k]:5.3f}" for name in fields))
print(f"(SW between two draws of the mixture itself: {floor_sw.mean():.3f} +- {floor_sw.std():.3f})")
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharex=True, sharey=True)
for ax, (name, x) in zip(axes, one_step.items()):
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4); ax.set_title(f"one Euler step: {name}", fontsize=9)
    ax.set_aspect("equal")
axes[0].set_xlim(-2.5, 2.5); axes[0].set_ylim(-2.5, 2.5)
plt.show()
""")

md(r"""
One step of the exact field puts every point on the mean (the left panel's single dot), and the network trained
on the same points with fresh noise lands in a small smear around it. Trained on the couples, one step lands
about a twentieth of a unit from where the 50-step ODE goes, and by SW its points are about as close to the
mixture as a second draw of the mixture itself (a few still fall between the modes). The loss says the same thing from the other side: with fresh noise it stays near 1 (many velocities
through each $x_t$, only their average can be learned); on the couples it falls almost to zero (one velocity
per point: nothing left to average).

What it costs: one ODE solve per couple (here 99 evaluations each) and a second training; and the second round
learns the *first model's* pictures, so it can only be as good as the first round. Section 8 measures what it
buys on the portraits.
""")

md(r"""
## 7. The same Trainer, another objective

`TrainConfig(prediction="flow")` is all it takes: the `Trainer` asks its objective (`diffusion.objective`, here a
`FlowMatching`) for the training times ($t \sim U(0, 1)$, or SD3's logit-normal with `time_sampling="logit-normal"`),
the noised input and the target; the U-Net's time embedding is given $999\,t$ (`FlowMatching.unet_time`), the range
DDPM's timesteps span. EMA, bfloat16, checkpoints and resume are the Trainer's, unchanged. A short run on the
portraits (this profile's `lesson_train_steps`), then samples with Euler:
""")

code(r"""
flow_profile = profile.replace(prediction="flow", sampler="euler", sample_steps=10)
keras.utils.set_random_seed(0)
net = build_unet(flow_profile)
trainer = Trainer(net, schedule, TrainConfig.from_profile(flow_profile))
steps = flow_profile.lesson_train_steps
start = time.time()
trainer.fit(make_dataset(images, flow_profile.batch_size, seed=0), steps, progress=False)
print(f"{steps} steps of flow matching in {time.time() - start:.0f} s; objective: {type(trainer.diffusion).__name__}; "
      f"loss {trainer.history['loss'][0]:.3f} -> {np.mean(trainer.history['loss'][-5:]):.3f}")
demo = generate(trainer.ema_model, schedule, 16, sampler="euler", steps=10, seed=0, prediction="flow")  # (16, H, W, 3)
plotting.show_images(demo, ncols=8, title=f"flow matching after {steps} steps, Euler-10")
plt.show()
""")

md(r"""
## 8. Flow matching against DDPM's $v$, at equal compute

`notebooks/studies/flow/compare_flow.py` trained the `cpu` recipe three times on the shipped portraits, identical
but for the objective (the same seed, data order, 1,800 steps of batch 32, learning rate, EMA and precision):
**v** (the course's recipe), **flow** ($t \sim U(0,1)$) and **flow-ln** (SD3's logit-normal $t$, which spends
more steps in the middle of the path). A fourth run, **reflow**, is section 6 on the portraits: 8,192 couples
(noise, picture) drawn from flow's network (Heun, 19 evaluations each), then 1,800 more steps from flow's weights
on those couples — twice flow's training, plus the drawing. Each was sampled at 1, 2, 4, 8, 10 and 20 network
evaluations with each of its samplers — v: DDIM $\eta = 0$ and DPM-Solver++(2M), Karras spacing from
$\sigma = 80$ (lesson 08's fixes); the flows: Euler, Heun with as many steps as fit, and DPM-Solver++(2M) on the
straight path (`sampling.dpmpp2m_weights` with $a_t = 1 - t$, $s_t = t$; up to 3 steps it is Euler) — and scored
by lesson 11's protocol: 512 samples from fresh seeds, the same real subsets for every contender, detail KID ×10³
± its standard error, SWD ×10³ and the shapes KID ×10³; a difference counts only beyond 2 paired standard errors.
Each row is a method's best sampler at that budget.
""")

code(r"""
study = json.loads(Path("studies/flow/results.json").read_text())
runs = study["runs"]


def cell(name, b):
    label = runs[name]["best"][str(b)]
    r_ = runs[name]["samplers"][label]
    return f"{label:11s} {1e3 * r_['kid']:6.2f} +- {1e3 * r_['kid_se']:4.2f} {r_['swd']:6.1f} {1e3 * r_['shapes_kid']:6.1f}"


print(f"n = {study['num_samples']} samples per row, seeds from {study['seed']}; KID x1e3; each method's best sampler per budget")
print(f"{'evals':>5s}  {'v: sampler':11s} {'detail KID':>14s} {'SWD':>6s} {'shapes':>6s}   {'flow: sampler':11s} "
      f"{'detail KID':>14s} {'SWD':>6s} {'shapes':>6s}   {'flow - v (paired)':>18s}")
for b in study["budgets"]:
    d = study["flow_vs_v"][str(b)]
    mark = " flow wins" if d["flow_wins"] else " v wins" if d["v_wins"] else ""
    print(f"{b:5d}  {cell('v', b)}   {cell('flow', b)}   {1e3 * d['diff']:+7.2f} +- {1e3 * d['se']:4.2f}{mark}")
f = study["floor"]
print(f"real pictures (floor): detail KID {1e3 * f['kid']:.2f} +- {1e3 * f['kid_se']:.2f}, SWD {f['swd']:.1f}, "
      f"shapes {1e3 * f['shapes_kid']:.1f}")
reach = study["reaches_other_at_10"]
print(f"first budget at which flow is not worse than v's 10-evaluation detail score: {reach['flow']}; "
      f"v against flow's: {reach['v']}")


def paired(d, key=""):
    mark = "*" if d[f"{key}wins"] or d[f"{key}loses"] else " "
    return f"{1e3 * d[f'{key}diff']:+7.2f} +- {1e3 * d[f'{key}se']:4.2f}{mark}"


for name in ("flow-ln", "reflow"):
    print(f"\n{name}: paired differences x1e3, negative = {name} better, * = beyond 2 paired standard errors")
    print(f"{'evals':>5s}  {'sampler':11s} {'detail KID':>14s} {'SWD':>6s} {'shapes':>6s}   {'detail - flow':>16s}  "
          f"{'detail - v':>16s}  {'shapes - v':>16s}")
    for b in study["budgets"]:
        vf, vv = study["vs_flow"][name][str(b)], study["vs_v"][name][str(b)]
        print(f"{b:5d}  {cell(name, b)}   {paired(vf)}  {paired(vv)}  {paired(vv, 'shapes_')}")
    print(f"first budget at which {name} is not worse than v's 10-evaluation detail score: "
          f"{reach[name] or 'none up to 20'}")
minutes = {name: runs[name]["train_seconds"] / 60 for name in runs}
print(f"\ntraining (1,800 steps each, the same machine): " + ", ".join(f"{n} {m:.1f} min" for n, m in minutes.items())
      + f"; reflow's couples took {runs['reflow']['pair_seconds'] / 60:.1f} min to draw")
names = ("v", "flow", "flow-ln", "reflow")
fig, axes = plt.subplots(3, 1, figsize=(14, 6.6))
for ax, b in zip(axes, (1, 2, 10)):
    grid = np.concatenate([np.pad(plt.imread(f"studies/flow/{name}_{runs[name]['best'][str(b)]}.png")[:, :, :3],
                                  ((0, 0), (0, 6), (0, 0)), constant_values=1.0) for name in names], 1)
    ax.imshow(grid); ax.axis("off")
    ax.set_title(f"{b} evaluation{'s' * (b > 1)}: " + ", ".join(f"{n} ({runs[n]['best'][str(b)]})" for n in names)
                 + " (left to right; 16 each, the same seeds)", fontsize=9)
plt.tight_layout(); plt.show()
fig, ax = plt.subplots(figsize=(6, 3))
for name in runs:
    curve = study["loss_curves"][name]
    ax.plot(curve["step"], curve["loss"], label=f"{name}" + (" (its second round's steps)" if name == "reflow" else ""))
ax.set(xlabel="step", ylabel="training loss (EMA of the logged values)", yscale="log"); ax.legend(fontsize=8)
plt.show()
""")

md(r"""
**What the tables say** (512 samples per row, paired differences ×10³; measured on a 2-core AMD EPYC with
bfloat16 training):

* **v against flow with uniform times** (the first table): flow is far ahead at 1-2 evaluations (−19.9 ± 0.2
  and −56.6 ± 0.7 in detail), v is ahead at 4 (+1.6 ± 0.5) and 20 (+0.28 ± 0.08), and the two are level at 8
  and 10. One evaluation gives both an average face; at two, flow gives blurred portraits and v does not yet.
* **Logit-normal times are better than uniform ones at every budget in detail** (−34.4 ± 0.7 at one
  evaluation, −0.46 ± 0.15 at ten) for the same steps: training spends its steps in the middle of the path,
  where the pictures' detail is decided. Against v, flow-ln is better in detail at 1-8 evaluations (−1.04 ±
  0.30 at 4, −0.28 ± 0.11 at 8) and level at 10 and 20 — but **worse in the shapes KID at 4, 8 and 10**
  (+11.5 ± 0.9, +5.0 ± 0.8, +1.9 ± 0.5): fewer steps near pure noise, where the layout is decided. By eye,
  at 10 evaluations the two grids are equally sharp portraits. Flow-ln's best sampler from 4 evaluations on
  is DPM-Solver++(2M) on the straight path.
* **Reflow buys the one-step sampler**: one evaluation gives recognisable portraits (the grid above; detail
  3.1 against flow's 40.7 and v's 60.5, shapes 12.4 against 93.5 and 101), two give 1.4. From 8 evaluations
  on it is no better than the flow it came from (+0.02 ± 0.07 at 10) and behind v (+0.38 ± 0.16 at 10): the
  second round learns the first model's pictures, 8,192 of them, and cannot pass it; it never reaches v's
  10-evaluation detail score. And it is not free: drawing the couples took 17 minutes and the second round
  31 (both shared the machine with other work), so reflow cost about three times flow's training.
* **So the course keeps v** as its recipe: at the 10 evaluations it samples with, no flow run is better in
  both scores (flow-ln is level in detail and worse in layout). `make train OBJECTIVE=flow` now trains the
  best flow run here (logit-normal times, sampled with DPM-Solver++(2M)-10). If you need one or two
  evaluations, flow matching with a reflow round is the method to use; this table is why.

The losses are in different units (section 2; reflow's is small because its couples leave little to
average, as in section 6) and are not compared across methods. Training times: v 19, flow 16, flow-ln 18
minutes (about four of flow-ln's shared the machine with tests), reflow 31 plus 17 of drawing.
""")

md(r"""
## What changes, and what does not

* **The same:** the U-Net, the Trainer (EMA, bfloat16, checkpoints, resume), the compiled sampling loop, the
  evaluation protocol. The information a network carries: section 2's identity turns a flow network's output
  into a $v$-network's.
* **Different:** the path ($a_t = 1-t$, $s_t = t$: straight, ending at SNR 0), which noise levels training
  visits and how it weighs them, the time the network is given (continuous), and the samplers' grid (even
  in $t$, no $\sigma_{max}$ to choose: the path ends exactly at the noise).
* **Checked here:** the path's ends and derivative, the $u \leftrightarrow v$ identity and the weight, Euler = DDIM,
  the exact velocity of a mixture against Monte Carlo and a trained MLP against it, the solvers' orders, and
  that reflow's couples straighten the paths (one Euler step lands where the ODE goes; without the coupling it
  does not).
""")

code(r"""
# NBVAL_CHECK_OUTPUT
assert np.array_equal(x_start.numpy(), x0) and np.array_equal(x_end.numpy(), eps), "the path's ends moved"
assert float(tf.reduce_max(tf.abs(u - fd))) < 1e-8, "the target is not the path's derivative"
assert np.abs(u.numpy() - u_from_v).max() < 1e-12 and np.allclose(lhs / rhs, 1.0, atol=1e-9), "u <-> v or the weight broke"
assert np.all(mc_z < 4), f"u* differs from the Monte Carlo average by {mc_z} standard errors"
assert max(rel_err.values()) < 0.15, f"the learned velocity is off the exact one by {rel_err} (relative)"
assert sw["exact u*"] < floor_sw.mean() + 3 * floor_sw.std(), "Heun with the exact field does not give the mixture"
assert abs(order_slope["euler"] + 1) < 0.2 and abs(order_slope["heun"] + 2) < 0.2, order_slope
assert reflow_dist["reflow (couples)", 1] < 0.2 < 0.8 < min(reflow_dist["exact u* (first round)", 1],
                                                         reflow_dist["same points, fresh noise", 1]), reflow_dist
assert demo.shape == (16, profile.image_size, profile.image_size, 3) and np.all(np.isfinite(demo))
assert study["num_samples"] == 512 and set(study["budgets"]) >= {1, 2, 4, 8, 10, 20}
print("checks passed: path ends exact, target = derivative, u <-> v identity, exact u* = Monte Carlo,\n"
      "learned u within 15% of u* on the path, Heun with u* gives the mixture, orders 1 and 2 within 0.2,\n"
      "one Euler step of the reflowed field within 0.2 of the ODE's end (the first round's: beyond 0.8)")
""")

write("15_flow_matching.ipynb")
