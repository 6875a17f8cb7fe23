"""Reading whole-slide images: one small reader interface over OpenSlide, tiffslide and Pillow.

``open_slide(path)`` tries, in order:

1. OpenSlide (Aperio, Hamamatsu, MIRAX, DICOM, generic tiled TIFF, ...);
2. tiffslide (OME-TIFF and other TIFFs OpenSlide refuses, including plain single-image TIFFs);
3. Pillow, for plain images (PNG, JPEG, BMP, ...; never for files that start like a TIFF).

Every reader opened by ``open_slide`` has passed a tiny probe read (a few pixels at the slide
centre, coarsest level), so a slide whose tile data cannot be decoded fails when it is opened.
Every problem with the input becomes one :class:`~wsi_nuc.errors.InputError` whose message is a
single line naming the file and the cause.

Microns per pixel (mpp)
-----------------------
* Slide formats (anything OpenSlide opens; OME-TIFF; TIFFs with a vendor or a pyramid):
  mpp comes from the metadata (``openslide.mpp-x/y``, OME ``PhysicalSizeX/Y`` with their unit,
  ``tiffslide.mpp-x/y``) and is checked against ``MPP_MIN``..``MPP_MAX``.
* Plain images (Pillow, and single-level TIFFs without vendor or OME metadata): their
  resolution tags are usually a default (72, 96 or 300 dpi), so they are used only when they give
  a plausible 0.1-2 um/px; otherwise the image has no mpp and ``--mpp`` is needed.
* ``mpp=`` (the ``--mpp`` option) always wins over metadata (``mpp_source="override"``).

Coordinates
-----------
``read_level(level, x, y, w, h)`` takes ``x, y`` in level-0 pixels like OpenSlide and returns
``(h, w, 3)`` RGB uint8 at that level; pixels outside the slide are white.  ``read_region`` maps a
float level-0 box onto an exact output grid: output pixel ``(r, c)`` covers level-0
``[x0 + c*sx, x0 + (c+1)*sx) x [y0 + r*sy, y0 + (r+1)*sy)`` with ``sx = w0/out_w``,
``sy = h0/out_h``, so tiles read separately stitch seamlessly.

Readers hold no global state; open one per worker process.  Pickling a reader pickles its path
and options and reopens the slide on unpickling.
"""
from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import InputError

MPP_MIN, MPP_MAX = 0.1, 2.0

# Largest level window (in level pixels) read in one piece by read_region; bigger requests are
# read in chunks so that thumbnails of single-level gigapixel slides do not need gigabytes.
_MAX_WINDOW_PX = 4096 * 4096
_PROBE_PX = 8
# A TIFF whose claimed pixels would need more than this many raw bytes per byte of file is refused when it
# is large: real slides compress 5-100:1 (JPEG, mostly glass); 100000^2 px in 1.2 MB (every tile pointing at
# one deflated tile) is a decompression bomb that would keep tissue detection decoding for hours.
_BOMB_RATIO = 2000
_BOMB_MIN_PX = 1 << 28
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Not bad input: never turned into InputError.  Anything else a reader library raises on a file
# (they raise all sorts on malformed input) becomes one, chained so --debug shows the traceback.
_BUG_ERRORS = (MemoryError,)
_OME_UNITS_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6, "å": 1e-4, "Å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
}


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class SlideInfo:
    path: str
    width: int  # level 0
    height: int
    mpp: float | None  # microns per level-0 pixel (after --mpp); None only with check=False
    mpp_source: str  # "metadata" | "override" | "none"
    vendor: str  # "aperio", "generic-tiff", "ome", "dicom", "image", ...
    reader: str  # "openslide" | "tiffslide" | "image"
    level_dimensions: tuple  # ((w, h), ...)
    level_downsamples: tuple  # (1.0, ...)
    metadata_mpp: float | None = field(default=None)  # what the file itself says, if anything

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["level_dimensions"] = [list(map(int, wh)) for wh in self.level_dimensions]
        d["level_downsamples"] = [float(s) for s in self.level_downsamples]
        return d


@runtime_checkable
class SlideReader(Protocol):
    info: SlideInfo

    def read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- helpers


