"""WIP #18 (branch distribute), a probe, not a test: run with PYTHONPATH=. .venv/bin/python notebooks/studies/distribute/one_step_two_devices.py.
Prototype: one step on 2 logical CPU devices (MirroredStrategy) vs one device, same global batch,
same t and noise; global-norm clip engaged, applied to the all-reduced gradients."""
import os, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from ddpm_lessons.unet import build_unet
from ddpm_lessons.schedule import NoiseSchedule
from ddpm_lessons.forward import q_sample

SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(4,), groups=4)
sch = NoiseSchedule.from_kind("cosine", 100)
GB = 8
x0 = np.random.default_rng(0).uniform(-1, 1, (GB, 8, 8, 3)).astype("float32")
CLIP = 0.3   # below the gradient norm (0.61): the clip is engaged

def setup():
    keras.utils.set_random_seed(0)
    m = build_unet(SMALL)
    rng = np.random.default_rng(0)      # random weights everywhere (the zero-initialised output conv stops every other gradient)
    m.set_weights([rng.normal(0, 0.2, w.shape).astype("float32") for w in m.get_weights()])
    opt = keras.optimizers.Adam(1e-3)
    opt.build(m.trainable_variables)
    return m, opt

def replica_loss_grads(m, x, t, noise, global_batch):
    x_t = q_sample(x, t, noise, sch)
    with tf.GradientTape() as tape:
        out = m([x_t, t], training=True)
        per = tf.reduce_mean(tf.square(noise - out), axis=[1, 2, 3])
        loss = tf.reduce_sum(per) / global_batch          # this replica's share of the global mean
    return loss, tape.gradient(loss, m.trainable_variables)

def noise_for(step, start, size):
    t = tf.random.stateless_uniform([GB], seed=[7, step], minval=0, maxval=sch.T, dtype=tf.int32)[start:start + size]
    n = tf.random.stateless_normal([GB, 8, 8, 3], seed=[8, step])[start:start + size]
    return t, n

# one device
m1, o1 = setup()
@tf.function
def step1(x):
    t, n = noise_for(0, 0, GB)
    loss, g = replica_loss_grads(m1, x, t, n, GB)
    g, norm = tf.clip_by_global_norm(g, CLIP)
    o1.apply(g, m1.trainable_variables)
    return loss, norm
l1, n1 = step1(tf.constant(x0))

# two replicas
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    m2, o2 = setup()
@tf.function
def step2(dist_x):
    def replica(x):
        ctx = tf.distribute.get_replica_context()
        b = tf.shape(x)[0]
        t, n = noise_for(0, ctx.replica_id_in_sync_group * b, b)
        loss, g = replica_loss_grads(m2, x, t, n, GB)
        g = ctx.all_reduce(tf.distribute.ReduceOp.SUM, g)
        g, norm = tf.clip_by_global_norm(g, CLIP)
        # Keras 3 (TF 2.21) sums what each replica passes to apply(): hand it 1/R of the clipped total
        o2.apply([gi / ctx.num_replicas_in_sync for gi in g], m2.trainable_variables)
        return loss, norm
    loss, norm = strategy.run(replica, args=(dist_x,))
    return strategy.reduce("SUM", loss, axis=None), strategy.reduce("MEAN", norm, axis=None)
ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x0).batch(GB))
l2, n2 = step2(next(iter(ds)))
print("loss", float(l1), float(l2), "grad norm", float(n1), float(n2))
d = max(float(np.abs(a.numpy() - b.numpy()).max()) for a, b in zip(m1.trainable_variables, m2.trainable_variables))
w = max(float(np.abs(a.numpy()).max()) for a in m1.trainable_variables)
print("max weight difference after the step", d, "largest weight", w)
print("replicas", strategy.num_replicas_in_sync)
diffs = sorted(((float(np.abs(a.numpy() - b.numpy()).max()), a.path) for a, b in zip(m1.trainable_variables, m2.trainable_variables)), reverse=True)
print(diffs[:4])
print("iterations", int(o1.iterations.numpy()), int(o2.iterations.numpy()))
m0, _ = setup()
for a, b, c in zip(m0.trainable_variables, m1.trainable_variables, m2.trainable_variables):
    if a.path == "up0_res1/conv_1/kernel":
        u1, u2 = (b.numpy() - a.numpy()).ravel(), (c.numpy() - a.numpy()).ravel()
        print("update one device", u1[:4], "two replicas", u2[:4], "ratio", np.median(np.abs(u2) / np.abs(u1)))
