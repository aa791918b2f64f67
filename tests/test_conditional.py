"""The conditional U-Net (classifier-free guidance issue): labels of K kinds, each with a "no label" token."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from ddpm_lessons.blocks import LabelEmbedding, null_labels
from ddpm_lessons.unet import build_unet, load_unet

SMALL = dict(image_size=8, channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,), groups=4)
CLASSES = (5, 6)          # the shipped data: 5 merged subcategories, 6 skin tones


def random_weights(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])


def test_label_embedding_sums_one_row_per_kind_and_has_a_null_token():
    layer = LabelEmbedding(CLASSES, 4)
    labels = np.array([[0, 0], [4, 5], [5, 6], [2, 6]], np.int32)     # row 3: kind 1 unlabelled
    out = layer(labels).numpy()
    e0, e1 = (table.embeddings.numpy() for table in layer.tables)
    assert e0.shape == (6, 4) and e1.shape == (7, 4), "n_k + 1 rows: the last is 'no label'"
    np.testing.assert_allclose(out, e0[labels[:, 0]] + e1[labels[:, 1]], rtol=1e-6)
    np.testing.assert_array_equal(null_labels(CLASSES, 3), [[5, 6]] * 3)


def test_unconditional_unet_is_unchanged_by_the_option():
    plain, explicit = build_unet(SMALL), build_unet({**SMALL, "num_classes": None})
    assert len(plain.inputs) == 2 and [w.shape for w in plain.weights] == [w.shape for w in explicit.weights]
    assert not any("label" in w.path for w in plain.weights)


def test_labels_change_the_output_and_the_model_saves_and_loads(tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_unet({**SMALL, "num_classes": CLASSES})
    assert [i.name for i in model.inputs] == ["x_t", "t", "labels"]
    random_weights(model)
    x = tf.random.stateless_normal([4, 8, 8, 3], seed=[1, 2])
    t = tf.constant([10, 10, 10, 10])
    a = model([x, t, tf.constant([[0, 1]] * 4)]).numpy()
    b = model([x, t, tf.constant([[3, 1]] * 4)]).numpy()
    c = model([x, t, tf.constant(null_labels(CLASSES, 4))]).numpy()
    assert not np.allclose(a, b) and not np.allclose(a, c)
    model.save(tmp_path / "cond.keras")
    loaded = load_unet(tmp_path / "cond.keras")
    labels = tf.constant([[0, 1], [4, 6], [5, 0], [5, 6]])
    np.testing.assert_array_equal(loaded([x, t, labels]).numpy(), model([x, t, labels]).numpy())
    with pytest.raises(ValueError, match="num_classes"):
        build_unet({**SMALL, "num_classes": (5, 0)})


def test_label_dropout_rate_is_what_was_asked_per_kind_and_independent():
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig
    p = 0.2
    trainer = Trainer(build_unet({**SMALL, "num_classes": CLASSES}), NoiseSchedule.from_kind("cosine", 100),
                      TrainConfig(label_dropout=p, jit_compile=False))
    labels = np.tile(np.array([[1, 2]], np.int32), (4000, 1))
    dropped = np.concatenate([trainer.drop_labels(labels).numpy() for _ in range(5)])   # 20,000 images
    null = dropped == np.array(CLASSES)
    assert np.all(np.where(null, True, dropped == labels[0])), "a label is kept or becomes 'no label'"
    n = len(null)
    for k in range(2):                                              # each kind at rate p (4 SE)
        assert abs(null[:, k].mean() - p) < 4 * np.sqrt(p * (1 - p) / n), null[:, k].mean()
    both = (null[:, 0] & null[:, 1]).mean()                          # independent: p^2 (4 SE)
    assert abs(both - p * p) < 4 * np.sqrt(p * p * (1 - p * p) / n), both


def test_conditional_training_step_on_labelled_batches():
    from ddpm_lessons.data import make_dataset
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    labels = np.stack([np.arange(16) % 5, np.arange(16) % 6], axis=1)
    ds = make_dataset(images, 8, labels=labels, seed=0)
    x, y = next(iter(ds))
    assert x.shape == (8, 8, 8, 3) and y.shape == (8, 2) and y.dtype == tf.int32
    # the pairing survives the shuffle: each batch row's label is its image's
    index = {img.tobytes(): i for i, img in enumerate(images)}
    for xi, yi in zip(((x.numpy() + 1) * 127.5).round().astype(np.uint8), y.numpy()):
        i = index.get(xi.tobytes(), index.get(xi[:, ::-1].tobytes()))     # maybe flipped
        assert i is not None and tuple(yi) == tuple(labels[i])
    trainer = Trainer(build_unet({**SMALL, "num_classes": CLASSES}), NoiseSchedule.from_kind("cosine", 100),
                      TrainConfig(jit_compile=False, warmup_steps=1))
    history = trainer.fit(ds, 3, progress=False)
    assert np.all(np.isfinite(history["loss"])) and int(trainer.step.numpy()) == 3
    with pytest.raises(ValueError, match="labels"):
        trainer.train_step(x)                                        # a conditional U-Net needs labels


def test_guided_eps_is_one_batched_pass_and_w_0_1_are_the_two_models():
    from ddpm_lessons.sampling import guided_eps_fn
    tf.keras.utils.set_random_seed(0)
    model = build_unet({**SMALL, "num_classes": CLASSES})
    random_weights(model, seed=3)
    fn = guided_eps_fn(model)
    assert guided_eps_fn(model) is fn, "one function per model: its sampling loops are reused"
    x = tf.random.stateless_normal([3, 8, 8, 3], seed=[4, 5])
    t = tf.constant([5, 50, 90])
    labels = np.array([[0, 1], [4, 6], [5, 2]], np.int32)
    cond = model([x, t, tf.constant(labels)]).numpy()                 # two separate forward passes
    uncond = model([x, t, tf.constant(null_labels(CLASSES, 3))]).numpy()
    fn.labels.assign(labels)
    for w in (0.0, 1.0, 2.5):
        fn.guidance.assign(w)
        np.testing.assert_allclose(fn(x, t).numpy(), uncond + w * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_generate_with_labels_and_guidance():
    from ddpm_lessons.sampling import generate
    from ddpm_lessons.schedule import NoiseSchedule
    schedule = NoiseSchedule.from_kind("cosine", 100)
    tf.keras.utils.set_random_seed(0)
    model = build_unet({**SMALL, "num_classes": CLASSES})
    random_weights(model, seed=4)
    labels = np.array([[k % 5, k % 6] for k in range(6)], np.int32)
    opts = dict(sampler="ddim", steps=4, eta=0.0, seed=1, batch_size=4)
    a = generate(model, schedule, 6, labels=labels, guidance=2.0, **opts)
    b = generate(model, schedule, 6, labels=labels, guidance=2.0, **opts)
    c = generate(model, schedule, 6, labels=labels, guidance=0.0, **opts)
    d = generate(model, schedule, 6, labels=None, **opts)              # no label at all: unconditional
    assert a.shape == (6, 8, 8, 3) and np.all(np.abs(a) <= 1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(c, d, atol=1e-5)      # w = 0 ignores the labels
    with pytest.raises(ValueError, match="unconditional"):
        generate(build_unet(SMALL), schedule, 2, labels=labels[:2], **opts)


class _ExactGaussianEps(keras.layers.Layer):
    """eps* of pixels ~ N(mu_y, s^2): mu_y = mu for label 0, 0 for "no label" (label 1 = num_classes).
    Named "label_embedding" with ``num_classes`` so guided_eps_fn treats the model as conditional."""

    def __init__(self, abar, mu, s2, **kwargs):
        super().__init__(name="label_embedding", **kwargs)
        self.abar, self.mu, self.s2, self.num_classes = tf.constant(abar, tf.float32), mu, s2, (1,)

    def call(self, inputs):
        x, t, labels = inputs
        a = tf.reshape(tf.gather(self.abar, t), [-1, 1, 1, 1])
        m = tf.reshape(tf.cast(tf.equal(labels[:, 0], 0), tf.float32) * self.mu, [-1, 1, 1, 1])
        return tf.sqrt(1.0 - a) * (x - tf.sqrt(a) * m) / (a * self.s2 + 1.0 - a)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_guided_ddpm_on_gaussians_follows_the_exact_recursion(w):
    """Conditional N(mu, s^2) and unconditional N(0, s^2) pixels: eps_u + w (eps_c - eps_u) is exactly
    the eps* of N(w mu, s^2), so guided Algorithm 2 must give the mean and variance of the exact
    recursion for that target (float64, from the betas): mean m_{t-1} = k_t m_t + g_t w mu with
    the posterior's coefficients, variance as in test_sampling_step. Mean within 4 SE, variance 4 SE."""
    import keras
    from ddpm_lessons.sampling import generate
    from ddpm_lessons.schedule import NoiseSchedule
    sch = NoiseSchedule.from_kind("linear", 1000)
    mu, s2 = 0.3, 0.05 ** 2
    x_in, t_in = keras.Input((2, 2, 2)), keras.Input((), dtype="int32")
    y_in = keras.Input((1,), dtype="int32")
    model = keras.Model([x_in, t_in, y_in], _ExactGaussianEps(sch.alphas_cumprod, mu, s2)([x_in, t_in, y_in]))
    n = 12500
    x = generate(model, sch, n, sampler="ddpm", seed=0, batch_size=n, clip_x0=None,
                 labels=np.zeros((n, 1), np.int32), guidance=w)
    betas = np.asarray(sch.betas, np.float64)
    alphas, abar = 1.0 - betas, np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    c1 = betas * np.sqrt(abar_prev) / (1.0 - abar)                  # posterior mean coefficients (eq. 7)
    c2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
    V = abar * s2 + 1.0 - abar
    beta_tilde = (1.0 - abar_prev) * betas / (1.0 - abar)
    m, v, target = 0.0, 1.0, w * mu
    for t in range(999, -1, -1):       # x0_hat = x_t (1 - (1 - abar)/V) / sqrt(abar) + (1 - abar) target / V
        k = c1[t] * (1.0 - (1.0 - abar[t]) / V[t]) / np.sqrt(abar[t]) + c2[t]
        m = k * m + c1[t] * (1.0 - abar[t]) * target / V[t]
        v = k ** 2 * v + (beta_tilde[t] if t > 0 else 0.0)
    assert abs(x.mean() - m) < 4 * np.sqrt(v / x.size), (x.mean(), m)
    assert abs(x.var() / v - 1) < 4 * np.sqrt(2.0 / x.size), (x.var(), v)
    assert abs(m - target) < 0.05 * abs(target) + 1e-3, "the exact recursion ends near the guided target"


