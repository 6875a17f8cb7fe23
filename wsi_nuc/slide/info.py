"""What a reader knows about its slide (:class:`SlideInfo`) and the reader interface (:class:`SlideReader`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


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
