"""Probe inputs that an X-ray model should refuse, built from nothing or from real X-rays.

They measure the OOD gate (`core.ood.gate`): blank frames, noise, colour "photos", documents, rotated and
inverted X-rays, and a zoomed-out X-ray as a crude stand-in for a paediatric film (a small thorax in a
large field; no real paediatric images are available here, so its rate says little about real children).

Every probe is encoded to PNG bytes and decoded by `core.imaging.reader.read_xray`, the path an upload takes,
so the grey pixels and the colour measure are what the app would see.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SIDE = 512
_WORDS = (
    "patient report invoice total amount date signature please return the form page account number "
    "address summary payment terms conditions reference medical history department of radiology"
).split()


@dataclass(frozen=True)
class Probe:
    kind: str  # "blank", "noise", "photo", "document", "rotated", "inverted", "zoomed_out"
    name: str
    data: bytes  # the encoded file, as it would be uploaded


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def blank_probes() -> list[Probe]:
    return [
        Probe("blank", f"blank-{name}", _png(Image.new("L", (SIDE, SIDE), value)))
        for name, value in (("black", 0), ("white", 255), ("grey", 128))
    ]


def noise_probes(rng: np.random.Generator, count: int = 4) -> list[Probe]:
    probes = []
    for i in range(count):
        if i % 2 == 0:
            pixels = rng.integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)
        else:
            pixels = np.clip(rng.normal(128, 40, size=(SIDE, SIDE)), 0, 255).astype(np.uint8)
        probes.append(Probe("noise", f"noise-{i}", _png(Image.fromarray(pixels))))
    return probes


def photo_probes(rng: np.random.Generator, count: int = 6) -> list[Probe]:
    """Smooth colour gradients with a few blurred coloured shapes: a crude colour photograph."""
    probes = []
    y, x = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    for i in range(count):
        top, bottom = rng.integers(0, 256, size=(2, 3))
        sky = (1 - y)[..., None] * top + y[..., None] * bottom + 30 * np.sin(6 * x)[..., None]
        image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 8))):
            x0, y0 = rng.integers(0, SIDE - 64, size=2)
            w, h = rng.integers(32, SIDE // 2, size=2)
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(1, 4))))
        probes.append(Probe("photo", f"photo-{i}", _png(image)))
    return probes


def document_probes(rng: np.random.Generator, count: int = 4) -> list[Probe]:
    """Black text lines on white, like a scanned letter or a screenshot of a report."""
    probes = []
    for i in range(count):
        size = int(rng.integers(14, 26))
        font = ImageFont.load_default(size=size)
        image = Image.new("L", (SIDE, int(SIDE * 1.3)), 255)
        draw = ImageDraw.Draw(image)
        top = int(rng.integers(20, 60))
        if i % 2:  # a heading bar, as on a form
            draw.rectangle([20, top, SIDE - 20, top + 2 * size], fill=40)
            top += 3 * size
        for line_top in range(top, image.height - 40, int(size * 1.6)):
            words = rng.choice(_WORDS, size=int(rng.integers(4, 9)))
            draw.text((24, line_top), " ".join(words), fill=int(rng.integers(0, 60)), font=font)
        probes.append(Probe("document", f"document-{i}", _png(image)))
    return probes


def xray_probes(xrays: Sequence[tuple[str, np.ndarray]]) -> list[Probe]:
    """Rotated by 90 and 180 degrees, inverted (bone dark), and zoomed out, from real grey X-rays."""
    probes = []
    for name, pixels in xrays:
        image = Image.fromarray(np.ascontiguousarray(pixels))
        probes.append(Probe("rotated", f"{name}-rot90", _png(image.transpose(Image.Transpose.ROTATE_90))))
        probes.append(Probe("rotated", f"{name}-rot180", _png(image.transpose(Image.Transpose.ROTATE_180))))
        probes.append(Probe("inverted", f"{name}-inverted", _png(Image.fromarray(255 - pixels))))
        probes.append(Probe("zoomed_out", f"{name}-zoomed-out", _png(_zoomed_out(image))))
    return probes


def _zoomed_out(image: Image.Image, scale: float = 0.55) -> Image.Image:
    """The X-ray shrunk into the middle of a black field of the same size."""
    small = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BILINEAR)
    canvas = Image.new("L", image.size, 0)
    canvas.paste(small, ((image.width - small.width) // 2, (image.height - small.height) // 2))
    return canvas


def all_probes(xrays: Sequence[tuple[str, np.ndarray]], seed: int = 0) -> Iterator[Probe]:
    rng = np.random.default_rng(seed)
    yield from blank_probes()
    yield from noise_probes(rng)
    yield from photo_probes(rng)
    yield from document_probes(rng)
    yield from xray_probes(xrays)