def test_subfolder_labels_map_to_the_right_files(tmp_path):
    from PIL import Image
    from ddpm_lessons.data import read_image_folder, subfolder_labels
    rng = np.random.default_rng(0)
    layout = {"cats/a.png": 0, "cats/deep/b.png": 0, "dogs/c.png": 1, "zebras/d.png": 2, "top.png": None}
    colours = {}
    for k, rel in enumerate(layout):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        colour = (40 * k, 255 - 40 * k, 17 * k)                    # a different flat colour per file
        colours[rel] = colour
        Image.fromarray(np.full((20, 20, 3), colour, np.uint8)).save(path)
    images, report = read_image_folder(tmp_path, 16)
    labels, names = subfolder_labels(report)
    assert names == ["cats", "dogs", "zebras"] and labels.shape == (5, 1) and labels.dtype == np.int32
    for image, label, rel in zip(images, labels[:, 0], report.used):
        want = layout[rel]
        assert label == (len(names) if want is None else want), rel        # top level: "no label"
        assert tuple(image[8, 8]) == colours[rel]                          # the label sits with its picture
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(flat / "x.png")
    with pytest.raises(ValueError, match="sub-folders"):
        subfolder_labels(read_image_folder(flat, 16)[1])


def test_run_labels_refuse_a_folder_whose_classes_changed_and_count_each_class(tmp_path):
    """Lesson 09's labels (guidance.run_labels / describe_labels): none for an unconditional run; a
    continued run whose folder has other classes is refused (its label embedding was made for the old
    ones); the counts line names each class with its number of pictures, "no label" last."""
    from PIL import Image
    from ddpm_lessons.data import read_image_folder
    from ddpm_lessons.guidance import describe_labels, run_labels
    for k, rel in enumerate(["cats/a.png", "cats/b.png", "dogs/c.png", "top.png"]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 20, 3), 50 * k, np.uint8)).save(tmp_path / rel)
    report = read_image_folder(tmp_path, 16)[1]
    assert run_labels(report, (), []) == (None, [])
    saved = [{"kind": "folder", "classes": ["cats", "dogs"]}]
    labels, kinds = run_labels(report, (2,), saved)
    assert kinds == [("folder", ["cats", "dogs"])] and sorted(labels[:, 0].tolist()) == [0, 0, 1, 2]
    assert describe_labels(labels, kinds) == "labels, folder: cats 2, dogs 1, no label 1"
    with pytest.raises(ValueError, match="FRESH=1"):
        run_labels(report, (2,), [{"kind": "folder", "classes": ["cats", "zebras"]}])


