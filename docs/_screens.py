"""What the screenshot scripts in ``docs/`` share: letting Qt draw, captioning a picture and
scaling it to a common height."""

from __future__ import annotations

import time

import numpy as np


def settle(app, n: int = 20) -> None:
    """Process Qt events for about ``n`` × 30 ms, so the canvas and widgets are drawn."""
    for _ in range(n):
        app.processEvents()
        time.sleep(0.03)


def caption(img: np.ndarray, text: str, size: int = 18) -> np.ndarray:
    """``img`` (H×W×3|4 uint8) under a dark band with ``text`` in it, as RGB uint8."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img[..., :3])
    band = 34
    canvas = Image.new("RGB", (pil.width, pil.height + band), (38, 41, 48))
    canvas.paste(pil, (0, band))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        font = ImageFont.load_default()
    draw.text((10, 7), text, fill=(235, 235, 235), font=font)
    return np.asarray(canvas)


def fit_height(img: np.ndarray, h: int) -> np.ndarray:
    """``img`` (H×W×3|4 uint8) scaled to height ``h`` (Lanczos), as RGB uint8."""
    from PIL import Image

    pil = Image.fromarray(img[..., :3])
    return np.asarray(pil.resize((round(pil.width * h / pil.height), h), Image.Resampling.LANCZOS))
