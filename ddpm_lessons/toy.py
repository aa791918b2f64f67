"""Lesson 03 — the whole method on 2-D points, checked against the exact answer.

For a Gaussian mixture p_0 = sum_k w_k N(mu_k, Sigma_k) the forward process keeps every
component Gaussian (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eq. 4):

    p_t(x)       = sum_k w_k N(x; sqrt(abar_t) mu_k, abar_t Sigma_k + (1 - abar_t) I)
    grad log p_t = -sum_k r_k(x) C_k^{-1} (x - m_k),   r_k = responsibility of component k
    eps*(x, t)   = E[eps | x_t = x] = -sqrt(1 - abar_t) grad log p_t(x)   (Tweedie; the best
                   noise predictor under the squared loss)

so sampling with eps* (``ddpm_lessons.sampling``, Algorithm 2) must give back the mixture.
A small MLP is trained with the simple loss || eps - eps_theta(x_t, t) ||^2 (Ho et al. eq. 14)
and compared with it. Sample sets are compared with an RBF MMD and a sliced 2-Wasserstein
distance, each against its floor: the spread of the same distance between independent draws
of the data (``distance_floor``). Plain NumPy / TensorFlow: no plotting here (the notebook draws).
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from .blocks import timestep_embedding  # the sinusoidal embedding; lesson 04 derives it
from .forward import q_sample
from .schedule import NoiseSchedule


# ---------------------------------------------------------------------------------- data
class GaussianMixture:
    """sum_k w_k N(mu_k, Sigma_k) in d dimensions. weights (K,), means (K, d), covs (K, d, d)."""

    def __init__(self, weights, means, covs):
        self.weights = np.asarray(weights, np.float64)
        self.means = np.asarray(means, np.float64)
        self.covs = np.asarray(covs, np.float64)
        if not np.isclose(self.weights.sum(), 1.0):
            raise ValueError(f"weights must sum to 1, got {self.weights.sum()}")
        K, d = self.means.shape
        if self.weights.shape != (K,) or self.covs.shape != (K, d, d):
            raise ValueError("need weights (K,), means (K, d), covs (K, d, d)")
        self.K, self.dim = K, d

    def __repr__(self):
        return f"GaussianMixture(K={self.K}, dim={self.dim}, weights={np.round(self.weights, 3).tolist()})"

    def sample(self, n, seed=0, return_labels=False):
        """n points (n, d) float32 (and their component labels (n,) with ``return_labels``)."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(self.K, size=n, p=self.weights)
        chol = np.linalg.cholesky(self.covs)                           # (K, d, d)
        z = rng.standard_normal((n, self.dim))
        x = self.means[labels] + np.einsum("nij,nj->ni", chol[labels], z)
        x = x.astype(np.float32)
        return (x, labels) if return_labels else x

    def component_log_densities(self, x):
        """log(w_k N(x; mu_k, Sigma_k)) for every point and component: (n, K) float64."""
        x = np.asarray(x, np.float64)
        diff = x[:, None, :] - self.means[None]                          # (n, K, d)
        prec = np.linalg.inv(self.covs)
        maha = np.einsum("nki,kij,nkj->nk", diff, prec, diff)
        _, logdet = np.linalg.slogdet(self.covs)
        return np.log(self.weights) - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))

    def log_density(self, x):
        """log p(x), (n,) float64 (log-sum-exp over components)."""
        lc = self.component_log_densities(x)
        m = lc.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(lc - m).sum(axis=1, keepdims=True)))[:, 0]

    def assign(self, x):
        """The most responsible component of each point: (n,) int."""
        return np.argmax(self.component_log_densities(x), axis=1)

    def noised(self, alpha_bar):
        """The mixture p_t of x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps: means sqrt(abar) mu_k,
        covariances abar Sigma_k + (1 - abar) I."""
        eye = np.eye(self.dim)
        return GaussianMixture(self.weights, math.sqrt(alpha_bar) * self.means,
                               alpha_bar * self.covs + (1.0 - alpha_bar) * eye)

    def moments(self):
        """Overall mean (d,) and covariance (d, d) of the mixture."""
        mean = self.weights @ self.means
        diff = self.means - mean
        cov = np.einsum("k,kij->ij", self.weights, self.covs + np.einsum("ki,kj->kij", diff, diff))
        return mean, cov

    def eps_star(self, x, t, schedule: NoiseSchedule):
        """Exact optimal noise prediction eps*(x_t, t) = -sqrt(1 - abar_t) grad log p_t(x_t).

        x: (B, d) tensor (float32 or float64); t: (B,) int, 0-based. TensorFlow, so it runs
        inside the compiled sampler. Returns (B, d) with x's dtype.
        """
        x = tf.convert_to_tensor(x)
        dtype = x.dtype
        abar = schedule.alphas_cumprod                                        # (T,) float64
        # per timestep (T, K, ...): m_k = sqrt(abar) mu_k, C_k = abar Sigma_k + (1 - abar) I
        means = np.sqrt(abar)[:, None, None] * self.means[None]
        covs = abar[:, None, None, None] * self.covs[None] + (1.0 - abar)[:, None, None, None] * np.eye(self.dim)
        prec = np.linalg.inv(covs)
        logits = np.log(self.weights)[None] - 0.5 * np.linalg.slogdet(covs)[1]    # log w_k - log|C_k|/2
        t = tf.cast(t, tf.int32)
        take = lambda a: tf.gather(tf.constant(a, dtype), t)                     # (B, ...) at each t
        diff = x[:, None, :] - take(means)                                        # (B, K, d)
        sol = tf.einsum("bkij,bkj->bki", take(prec), diff)                        # C_k^{-1}(x - m_k)
        maha = tf.reduce_sum(diff * sol, axis=-1)                                 # (B, K)
        resp = tf.nn.softmax(take(logits) - 0.5 * maha, axis=-1)                  # r_k(x), (B, K)
        score = -tf.reduce_sum(resp[..., None] * sol, axis=1)                     # grad log p_t, (B, d)
        return -take(np.sqrt(1.0 - abar))[:, None] * score

    def velocity_star(self, x, t):
        """Exact flow-matching velocity u*(x, t) = E[eps - x0 | x_t = x] on the straight path
        x_t = (1 - t) x0 + t eps (lesson 15). Per component k, (x0, eps, x_t) are jointly Gaussian with
        C_k = (1 - t)^2 Sigma_k + t^2 I the covariance of x_t and d = x - (1 - t) mu_k:

            E[x0 | x, k] = mu_k + (1 - t) Sigma_k C_k^{-1} d,   E[eps | x, k] = t C_k^{-1} d
            u_k = (t I - (1 - t) Sigma_k) C_k^{-1} d - mu_k,     u* = sum_k r_k(x) u_k

        finite at both ends (t = 0 and t = 1). x: (B, d); t: (B,) or scalar float in [0, 1]. TensorFlow."""
        x = tf.convert_to_tensor(x)
        dtype = x.dtype
        t = tf.broadcast_to(tf.cast(t, dtype), [tf.shape(x)[0]])[:, None, None, None]          # (B, 1, 1, 1)
        sigma0, mu = tf.constant(self.covs, dtype)[None], tf.constant(self.means, dtype)[None]  # (1, K, d, d), (1, K, d)
        eye = tf.eye(self.dim, dtype=dtype)
        covs = (1.0 - t) ** 2 * sigma0 + t ** 2 * eye                                         # C_k, (B, K, d, d)
        diff = x[:, None, :] - (1.0 - t[..., 0]) * mu                                          # d, (B, K, d)
        sol = tf.linalg.solve(covs, diff[..., None])                                           # C^{-1} d, (B, K, d, 1)
        maha = tf.reduce_sum(diff * sol[..., 0], axis=-1)                                      # (B, K)
        logits = tf.math.log(tf.constant(self.weights, dtype))[None] - 0.5 * tf.linalg.logdet(covs)
        resp = tf.nn.softmax(logits - 0.5 * maha, axis=-1)                                     # r_k(x), (B, K)
        u_k = tf.matmul(t * eye - (1.0 - t) * sigma0, sol)[..., 0] - mu                          # (B, K, d)
        return tf.reduce_sum(resp[..., None] * u_k, axis=1)


