"""The one guarded decode of whole images the tool reads: ROI masks, dataset images, labels and type maps,
plain-image slides.

The size an image claims is read from its header and checked against a pixel limit *before* anything is
decoded, so a small file claiming gigapixels (a decompression bomb) is one line, not gigabytes of memory.
Every failure is one :class:`~wsi_nuc.errors.InputError` naming the file and the cause.
(Pyramidal slides are never decoded whole: they are read region by region, see :mod:`wsi_nuc.slide`.)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, one_line

MAX_PIXELS = 1 << 27           # 134 Mpx: a 1:4 mask of a 46000 x 46000 slide; far above any dataset image
_TIFF = (".tif", ".tiff")


def _cause(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _too_large(path, what: str, shape, limit: int) -> InputError:
    dims = "x".join(str(int(s)) for s in shape)
    return InputError(f"{one_line(path)}: {what} claims {dims} pixels, more than the {limit / 1e6:.0f} Mpx "
                      f"accepted (a decompression bomb, or save it at a smaller size)")


def _read_tiff(path: Path, what: str, limit: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise ValueError("no image in the TIFF")
        s = tf.series[0]
        shape = tuple(int(v) for v in s.shape)
        px = int(np.prod(shape[:-1] if len(shape) == 3 and shape[-1] <= 4 else shape, dtype=np.float64))
        if px > limit:
            raise _too_large(path, what, shape, limit)
        return np.asarray(s.asarray())


def _read_pillow(path: Path, what: str, limit: int, mode: str | None, keep: tuple) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:          # the header only: nothing is decoded yet
        w, h = im.size
        if w * h > limit:
            raise _too_large(path, what, (w, h), limit)
        if mode is not None and im.mode != mode and im.mode not in keep:
            im = im.convert(mode)
        return np.asarray(im)


def read_image(path: str | Path, what: str = "image", limit: int | None = None, mode: str | None = None,
               keep: tuple = ()) -> np.ndarray:
    """The pixels of the image at ``path`` (TIFF through tifffile, anything else through Pillow, converted
    to Pillow ``mode`` when given unless its mode is in ``keep``), after checking the size its header
    claims against ``limit`` pixels (default :data:`MAX_PIXELS`).

    ``what`` names the image in messages ("ROI mask", "label image", ...).
    """
    import warnings

    from PIL import Image

    path = Path(path)
    limit = MAX_PIXELS if limit is None else limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # our own limit decides
            if path.suffix.lower() in _TIFF:
                return _read_tiff(path, what, limit)
            return _read_pillow(path, what, limit, mode, keep)
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{one_line(path)}: {what} is too large to decode here (out of memory)") from None
    except FileNotFoundError:
        raise InputError(f"{one_line(path)}: no such file") from None
    except Exception as e:  # noqa: BLE001 - image libraries raise many kinds on a bad file
        raise InputError(f"{one_line(path)}: cannot decode {what} (it cannot be read as an image: "
                         f"{one_line(_cause(e))})") from e
