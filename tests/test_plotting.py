"""Plotting helpers that lessons rely on: the U-Net drawing (public Keras API only) and the GIF."""
import io

import matplotlib
import numpy as np
from PIL import Image

from ddpm_lessons import plotting
from ddpm_lessons.unet import build_unet

matplotlib.use("Agg")


def test_unet_skips_and_draw_unet():
    """Each up-path concat takes its skip from the down-path layer of the same resolution, in the
    mirrored order (unet.py's skip stack), found from the public layer.input / layer.output."""
    model = build_unet(dict(image_size=16, channels=3, base_width=8, channel_mults=(1, 2), num_res_blocks=1,
                            attention_resolutions=(8,), groups=4))
    assert plotting.unet_skips(model) == {"up1_concat0": "down1_attn0", "up1_concat1": "down0_downsample",
                                          "up0_concat0": "down0_res0", "up0_concat1": "conv_in"}
    ax = plotting.draw_unet(model)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["8x8\nlevel 1: 16 ch", "16x16\nlevel 0: 8 ch"]


def test_animated_gif_has_one_frame_per_step():
    frames = np.random.default_rng(0).uniform(-1, 1, (5, 4, 8, 8, 3)).astype("float32")
    gif = plotting.animated_gif(frames, [f"t = {t}" for t in range(5)], ncols=4, scale=2)
    image = Image.open(io.BytesIO(gif))
    assert gif[:6] == b"GIF89a" and image.n_frames == 5 and image.size == (2 * (4 * 9 - 1), 2 * 8 + 18)