def test_emoji_labels_of_the_shipped_portraits():
    from ddpm_lessons.data import SKIN_TONES, SUBCATEGORIES, emoji_labels, read_labels
    rows = read_labels()
    files = [r["file"] for r in rows]
    labels = emoji_labels(files, rows)
    assert labels.shape == (len(rows), 2) and labels.dtype == np.int32
    for r, (sub, tone) in zip(rows, labels):
        assert SUBCATEGORIES[sub] == ("face" if r["subcategory"].startswith("face") else r["subcategory"])
        assert SKIN_TONES[tone] == r["skin_tone"]
    assert set(labels[:, 0]) == set(range(5)) and set(labels[:, 1]) == set(range(6))


def test_a_conditional_run_records_its_classes_and_is_kept_apart(tmp_path):
    from test_runs import make_folder, prepare
    from ddpm_lessons import runs
    folder, root = make_folder(tmp_path / "pics"), tmp_path / "runs"     # 7 pictures in sub/, 13 on top
    run, plan = prepare(root, folder, conditional=True)
    saved = runs.read_settings(run)
    assert saved["profile"].num_classes == (1,) and saved["labels"] == [{"kind": "folder", "classes": ["sub"]}]
    assert any("13 pictures" in note and "no label" in note for note in plan["notes"])
    assert "folder: 1 class (sub)" in runs.describe_run(run)
    plain, _ = prepare(root, folder)                                    # unconditional: another run
    assert plain != run and runs.read_settings(plain)["profile"].num_classes is None
    again, _ = prepare(root, folder, conditional=True)                  # conditional again: continued
    assert again == run
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted((folder).glob("*.png"))[:10]:
        (flat / p.name).write_bytes(p.read_bytes())
    with pytest.raises(runs.UserError, match="sub-folders"):
        prepare(root, flat, conditional=True)
    code = runs.main(["prepare", "--runs", str(root), "--data", str(folder), "--init", "reference", "--conditional"])
    assert code == 2