def default_mixture() -> GaussianMixture:
    """Three well-separated components with unequal weights 0.5 / 0.3 / 0.2, roughly unit scale."""
    def cov(sx, sy, rho):
        return [[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]]
    return GaussianMixture(
        weights=[0.5, 0.3, 0.2],
        means=[[-1.0, -0.6], [1.0, -0.6], [0.0, 1.2]],
        covs=[cov(0.25, 0.15, 0.5), cov(0.15, 0.25, -0.4), cov(0.2, 0.2, 0.0)])


def standardize(x):
    """Shift and scale each coordinate to mean 0, std 1 (points live at the scale of [-1, 1] images)."""
    x = np.asarray(x, np.float64)
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32)


def two_moons(n, noise=0.05, seed=0):
    """The two interleaved half circles (standardized), (n, 2) float32."""
    rng = np.random.default_rng(seed)
    upper = rng.random(n) < 0.5
    theta = rng.random(n) * math.pi
    x = np.where(upper[:, None],
                 np.stack([np.cos(theta), np.sin(theta)], 1),
                 np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], 1))
    return standardize(x + noise * rng.standard_normal((n, 2)))


def spiral(n, turns=1.5, noise=0.03, seed=0):
    """A single Archimedean spiral arm (standardized), (n, 2) float32."""
    rng = np.random.default_rng(seed)
    s = np.sqrt(rng.random(n))                     # uniform along the arm's area
    theta = 2 * math.pi * turns * s
    x = np.stack([s * np.cos(theta), s * np.sin(theta)], 1)
    return standardize(x + noise * rng.standard_normal((n, 2)))


