"""Reader adapters over OpenSlide, tiffslide and Pillow: one ``read_level`` with white padding and one-line decode errors."""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from .info import SlideInfo
from .mpp import _mean_mpp, _ome_mpp_xy, mpp_xy

# Not bad input: never turned into InputError.  Anything else a reader library raises on a file
# (they raise all sorts on malformed input) becomes one, chained so --debug shows the traceback.
_BUG_ERRORS = (MemoryError,)


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    s = " ".join(str(e).split()) if not isinstance(e, str) else " ".join(e.split())
    if isinstance(e, BaseException) and not s:
        s = type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _to_rgb8(a: np.ndarray) -> np.ndarray:
    """Any (h, w[, c]) array -> (h, w, 3) uint8 RGB; alpha is composited on white."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype != np.uint8:
        if a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        elif np.issubdtype(a.dtype, np.integer):
            bits = 8 * a.dtype.itemsize
            a = np.clip(a.astype(np.int64) >> max(bits - 8, 0), 0, 255).astype(np.uint8)
        else:  # float: assume 0..1 when it looks like it, else 0..255
            f = a.astype(np.float32)
            if np.nanmax(f, initial=0) <= 1.0:
                f = f * 255
            a = np.clip(np.nan_to_num(f), 0, 255).round().astype(np.uint8)
    c = a.shape[2]
    if c in (2, 4) and a[:, :, -1].min() == 255:  # opaque (inside a slide, always): the alpha goes
        a = a[:, :, :-1]
        c -= 1
    elif c in (2, 4):  # gray+alpha or RGBA
        alpha = a[:, :, -1:].astype(np.uint16)
        col = a[:, :, :-1].astype(np.uint16)
        col = (col * alpha + 255 * (255 - alpha) + 127) // 255
        a = col.astype(np.uint8)
        c -= 1
    if c == 1:
        a = np.repeat(a, 3, axis=2)
    elif c > 3:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _decode_error(path, level: int, x: int, y: int, w: int, h: int, e: BaseException) -> InputError:
    """The one-line error for pixel data that a reader library could not decode."""
    return InputError(f"{path}: cannot decode pixel data at level {level}, x={x} y={y} {w}x{h} ({_one_line(e)})")


def _white(h: int, w: int) -> np.ndarray:
    return np.full((max(h, 0), max(w, 0), 3), 255, np.uint8)


class _BaseReader:
    """Common part of the adapters: bounds, white padding, error wrapping."""

    name = ""

    def __init__(self, path: str):
        self.path = path
        self.info: SlideInfo | None = None  # set by open_slide
        self._reopen: tuple | None = None     # (function, args) that reopen this slide: set by open_slide

    # adapters implement: _level_dims, _level_ds, _read_px(level, lx, ly, w, h) (in bounds)
    def _read_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def level_origin(self, level: int, x: int) -> float:
        """Level-L coordinate of the first pixel returned by read_level(level, x, ...)."""
        if level == 0:
            return float(x)
        return float(round(x / self._level_ds[level]))

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        w, h = int(w), int(h)
        if not 0 <= level < len(self._level_dims):
            raise ValueError(f"level {level} out of range (slide has {len(self._level_dims)})")
        lx, ly = int(self.level_origin(level, x)), int(self.level_origin(level, y))
        lw, lh = self._level_dims[level]
        cx0, cy0, cx1, cy1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        out = _white(h, w)
        if cx1 <= cx0 or cy1 <= cy0:
            return out
        try:
            part = self._read_px(level, cx0, cy0, cx1 - cx0, cy1 - cy0)
        except _BUG_ERRORS:
            raise
        except Exception as e:
            raise _decode_error(self.path, level, x, y, w, h, e) from e
        out[cy0 - ly : cy1 - ly, cx0 - lx : cx1 - lx] = part
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        """Pickled as how it was opened (a worker process reopens the slide by path)."""
        if self._reopen is None:
            raise TypeError(f"{self!r}: only a reader made by open_slide can be pickled")
        return self._reopen

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r}>"


class _OpenSlideReader(_BaseReader):
    name = "openslide"

    def __init__(self, path: str):
        super().__init__(path)
        import openslide

        self._os = openslide
        self._slide = openslide.OpenSlide(path)
        self._level_dims = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self._level_ds = tuple(float(d) for d in self._slide.level_downsamples)
        p = self._slide.properties
        self.vendor = p.get(openslide.PROPERTY_NAME_VENDOR) or "unknown"
        xy = mpp_xy(p.get(openslide.PROPERTY_NAME_MPP_X), p.get(openslide.PROPERTY_NAME_MPP_Y))
        if not any(xy):      # a tiled OME-TIFF opened as a generic TIFF: its OME-XML has the pixel size
            desc = p.get("tiff.ImageDescription")
            xy = _ome_mpp_xy(desc if isinstance(desc, str) else None)
        self.metadata_mpp_xy = xy
        self.metadata_mpp = _mean_mpp(*xy)
        self.plain = False

    def level_origin(self, level: int, x: int) -> float:
        # OpenSlide places pixel 0 at level coordinate x / downsample (fractional: it interpolates).
        # Negative coordinates are truncated inconsistently by OpenSlide, so read_level handles
        # them itself: the origin is then the nearest whole level pixel.
        ds = self._level_ds[level]
        return x / ds if x >= 0 else float(round(x / ds))

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        w, h, x, y = int(w), int(h), int(x), int(y)
        if w <= 0 or h <= 0:
            return _white(h, w)
        if not 0 <= level < len(self._level_dims):
            raise ValueError(f"level {level} out of range (slide has {len(self._level_dims)})")
        lw, lh = self._level_dims[level]
        ox, oy = self.level_origin(level, x), self.level_origin(level, y)
        if ox >= lw or oy >= lh or ox + w <= 0 or oy + h <= 0:
            return _white(h, w)
        # negative side: start reading at level pixel 0 and pad with white
        px, py = (int(-ox) if x < 0 else 0), (int(-oy) if y < 0 else 0)
        rx, ry = max(x, 0), max(y, 0)
        rw, rh = w - px, h - py
        try:
            img = self._slide.read_region((rx, ry), level, (rw, rh))
            part = _to_rgb8(np.asarray(img))
        except _BUG_ERRORS:
            raise
        except Exception as e:
            raise _decode_error(self.path, level, x, y, w, h, e) from e
        if px == 0 and py == 0:
            return part
        out = _white(h, w)
        out[py:, px:] = part
        return out

    def close(self) -> None:
        s, self._slide = getattr(self, "_slide", None), None
        if s is not None:
            s.close()


class _TiffSlideReader(_BaseReader):
    name = "tiffslide"

    def __init__(self, path: str):
        super().__init__(path)
        import tiffslide

        self._slide = tiffslide.TiffSlide(path)
        self._level_dims = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self._level_ds = tuple(float(d) for d in self._slide.level_downsamples)
        p = self._slide.properties
        desc = p.get("tiff.ImageDescription")
        try:
            series = int(p.get("tiffslide.series-index") or 0)
        except (TypeError, ValueError):
            series = 0
        ome = _ome_mpp_xy(desc if isinstance(desc, str) else None, series)
        is_ome = isinstance(desc, str) and "<OME" in desc[:2000]
        vendor = p.get("tiffslide.vendor")
        self.vendor = vendor or ("ome" if is_ome else "generic-tiff")
        self.metadata_mpp_xy = ome if any(ome) else mpp_xy(p.get("tiffslide.mpp-x"), p.get("tiffslide.mpp-y"))
        self.metadata_mpp = _mean_mpp(*self.metadata_mpp_xy)
        # a single-level TIFF with no slide metadata is a plain image: resolution tags are suspect
        self.plain = vendor is None and not is_ome and len(self._level_dims) == 1

    def _read_px(self, level, lx, ly, w, h):
        ds = self._level_ds[level]
        # tiffslide maps a level-0 location to int(x / ds) at the level; find x that lands on lx
        bx, by = self._base(lx, ds), self._base(ly, ds)
        a = self._slide.read_region((bx, by), level, (w, h), as_array=True, padding=False)
        a = _to_rgb8(a)
        if a.shape[:2] != (h, w):
            raise ValueError(f"reader returned {a.shape[1]}x{a.shape[0]} pixels, expected {w}x{h}")
        return a

    @staticmethod
    def _base(lv: int, ds: float) -> int:
        if ds == 1.0:
            return lv
        b = math.ceil(lv * ds - 1e-9)
        for cand in (b, b - 1, b + 1):
            if int(cand / ds) == lv:
                return cand
        return b

    def close(self) -> None:
        s, self._slide = getattr(self, "_slide", None), None
        if s is not None:
            s.close()


class _ImageReader(_BaseReader):
    """Plain raster images through Pillow, decoded fully into memory at open time."""

    name = "image"

    def __init__(self, path: str):
        super().__init__(path)
        from PIL import Image

        from ..image_in import MAX_PIXELS

        with Image.open(path) as im:
            self.format = im.format or "image"
            dpi = im.info.get("dpi")
            if im.size[0] * im.size[1] > MAX_PIXELS:     # the one pixel limit of whole-image decodes, checked first
                raise ValueError(f"{im.size[0]}x{im.size[1]} px is more than a plain image may have "
                                 f"({MAX_PIXELS / 1e6:.0f} Mpx); convert it to a tiled pyramidal TIFF")
            im.load()
            self._arr = self._to_array(im)
        h, w = self._arr.shape[:2]
        self._level_dims = ((w, h),)
        self._level_ds = (1.0,)
        self.vendor = "image"
        self.metadata_mpp = None
        if dpi:
            try:
                self.metadata_mpp_xy = mpp_xy(*(25400.0 / float(d) for d in dpi[:2]))
                self.metadata_mpp = _mean_mpp(*self.metadata_mpp_xy)
            except (TypeError, ValueError, ZeroDivisionError):
                self.metadata_mpp = None
        self.plain = True

    @staticmethod
    def _to_array(im) -> np.ndarray:
        mode = im.mode
        if mode in ("RGB", "RGBA", "L", "LA"):
            return _to_rgb8(np.asarray(im))
        if mode.startswith("I;16"):
            return _to_rgb8(np.asarray(im).astype(np.uint16))
        if mode in ("P", "PA") or "transparency" in im.info:
            return _to_rgb8(np.asarray(im.convert("RGBA")))
        if mode in ("I", "F"):
            return _to_rgb8(np.asarray(im.convert("L")))
        return _to_rgb8(np.asarray(im.convert("RGB")))

    def _read_px(self, level, lx, ly, w, h):
        return self._arr[ly : ly + h, lx : lx + w]

    def close(self) -> None:
        self._arr = np.zeros((0, 0, 3), np.uint8)
