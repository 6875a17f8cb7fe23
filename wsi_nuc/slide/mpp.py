"""The microns-per-pixel rules: where mpp comes from (OME-XML, vendor metadata) and which values are refused."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from ..errors import InputError
from .info import SlideInfo

MPP_MIN, MPP_MAX = 0.1, 2.0
_OME_UNITS_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6, "å": 1e-4, "Å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
}



def _fmt(v: float) -> str:
    return f"{v:.4g}"


def _positive(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


ANISOTROPY_MAX = 0.02        # x and y pixel sizes further apart than this (relative): pixels are not square


def _mean_mpp(mx, my) -> float | None:
    mx, my = _positive(mx), _positive(my)
    if mx and my:
        return (mx + my) / 2
    return mx or my


def mpp_xy(mx, my) -> tuple[float | None, float | None]:
    """(x, y) pixel size as positive numbers, None where absent or not a positive number."""
    return _positive(mx), _positive(my)


def check_square(xy, path, override: bool = False) -> None:
    """InputError when the metadata's x and y pixel sizes differ by more than :data:`ANISOTROPY_MAX`: nuclei
    would be segmented and measured stretched. ``override`` (``--mpp`` given): the user decided; accepted.

    >>> check_square((0.5, 0.501), "a.svs")
    >>> check_square((0.499, 0.998), "a.ome.tif")
    Traceback (most recent call last):
    ...
    wsi_nuc.errors.InputError: a.ome.tif: pixels are not square (0.499 x 0.998 µm); ...
    """
    mx, my = xy if xy else (None, None)
    if override or not (mx and my) or abs(mx - my) <= ANISOTROPY_MAX * max(mx, my):
        return
    raise InputError(f"{path}: pixels are not square ({_fmt(mx)} x {_fmt(my)} µm); nuclei would be segmented and "
                     f"measured stretched: resample the slide to square pixels, or pass --mpp X to use one "
                     f"scale anyway")


def _ome_mpp(description: str | None, series: int = 0) -> float | None:
    """PhysicalSizeX/Y of the OME-XML image (with units), their mean, in um; None if absent."""
    return _mean_mpp(*_ome_mpp_xy(description, series))


def _ome_mpp_xy(description: str | None, series: int = 0) -> tuple[float | None, float | None]:
    """PhysicalSizeX/Y of the OME-XML image (with units), in um; None where absent."""
    if not description or "<OME" not in description[:2000]:
        return None, None
    try:
        root = ET.fromstring(description.encode("utf-8") if isinstance(description, str) else description)
    except (ET.ParseError, RecursionError, ValueError):
        return None, None
    images = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None, None
    img = images[series] if 0 <= series < len(images) else images[0]
    pixels = next((el for el in img.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, None
    vals = []
    for ax in ("X", "Y"):
        v = _positive(pixels.get(f"PhysicalSize{ax}"))
        unit = (pixels.get(f"PhysicalSize{ax}Unit") or "µm").strip()
        factor = _OME_UNITS_UM.get(unit, _OME_UNITS_UM.get(unit.lower()))
        vals.append(v * factor if v is not None and factor is not None else None)
    return vals[0], vals[1]


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
        hint = "" if source == "dataset" else "; pass --mpp X (a positive number)"
        raise InputError(f"{path}: invalid resolution ({mpp} µm/px){hint}")
    src = " from --mpp" if source == "override" else ""
    if mpp > MPP_MAX:
        hint = "; pass --mpp X if the TIFF resolution tags are wrong" if hint_tags and source != "override" else ""
        raise InputError(
            f"{path}: resolution too coarse for nuclei ({_fmt(mpp)} µm/px{src}; need ≤ {_fmt(MPP_MAX)} µm/px){hint}"
        )
    if mpp < MPP_MIN:
        hint = "" if source in ("override", "dataset") else "; pass --mpp X if the metadata is wrong"
        raise InputError(
            f"{path}: implausible resolution ({_fmt(mpp)} µm/px{src}; expected {_fmt(MPP_MIN)}–{_fmt(MPP_MAX)}){hint}"
        )
    return mpp