# --------------------------------------------------------------------------------- model
@keras.saving.register_keras_serializable(package="ddpm_lessons")
class ToyMLP(keras.Model):
    """eps_theta(x_t, t) for d-dimensional points: an MLP on the concatenation [x_t, embed(t)].

    x: (B, d) float, t: (B,) int -> (B, d). embed(t) = swish(Dense(width)(sinusoids of t));
    then ``depth`` swish layers ``width`` wide and a linear output layer.
    """

    def __init__(self, width=128, depth=3, emb_dim=32, dim=2, **kwargs):
        super().__init__(**kwargs)
        self.width, self.depth, self.emb_dim, self.dim = width, depth, emb_dim, dim
        self.t_proj = keras.layers.Dense(width, activation="swish", name="t_proj")
        self.hidden = [keras.layers.Dense(width, activation="swish", name=f"hidden{i}")
                       for i in range(depth)]
        self.out = keras.layers.Dense(dim, name="out")

    def call(self, x, t):
        temb = self.t_proj(timestep_embedding(t, self.emb_dim))              # (B, width)
        h = tf.concat([tf.cast(x, temb.dtype), temb], axis=-1)               # (B, d + width)
        for dense in self.hidden:
            h = dense(h)                                                     # (B, width)
        return self.out(h)                                                   # (B, d)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "depth": self.depth,
                "emb_dim": self.emb_dim, "dim": self.dim}


def build_toy_mlp(width=128, depth=3, dim=2, seed=0) -> ToyMLP:
    """A built ToyMLP with reproducible initial weights."""
    keras.utils.set_random_seed(seed)
    model = ToyMLP(width=width, depth=depth, dim=dim)
    model(tf.zeros([1, dim]), tf.zeros([1], tf.int32))
    return model


def train_toy(model, data, schedule: NoiseSchedule, steps=3000, batch=256, lr=2e-3, seed=0, objective=None,
              noise=None):
    """Train eps_theta with the simple loss E || eps - eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) eps, t) ||^2.

    data: (N, d) training points. Each step draws a batch of points, t ~ U{0..T-1} and eps ~ N(0, I)
    (Ho et al. Algorithm 1). Adam with a cosine-decaying learning rate (to lr / 10).
    ``objective``: another training objective with the ``Diffusion`` interface (lesson 15:
    ``flow.FlowMatching``, the velocity u = eps - x0 at t ~ U(0, 1)): its times, noising and target.
    ``noise``: (N, d), each point's own noise (reflow's couples, lesson 15), taken with it instead of fresh eps.
    Returns the loss of every step, (steps,) float32.
    """
    data = tf.constant(np.asarray(data, np.float32))
    if noise is not None:
        noise = tf.constant(np.asarray(noise, np.float32))
        if noise.shape != data.shape:
            raise ValueError(f"noise {noise.shape} must pair one to one with data {data.shape}")
    n, T = int(data.shape[0]), schedule.T
    lr_schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1), alpha=0.1)
    opt = keras.optimizers.Adam(lr_schedule)
    opt.build(model.trainable_variables)           # build first, or the step is traced twice
    gen = tf.random.Generator.from_seed(seed)

    @tf.function
    def step():
        which = gen.uniform([batch], 0, n, dtype=tf.int32)
        x0 = tf.gather(data, which)
        fresh = lambda: gen.normal(tf.shape(x0)) if noise is None else tf.gather(noise, which)   # noqa: E731
        if objective is None:
            t = gen.uniform([batch], 0, T, dtype=tf.int32)
            eps = fresh()
            x_t, target, t_in = q_sample(x0, t, eps, schedule), eps, t
        else:
            t = objective.training_times(gen, batch)
            x_t, target, _ = objective.noised(x0, t, fresh())
            t_in = objective.unet_time(t)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(target - model(x_t, t_in, training=True)))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return np.array([float(step()) for _ in range(steps)], np.float32)


