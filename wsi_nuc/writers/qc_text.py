"""qc.png's text: a font, and unit labels ("µm", "mm²") written as that font can draw them."""
from __future__ import annotations

import numpy as np
from PIL import ImageFont

# A system font with "µ" and "²" where one is installed (DejaVu Sans: most Linux systems; Arial: macOS and
# Windows); else Pillow's own font, which has neither, and the units are written "um" and "^2".
_FONT_FILES = ("DejaVuSans.ttf", "Arial.ttf", "arial.ttf")
_ASCII = str.maketrans({"µ": "u", "²": "^2"})


def qc_font():
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, 12)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def has_glyphs(font, chars: str = "µ²") -> bool:
    """Whether ``font`` draws these characters (not its missing-glyph box)."""
    def mask(c):
        m = font.getmask(c)
        return m.size, np.asarray(m).tobytes() if m.size[0] and m.size[1] else b""

    try:
        missing = mask("\uffff")
        return all(mask(c) != missing for c in chars)
    except Exception:
        return False


def units_for(text: str, font) -> str:
    """``text`` as ``font`` can draw it: "µm" and "²" kept, or written "um" and "^2"."""
    return text if has_glyphs(font) else text.translate(_ASCII)
