"""PNG encoding that keeps the generation parameters inside the image."""

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PARAMETERS_KEY = "diffq"


def encode_png(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG bytes with `parameters` as JSON in a text chunk, so the image says how to remake it."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, json.dumps(parameters, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return json.loads(image.text[PARAMETERS_KEY])
