"""Opening a slide: path checks, trying each reader in turn, the probe read and the one-line error for each failure."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .info import SlideInfo, SlideReader
from .mpp import MPP_MAX, MPP_MIN, _positive, check_mpp, check_square
from .readers import _BUG_ERRORS, _BaseReader, _ImageReader, _OpenSlideReader, _TiffSlideReader, _one_line

_PROBE_PX = 8
# A TIFF whose claimed pixels would need more than this many raw bytes per byte of file is refused when it
# is large: real slides compress 5-100:1 (JPEG, mostly glass); 100000^2 px in 1.2 MB (every tile pointing at
# one deflated tile) is a decompression bomb that would keep tissue detection decoding for hours.
_BOMB_RATIO = 2000
_BOMB_MIN_PX = 1 << 28
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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


class _Failures:
    """Why each reader could not open a file: unrecognised it, recognised it but failed to open it
    (``opening``), or opened it but its probe read failed (``decoding``)."""

    def __init__(self) -> None:
        self.opening: list[str] = []
        self.decoding: list[str] = []
        self.unrecognised: list[str] = []


def _try_openers(path: str, head: bytes) -> _BaseReader:
    """The first reader (OpenSlide, tiffslide, then Pillow for a file that is not a TIFF) that opens ``path``
    and reads a probe; else one InputError saying why none did."""
    is_tiff = head[:4] in _TIFF_MAGIC
    why = _Failures()
    r = _attempt("OpenSlide", _OpenSlideReader, path, is_tiff, why)
    if r is None:
        r = _attempt("tiffslide", _TiffSlideReader, path, is_tiff, why)
    if r is None and not is_tiff:
        r = _attempt("Pillow", _ImageReader, path, is_tiff, why)
    if r is not None:
        return r
    raise _no_reader(path, is_tiff, why)


def _attempt(label: str, factory, path: str, is_tiff: bool, why: _Failures) -> _BaseReader | None:
    """``factory(path)`` probed with a small read, or None with the reason noted in ``why``."""
    import openslide

    try:
        r = factory(path)
    except openslide.OpenSlideUnsupportedFormatError:
        why.unrecognised.append(label)
        return None
    except _BUG_ERRORS as e:
        if isinstance(e, MemoryError):
            why.opening.append(f"{label}: out of memory")
            return None
        raise
    except Exception as e:  # noqa: BLE001 - every reader failure becomes a message
        msg = _one_line(e)
        if label == "tiffslide" and not is_tiff:
            why.unrecognised.append(label)
        elif label == "Pillow" and ("cannot identify image file" in msg or "UnidentifiedImageError" in type(e).__name__):
            why.unrecognised.append(label)
        elif label == "Pillow" and type(e).__name__ == "DecompressionBombError":
            why.opening.append(f"Pillow: image too large to read as a plain image ({msg}); convert it to a tiled pyramidal TIFF")
        else:
            why.opening.append(f"{label}: {msg}")
        return None
    try:
        _probe(r)
    except _BUG_ERRORS as e:
        r.close()
        if isinstance(e, MemoryError):
            why.decoding.append(f"{label}: out of memory")
            return None
        raise
    except Exception as e:  # noqa: BLE001
        r.close()
        why.decoding.append(f"{label}: {_unwrap(e)}")
        return None
    return r


def _no_reader(path: str, is_tiff: bool, why: _Failures) -> InputError:
    """The one line for a file no reader opened."""
    def join(msgs):
        causes = [m.split(": ", 1)[-1] for m in msgs]
        if len(set(causes)) == 1:
            return causes[0]
        return "; ".join(msgs)

    open_errors, decode_errors = why.opening, why.decoding
    if decode_errors and not open_errors:
        return InputError(f"{path}: slide opens but its pixel data cannot be decoded ({join(decode_errors)})")
    if decode_errors:
        parts = open_errors + [m.replace(": ", ": opens but pixel data cannot be decoded: ", 1) for m in decode_errors]
        return InputError(f"{path}: cannot read slide ({'; '.join(parts)})")
    if open_errors and (not is_tiff or any(m.startswith("OpenSlide") for m in open_errors)):
        # a reader recognised the format but could not open it
        return InputError(f"{path}: cannot open file ({join(open_errors)})")
    if is_tiff:
        cause = f" ({'; '.join(open_errors)})" if open_errors else ""
        return InputError(
            f"{path}: looks like a TIFF but OpenSlide/tiffslide cannot read its structure "
            f"(truncated or corrupt file?){cause}"
        )
    return InputError(f"{path}: not a slide file OpenSlide/tiffslide/Pillow can open")


def _check_claimed_size(path: str, w: int, h: int) -> None:
    """Refuse a large TIFF whose claimed level-0 pixels are implausibly many for its file size."""
    size = os.path.getsize(path)
    raw = 3 * w * h
    if w * h >= _BOMB_MIN_PX and raw > _BOMB_RATIO * size:
        raise InputError(f"{path}: claims {w}x{h} px ({raw / 2**30:.1f} GiB of pixels) in a {size / 1e6:.2g} MB "
                         f"file ({raw / size:,.0f}:1); no slide compresses like that (a decompression bomb?): "
                         f"refused")


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
    r._reopen = (open_slide, (spath, mpp, check))
    if check:
        try:
            check_mpp(r.info)
            if source == "metadata":
                check_square(getattr(r, "metadata_mpp_xy", None), spath)
        except InputError:
            r.close()
            raise
    return r
