"""`builtin:glyphs`, the built-in training dataset: colored shapes on a plain background, with captions.

Rendered with Pillow at the size a job trains at (drawn four times larger, then scaled down, for smooth
edges), from a fixed seed, so every worker makes the same images offline. Four shapes in four colors,
each a little moved and resized: simple enough for a small UNet to learn in a few minutes on a CPU,
varied enough that its samples show whether it did.
"""

import random

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 200, 30)}
BACKGROUND = (245, 245, 240)
COUNT = 256
_SUPERSAMPLE = 4


def render_glyphs(size: int, count: int = COUNT, seed: int = 0) -> list[tuple[Image.Image, str]]:
    """`count` images of `size`×`size` pixels, each with its caption ("a red circle")."""
    rng = random.Random(seed)
    glyphs = []
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        color = list(COLORS)[index // len(SHAPES) % len(COLORS)]
        radius = size * rng.uniform(0.25, 0.35)
        center_x = size / 2 + rng.uniform(-0.1, 0.1) * size
        center_y = size / 2 + rng.uniform(-0.1, 0.1) * size
        glyphs.append((_draw(shape, COLORS[color], size, center_x, center_y, radius), f"a {color} {shape}"))
    return glyphs


def _draw(shape: str, fill: tuple[int, int, int], size: int, x: float, y: float, r: float) -> Image.Image:
    scale = _SUPERSAMPLE
    image = Image.new("RGB", (size * scale, size * scale), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x, y, r = x * scale, y * scale, r * scale
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
    else:  # a cross of two bars
        half_width = r * 0.4
        draw.rectangle([x - r, y - half_width, x + r, y + half_width], fill=fill)
        draw.rectangle([x - half_width, y - r, x + half_width, y + r], fill=fill)
    return image.resize((size, size), Image.Resampling.LANCZOS)