def mixture_eps_fn(mixture: GaussianMixture, schedule: NoiseSchedule):
    """The exact eps* of a Gaussian mixture as the sampler's eps_fn(x, t).

    The same (mixture, schedule) pair gives the same function object, so the sampler's
    compiled loop is reused. (A trained ToyMLP is an eps_fn already: model(x, t).)
    """
    cache = mixture.__dict__.setdefault("_eps_fns", {})
    if id(schedule) not in cache or cache[id(schedule)][0] is not schedule:
        cache[id(schedule)] = (schedule, lambda x, t: mixture.eps_star(x, t, schedule))
    return cache[id(schedule)][1]


# ------------------------------------------------------------------------------ numbers
def component_stats(mixture: GaussianMixture, x):
    """Per component k, from samples assigned to their most responsible component:
    share (K,), mean (K, d), cov (K, d, d) and count (K,)."""
    x = np.asarray(x, np.float64)
    labels = mixture.assign(x)
    K, d = mixture.K, mixture.dim
    count = np.bincount(labels, minlength=K)
    mean = np.full((K, d), np.nan)
    cov = np.full((K, d, d), np.nan)
    for k in range(K):
        xk = x[labels == k]
        if len(xk) > 1:
            mean[k] = xk.mean(0)
            cov[k] = np.cov(xk, rowvar=False)
    return {"share": count / len(x), "mean": mean, "cov": cov, "count": count}


def sliced_wasserstein_w2(x, y, num_projections=256, seed=0):
    """Sliced 2-Wasserstein distance between point sets x (n, d) and y (m, d), in data units.

    SW_2^2 = E_theta W_2^2(theta . x, theta . y) over random unit directions theta; each 1-D W_2
    compares sorted projections (quantiles at min(n, m) levels when n != m). Not the same as
    ``ddpm_lessons.metrics.sliced_wasserstein`` (W_1, equal-sized sets, lesson 11).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((x.shape[1], num_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)
    if len(px) != len(py):
        q = (np.arange(min(len(px), len(py))) + 0.5) / min(len(px), len(py))
        px, py = np.quantile(px, q, axis=0), np.quantile(py, q, axis=0)
    return float(np.sqrt(np.mean((px - py) ** 2)))



def mmd_rbf(x, y, bandwidths=(0.1, 0.3, 1.0)):
    """Maximum mean discrepancy with a sum of RBF kernels k(a, b) = exp(-|a - b|^2 / (2 h^2)).

    Biased (V-statistic) estimate of MMD^2 = E k(x, x') + E k(y, y') - 2 E k(x, y), returned as
    its square root (0 for identical sets). O(n m) memory: keep the sets to a few thousand points.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)

    def k_mean(a, b):
        d2 = (np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None] - 2.0 * a @ b.T).clip(min=0)
        return sum(float(np.exp(-d2 / (2.0 * h * h)).mean()) for h in bandwidths)

    return float(np.sqrt(max(k_mean(x, x) + k_mean(y, y) - 2.0 * k_mean(x, y), 0.0)))


def distance_floor(draw, reference, repeats=20):
    """What a perfect sampler would score: the distances from ``reference`` (n, d) to ``repeats``
    independent sets ``draw(seed)`` (n, d) of the true distribution, seeds 0..repeats-1.

    A single pair of independent sets gives one noisy number; the spread over repeats is the noise
    level of the distance at this n. Returns {"sw2": (repeats,), "mmd": (repeats,)} float64.
    """
    sets = [draw(seed) for seed in range(repeats)]
    return {"sw2": np.array([sliced_wasserstein_w2(x, reference) for x in sets]),
            "mmd": np.array([mmd_rbf(x, reference) for x in sets])}


def low_density_fraction(mixture: GaussianMixture, x, level=0.005, n_ref=200_000, seed=12345):
    """Share of the points x (n, d) that lie where the mixture is thinnest: log p_0(x) below the
    ``level`` quantile of log p_0 over ``n_ref`` true draws. True draws give about ``level``;
    a sampler that leaves points between the modes gives more."""
    threshold = np.quantile(mixture.log_density(mixture.sample(n_ref, seed=seed)), level)
    return float(np.mean(mixture.log_density(x) < threshold))