def _one_line(e: BaseException | str, limit: int = 300) -> str:
    s = " ".join(str(e).split()) if not isinstance(e, str) else " ".join(e.split())
    if isinstance(e, BaseException) and not s:
        s = type(e).__name__
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _positive(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _mean_mpp(mx, my) -> float | None:
    mx, my = _positive(mx), _positive(my)
    if mx and my:
        return (mx + my) / 2
    return mx or my


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
    if c in (2, 4):  # gray+alpha or RGBA
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


# --------------------------------------------------------------------------- readers


class _BaseReader:
    """Common part of the adapters: bounds, white padding, error wrapping."""

    name = ""

    def __init__(self, path: str):
        self.path = path
        self.info: SlideInfo | None = None  # set by open_slide
        self._open_args: tuple = (path, None, True)

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
        return (open_slide, self._open_args)

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
        self.metadata_mpp = _mean_mpp(p.get(openslide.PROPERTY_NAME_MPP_X), p.get(openslide.PROPERTY_NAME_MPP_Y))
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


def _ome_mpp(description: str | None, series: int = 0) -> float | None:
    """PhysicalSizeX/Y of the OME-XML image (with units), in um; None if absent."""
    if not description or "<OME" not in description[:2000]:
        return None
    try:
        root = ET.fromstring(description.encode("utf-8") if isinstance(description, str) else description)
    except ET.ParseError:
        return None
    images = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None
    img = images[series] if 0 <= series < len(images) else images[0]
    pixels = next((el for el in img.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    vals = []
    for ax in ("X", "Y"):
        v = _positive(pixels.get(f"PhysicalSize{ax}"))
        unit = (pixels.get(f"PhysicalSize{ax}Unit") or "µm").strip()
        factor = _OME_UNITS_UM.get(unit, _OME_UNITS_UM.get(unit.lower()))
        vals.append(v * factor if v is not None and factor is not None else None)
    return _mean_mpp(*vals)


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
        ome = _ome_mpp(desc if isinstance(desc, str) else None, series)
        is_ome = isinstance(desc, str) and "<OME" in desc[:2000]
        vendor = p.get("tiffslide.vendor")
        self.vendor = vendor or ("ome" if is_ome else "generic-tiff")
        self.metadata_mpp = ome if ome is not None else _mean_mpp(p.get("tiffslide.mpp-x"), p.get("tiffslide.mpp-y"))
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

        with Image.open(path) as im:
            self.format = im.format or "image"
            dpi = im.info.get("dpi")
            im.load()
            self._arr = self._to_array(im)
        h, w = self._arr.shape[:2]
        self._level_dims = ((w, h),)
        self._level_ds = (1.0,)
        self.vendor = "image"
        self.metadata_mpp = None
        if dpi:
            try:
                self.metadata_mpp = _mean_mpp(*(25400.0 / float(d) for d in dpi[:2]))
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


# --------------------------------------------------------------------------- opening


def _check_path(path: str) -> bytes:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot access file ({_one_line(e.strerror or e)})") from None
    if p.is_dir():
        raise InputError(f"{path}: is a directory, not a slide file")
    if not p.is_file():
        raise InputError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    try:
        with open(p, "rb") as f:
            return f.read(16)
    except OSError as e:
        raise InputError(f"{path}: cannot read file ({_one_line(e.strerror or e)})") from None


def _probe(reader: _BaseReader) -> None:
    """Decode a few pixels at the slide centre on the coarsest level."""
    lvl = len(reader._level_dims) - 1
    lw, lh = reader._level_dims[lvl]
    ds = reader._level_ds[lvl]
    n = max(1, min(_PROBE_PX, lw, lh))
    lx, ly = max(0, lw // 2 - n // 2), max(0, lh // 2 - n // 2)
    a = reader.read_level(lvl, int(round(lx * ds)), int(round(ly * ds)), n, n)
    if a.shape != (n, n, 3):
        raise ValueError(f"probe read returned shape {a.shape}")


def _unwrap(e: BaseException) -> str:
    """Cause of a probe failure without our own 'path: cannot decode ...' prefix."""
    if isinstance(e, InputError) and e.__cause__ is not None:
        return _one_line(e.__cause__)
    return _one_line(e)


def _try_openers(path: str, head: bytes) -> _BaseReader:
    import openslide

    is_tiff = head[:4] in _TIFF_MAGIC
    open_errors: list[str] = []  # recognised the file but failed to open it
    decode_errors: list[str] = []  # opened, but the probe read failed
    unrecognised = []

    def attempt(label, factory):
        try:
            r = factory(path)
        except openslide.OpenSlideUnsupportedFormatError:
            unrecognised.append(label)
            return None
        except _BUG_ERRORS as e:
            if isinstance(e, MemoryError):
                open_errors.append(f"{label}: out of memory")
                return None
            raise
        except Exception as e:  # noqa: BLE001 - every reader failure becomes a message
            msg = _one_line(e)
            if label == "tiffslide" and not is_tiff:
                unrecognised.append(label)
            elif label == "Pillow" and ("cannot identify image file" in msg or "UnidentifiedImageError" in type(e).__name__):
                unrecognised.append(label)
            elif label == "Pillow" and type(e).__name__ == "DecompressionBombError":
                open_errors.append(f"Pillow: image too large to read as a plain image ({msg}); convert it to a tiled pyramidal TIFF")
            else:
                open_errors.append(f"{label}: {msg}")
            return None
        try:
            _probe(r)
        except _BUG_ERRORS as e:
            r.close()
            if isinstance(e, MemoryError):
                decode_errors.append(f"{label}: out of memory")
                return None
            raise
        except Exception as e:  # noqa: BLE001
            r.close()
            decode_errors.append(f"{label}: {_unwrap(e)}")
            return None
        return r

    r = attempt("OpenSlide", _OpenSlideReader)
    if r is None:
        r = attempt("tiffslide", _TiffSlideReader)
    if r is None and not is_tiff:
        r = attempt("Pillow", _ImageReader)
    if r is not None:
        return r

    def join(msgs):
        causes = [m.split(": ", 1)[-1] for m in msgs]
        if len(set(causes)) == 1:
            return causes[0]
        return "; ".join(msgs)

    if decode_errors and not open_errors:
        raise InputError(f"{path}: slide opens but its pixel data cannot be decoded ({join(decode_errors)})")
    if decode_errors:
        parts = open_errors + [m.replace(": ", ": opens but pixel data cannot be decoded: ", 1) for m in decode_errors]
        raise InputError(f"{path}: cannot read slide ({'; '.join(parts)})")
    if open_errors and (not is_tiff or any(m.startswith("OpenSlide") for m in open_errors)):
        # a reader recognised the format but could not open it
        raise InputError(f"{path}: cannot open file ({join(open_errors)})")
    if is_tiff:
        cause = f" ({'; '.join(open_errors)})" if open_errors else ""
        raise InputError(
            f"{path}: looks like a TIFF but OpenSlide/tiffslide cannot read its structure "
            f"(truncated or corrupt file?){cause}"
        )
    raise InputError(f"{path}: not a slide file OpenSlide/tiffslide/Pillow can open")


def _check_claimed_size(path: str, w: int, h: int) -> None:
    """Refuse a large TIFF whose claimed level-0 pixels are implausibly many for its file size."""
    size = os.path.getsize(path)
    raw = 3 * w * h
    if w * h >= _BOMB_MIN_PX and raw > _BOMB_RATIO * size:
        raise InputError(f"{path}: claims {w}x{h} px ({raw / 2**30:.1f} GiB of pixels) in a {size / 1e6:.2g} MB "
                         f"file ({raw / size:,.0f}:1); no slide compresses like that (a decompression bomb?): "
                         f"refused")


def check_mpp(info_or_mpp, path: str | None = None, source: str | None = None) -> float:
    """Return a usable mpp or raise InputError (one line naming ``path``).

    ``info_or_mpp`` is a SlideInfo or a number/None; ``source`` ("metadata"/"override") only
    changes the wording and defaults to the SlideInfo's ``mpp_source``.
    """
    hint_tags = False
    if isinstance(info_or_mpp, SlideInfo):
        info = info_or_mpp
        mpp, path = info.mpp, path or info.path
        source = source or info.mpp_source
        hint_tags = info.vendor in ("generic-tiff", "image")
    else:
        mpp = info_or_mpp
        source = source or "metadata"
    if mpp is None:
        raise InputError(f"{path}: no microns-per-pixel in the slide metadata; pass --mpp X")
    try:
        mpp = float(mpp)
    except (TypeError, ValueError):
        raise InputError(f"{path}: mpp {mpp!r} is not a number") from None
    if not math.isfinite(mpp) or mpp <= 0:
        raise InputError(f"{path}: invalid resolution ({mpp} µm/px); pass --mpp X (a positive number)")
    src = " from --mpp" if source == "override" else ""
    if mpp > MPP_MAX:
        hint = "; pass --mpp X if the TIFF resolution tags are wrong" if hint_tags and source != "override" else ""
        raise InputError(
            f"{path}: resolution too coarse for nuclei ({_fmt(mpp)} µm/px{src}; need ≤ {_fmt(MPP_MAX)} µm/px){hint}"
        )
    if mpp < MPP_MIN:
        hint = "" if source == "override" else "; pass --mpp X if the metadata is wrong"
        raise InputError(
            f"{path}: implausible resolution ({_fmt(mpp)} µm/px{src}; expected {_fmt(MPP_MIN)}–{_fmt(MPP_MAX)}){hint}"
        )
    return mpp


def open_slide(path, mpp: float | None = None, check: bool = True) -> SlideReader:
    """Open a slide or plain image; see the module docstring for readers and mpp rules.

    ``mpp`` overrides the metadata.  With ``check=False`` (for ``wsi-nuc info``) the mpp is not
    required nor range-checked, and ``info.mpp`` may be None or absurd.
    """
    spath = os.fspath(path)
    if mpp is not None:
        m = _positive(mpp)
        if m is None:
            raise InputError(f"{spath}: --mpp must be a positive number, got {mpp!r}")
        mpp = m
    head = _check_path(spath)
    r = _try_openers(spath, head)
    meta = r.metadata_mpp
    if r.plain and meta is not None and not (MPP_MIN <= meta <= MPP_MAX):
        meta = None  # default dpi of a plain image: not a real resolution
    if mpp is not None:
        use, source = mpp, "override"
    elif meta is not None:
        use, source = meta, "metadata"
    else:
        use, source = None, "none"
    w, h = r._level_dims[0]
    if check and head[:4] in _TIFF_MAGIC:
        try:
            _check_claimed_size(spath, int(w), int(h))
        except InputError:
            r.close()
            raise
    r.info = SlideInfo(
        path=spath,
        width=int(w),
        height=int(h),
        mpp=use,
        mpp_source=source,
        vendor=str(r.vendor),
        reader=r.name,
        level_dimensions=tuple(r._level_dims),
        level_downsamples=tuple(r._level_ds),
        metadata_mpp=r.metadata_mpp,
    )
    r._open_args = (spath, mpp, check)
    if check:
        try:
            check_mpp(r.info)
        except InputError:
            r.close()
            raise
    return r


# --------------------------------------------------------------------------- resampling


def best_level(reader, scale: float) -> int:
    """Coarsest level whose downsample is <= scale * 1.01 (scale = level-0 px per output px)."""
    ds = reader.info.level_downsamples
    best = 0
    for i, d in enumerate(ds):
        if d <= scale * 1.01 and d >= ds[best]:
            best = i
    return best


def read_region(reader, x0: float, y0: float, w0: float, h0: float, out_w: int, out_h: int) -> np.ndarray:
    """Level-0 box ``[x0, x0+w0) x [y0, y0+h0)`` resampled to exactly ``(out_h, out_w, 3)`` uint8.

    Output pixel (r, c) covers level-0 ``[x0 + c*sx, x0 + (c+1)*sx)`` (``sx = w0/out_w``), read
    from the coarsest level with downsample <= sx*1.01; area (BOX) filter when reducing, bilinear
    when enlarging.  Pixels outside the slide are white.
    """
    out_w, out_h = int(out_w), int(out_h)
    if out_w <= 0 or out_h <= 0:
        return _white(out_h, out_w)
    if not (w0 > 0 and h0 > 0):
        raise ValueError(f"read_region: empty box {w0}x{h0}")
    sx, sy = w0 / out_w, h0 / out_h
    level = best_level(reader, min(sx, sy))
    return _read_scaled(reader, level, float(x0), float(y0), sx, sy, out_w, out_h)


def _read_scaled(reader, level, x0, y0, sx, sy, out_w, out_h) -> np.ndarray:
    info = reader.info
    # nothing of the slide inside the box: skip reading
    if x0 >= info.width or y0 >= info.height or x0 + sx * out_w <= 0 or y0 + sy * out_h <= 0:
        return _white(out_h, out_w)
    ds = info.level_downsamples[level]
    kx, ky = sx / ds, sy / ds  # level pixels per output pixel
    side = math.isqrt(_MAX_WINDOW_PX) - 4
    tw = max(1, int(side / max(kx, 1e-9)))
    th = max(1, int(side / max(ky, 1e-9)))
    if out_w > tw or out_h > th:  # too big for one window: chunk the output grid
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r0 in range(0, out_h, th):
            r1 = min(out_h, r0 + th)
            for c0 in range(0, out_w, tw):
                c1 = min(out_w, c0 + tw)
                out[r0:r1, c0:c1] = _read_window(reader, level, x0 + c0 * sx, y0 + r0 * sy, sx, sy, c1 - c0, r1 - r0)
        return out
    return _read_window(reader, level, x0, y0, sx, sy, out_w, out_h)


def _read_window(reader, level, x0, y0, sx, sy, out_w, out_h) -> np.ndarray:
    from PIL import Image

    info = reader.info
    if x0 >= info.width or y0 >= info.height or x0 + sx * out_w <= 0 or y0 + sy * out_h <= 0:
        return _white(out_h, out_w)
    ds = info.level_downsamples[level]
    # box in level coordinates
    bx0, by0 = x0 / ds, y0 / ds
    bx1, by1 = (x0 + sx * out_w) / ds, (y0 + sy * out_h) / ds
    lx0, ly0 = math.floor(bx0) - 1, math.floor(by0) - 1
    X, Y = int(round(lx0 * ds)), int(round(ly0 * ds))
    ox, oy = reader.level_origin(level, X), reader.level_origin(level, Y)
    ww = int(math.ceil(bx1 - ox)) + 2
    wh = int(math.ceil(by1 - oy)) + 2
    win = reader.read_level(level, X, Y, ww, wh)
    box = (bx0 - ox, by0 - oy, bx1 - ox, by1 - oy)
    kx, ky = sx / ds, sy / ds
    # exact 1:1 at integer offsets: plain crop
    if kx == 1.0 and ky == 1.0 and float(box[0]).is_integer() and float(box[1]).is_integer():
        c, r = int(box[0]), int(box[1])
        return np.ascontiguousarray(win[r : r + out_h, c : c + out_w])
    resample = Image.Resampling.BOX if min(kx, ky) > 1.0 else Image.Resampling.BILINEAR
    img = Image.fromarray(win, "RGB").resize((out_w, out_h), resample, box=box)
    return np.asarray(img)


def read_thumbnail(reader, max_size: int) -> tuple[np.ndarray, float]:
    """Whole slide with its long side at most ``max_size`` px (never enlarged).

    Returns ``(rgb, scale)``; thumbnail pixel (r, c) covers level-0 ``[c*scale, (c+1)*scale)``.
    The last row/column may extend past the slide edge (white there).
    """
    info = reader.info
    scale = max(1.0, max(info.width, info.height) / max(1, int(max_size)))
    return read_scaled_slide(reader, scale), scale


def read_scaled_slide(reader, scale: float) -> np.ndarray:
    """The whole slide at ``scale`` level-0 px per output px (ceil-sized; white past the edge)."""
    info = reader.info
    out_w = max(1, math.ceil(info.width / scale - 1e-9))
    out_h = max(1, math.ceil(info.height / scale - 1e-9))
    return read_region(reader, 0.0, 0.0, out_w * scale, out_h * scale, out_w, out_h)


__all__ = [
    "MPP_MAX",
    "MPP_MIN",
    "SlideInfo",
    "SlideReader",
    "best_level",
    "check_mpp",
    "open_slide",
    "read_region",
    "read_scaled_slide",
    "read_thumbnail",
]