def test_the_shipped_portraits_give_two_label_kinds_and_a_conditional_profile():
    from ddpm_lessons.data import class_labels, default_dataset_path, read_image_folder
    from ddpm_lessons.profiles import get_profile
    _, report = read_image_folder(default_dataset_path(), 16)
    labels, kinds = class_labels(report)
    assert [k for k, _ in kinds] == ["subcategory", "skin tone"] and labels.shape == (report.num_images, 2)
    p = get_profile("tiny").replace(num_classes=(5, 6))
    assert [i.name for i in build_unet(p).inputs] == ["x_t", "t", "labels"]
    for bad in ((), (5, 0)):
        with pytest.raises(ValueError, match="num_classes"):
            get_profile("tiny").replace(num_classes=bad)


def test_guidance_measures():
    from ddpm_lessons.guidance import agreement, class_diversity, proportional_labels, requests
    r = requests((5, 6), 0, 10)
    assert r.shape == (10, 2) and np.all(r[:, 1] == 6) and np.all(np.bincount(r[:, 0]) == 2)
    a = agreement([0, 1, 1, 2, 2, 2], [0, 0, 1, 2, 2, 2], 4)
    assert a["per_class"][:3] == [0.5, 1.0, 1.0] and np.isnan(a["per_class"][3]) and a["macro"] == pytest.approx(2.5 / 3)
    f = np.array([[0.0, 0], [3, 4], [10, 10], [10, 10]])
    assert class_diversity(f, [0, 0, 1, 1], 2) == pytest.approx((5.0 + 0.0) / 2)
    real = np.array([[0, 0]] * 90 + [[1, 1]] * 10, np.int32)
    drawn = proportional_labels(real, 4000, seed=0)
    assert abs(drawn[:, 0].mean() - 0.1) < 4 * np.sqrt(0.09 / 4000)


def test_classify_images_finds_the_classes_of_real_pictures():
    from ddpm_lessons.data import class_labels, default_dataset_path, read_image_folder
    from ddpm_lessons.metrics import classify_images
    images, report = read_image_folder(default_dataset_path(), 32)
    labels, _ = class_labels(report)
    pick = np.random.default_rng(0).choice(len(images), 200, replace=False)
    pred = classify_images(images[pick])
    assert pred.shape == (200, 2) and pred.dtype == np.int32
    assert np.mean(pred == labels[pick], axis=0).min() > 0.8        # mostly training pictures: well above chance


def test_a_conditional_checkpoint_restores_the_label_tables(tmp_path):
    """The label tables must be in the training checkpoint (a list attribute was not: a resumed run, and
    every network loaded from a checkpoint, had untrained tables while every other weight was restored)."""
    from ddpm_lessons.schedule import NoiseSchedule
    from ddpm_lessons.training import Trainer, TrainConfig
    schedule = NoiseSchedule.from_kind("cosine", 100)
    trainer = Trainer(build_unet({**SMALL, "num_classes": CLASSES}), schedule, TrainConfig(jit_compile=False),
                      checkpoint_dir=tmp_path / "ckpt")
    random_weights(trainer.model, seed=1)
    random_weights(trainer.ema_model, seed=2)
    trainer.save()
    names = [n for n, _ in tf.train.list_variables(str(tmp_path / "ckpt"))]
    assert any("table_0" in n for n in names) and any("table_1" in n for n in names), names
    again = Trainer(build_unet({**SMALL, "num_classes": CLASSES}), schedule, TrainConfig(jit_compile=False),
                    checkpoint_dir=tmp_path / "ckpt")
    again.restore()
    for a, b in ((trainer.model, again.model), (trainer.ema_model, again.ema_model)):
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(wa.numpy(), wb.numpy(), err_msg=wa.path)


def test_grouped_requests_give_one_block_per_class():
    from ddpm_lessons.guidance import requests
    r = requests((5, 6), 1, 12, grouped=True)
    assert r[:, 1].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and np.all(r[:, 0] == 5)
