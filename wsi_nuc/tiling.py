"""Tile geometry at the working resolution, and the rule that gives every nucleus one owner.

Coordinates are working-resolution pixels (y down, x right), boxes half-open, always ``Box(y0, x0, y1, x1)``
(level-0 boxes too); :class:`Scale` is the one place level-0 and working pixels are converted. Cores and halos are
multiples of the network stride, so every read window starts on the same pooling grid and a pixel's
prediction does not depend on which tile computed it (up to the context the halo gives).

The ownership rule (:meth:`Tile.owned`): a tile keeps the nuclei of its read window that

1. do not touch the read window's edge (a neighbour sees them whole), and
2. have their centroid in the core grown by ``margin`` px (:meth:`Tile.owns`).

Nuclei seen twice (centroids within ``margin`` of a core edge) are resolved by the stitcher, which keeps the
view deepest inside its own core (:meth:`Tile.depth`), among the centroids within :attr:`TileGrid.band` of a
core edge. A nucleus that rule 1 drops in the tile that would own it is larger than the halo allows: it is
counted (:attr:`Owned.cut`, ``nuclei_cut_by_halo`` in summary.json), not dropped silently. The halo must be
larger than the margin (:func:`make_grid` checks), or an owned centroid could lie outside the read window.

>>> grid = make_grid(40, 40, tile=16, halo=16, margin=8)
>>> t = grid.tiles[0]
>>> t.core, t.read
(Box(y0=0, x0=0, y1=16, x1=16), Box(y0=-16, x0=-16, y1=32, x1=32))
>>> t.owns(np.array([3.0, 20.0, 30.0]), np.array([3.0, 3.0, 3.0])).tolist()
[True, True, False]
>>> float(t.depth(3.0, 5.0)), grid.band
(3.0, 17)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class Box:
    """Half-open pixel box [y0, y1) x [x0, x1)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    def expand(self, m: int) -> "Box":
        return Box(self.y0 - m, self.x0 - m, self.y1 + m, self.x1 + m)

    def contains(self, y, x):
        """Whether (y, x) lies in the box; scalars or arrays (then a boolean array)."""
        return (self.y0 <= y) & (y < self.y1) & (self.x0 <= x) & (x < self.x1)

    def depth(self, y, x):
        """Distance from (y, x) to the nearest edge of the box, negative outside; scalars or arrays."""
        return np.minimum(np.minimum(y - self.y0, self.y1 - y), np.minimum(x - self.x0, self.x1 - x))

    def intersects(self, other: "Box") -> bool:
        return self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1


@dataclass(frozen=True)
class Scale:
    """Level-0 <-> working pixels: ``f`` level-0 px per working px. A working pixel (r, c) covers level-0
    x in [c f, (c + 1) f), y in [r f, (r + 1) f).

    >>> s = Scale(level0_mpp=0.25, work_mpp=0.5)
    >>> s.f, s.to_level0(Box(1, 2, 3, 5)), s.window(Box(1, 2, 3, 5)), s.work_shape(101, 50)
    (2.0, Box(y0=2.0, x0=4.0, y1=6.0, x1=10.0), (4.0, 2.0, 6.0, 4.0), (51, 25))
    """

    level0_mpp: float       # µm per level-0 px
    work_mpp: float         # µm per working px (the model's)

    @property
    def f(self) -> float:
        return self.work_mpp / self.level0_mpp

    def to_level0(self, box: Box) -> Box:
        """The level-0 box a working box covers (float coordinates)."""
        f = self.f
        return Box(box.y0 * f, box.x0 * f, box.y1 * f, box.x1 * f)

    def window(self, box: Box) -> tuple[float, float, float, float]:
        """``(x, y, width, height)`` in level-0 px of a working box: what a slide reader reads for it."""
        f = self.f
        return box.x0 * f, box.y0 * f, box.w * f, box.h * f

    def work_shape(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of a level-0 image of ``height`` x ``width`` px at the working resolution."""
        f = self.f
        return max(1, math.ceil(height / f)), max(1, math.ceil(width / f))


@dataclass(frozen=True)
class Owned:
    """What a tile owns of the instance labels of its read window (see :meth:`Tile.owned`)."""

    ids: np.ndarray     # the owned label values, ascending
    y: np.ndarray       # their centroids (mean pixel centre), global working px
    x: np.ndarray
    cut: int            # nuclei the tile would own that its read window cuts: larger than the halo allows


@dataclass(frozen=True)
class Tile:
    """One unit of work: ``core`` is owned, ``read`` = core + halo is what the model sees; nuclei centred
    up to ``margin`` px outside the core are kept too (the stitcher resolves the duplicates)."""

    row: int
    col: int
    core: Box
    read: Box
    margin: int = 0

    @property
    def key(self) -> str:
        return f"r{self.row:05d}_c{self.col:05d}"

    def owns(self, y, x):
        """Whether nuclei centred at global working px (y, x) are kept by this tile (arrays or scalars)."""
        return self.core.expand(int(self.margin)).contains(y, x)

    def depth(self, y, x):
        """How far (y, x) lies inside the core (working px, negative outside): the stitcher's tie-break."""
        return self.core.depth(y, x)

    def owned(self, labels: np.ndarray) -> Owned:
        """The nuclei this tile owns among the instance ``labels`` of its read window (the module's rule)."""
        count, sum_y, sum_x = _label_sums(labels)
        on_edge = np.zeros(len(count), bool)
        for side in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
            on_edge[side] = True
        ids = np.flatnonzero(count)
        n = count[ids].astype(np.float64)
        gy, gx = sum_y[ids] / n + self.read.y0, sum_x[ids] / n + self.read.x0
        own = self.owns(gy, gx)
        whole = ~on_edge[ids]
        keep = own & whole
        return Owned(ids[keep], gy[keep], gx[keep], int(np.count_nonzero(own & ~whole)))


def _label_sums(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel count and sums of row and column indices per label value (index = label; background 0 not
    counted), over the labelled pixels only (a few % of a tile). The sums are of whole numbers, so exact in
    any order: the centroids are those of ``scipy.ndimage.center_of_mass``, bit for bit."""
    w = labels.shape[1]
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    lab = flat[at]
    n = int(lab.max()) + 1 if len(lab) else 1
    count = np.bincount(lab, minlength=n)
    rows = np.bincount(lab, weights=(at // w).astype(np.float64), minlength=n)
    cols = np.bincount(lab, weights=(at % w).astype(np.float64), minlength=n)
    return count, rows, cols


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    halo: int
    tiles: tuple
    margin: int = 0

    @property
    def band(self) -> int:
        """Centroids closer than this to a core edge (working px) may be seen by two tiles: the stitcher's band."""
        return 2 * self.margin + 1

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)


def round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def make_grid(height: int, width: int, tile: int, halo: int, align: int = 16,
              keep: Callable[[Box], bool] | None = None, margin: int = 0) -> TileGrid:
    """Tiles covering an image of (height, width) working pixels.

    ``tile`` (core edge) and ``halo`` are rounded up to multiples of ``align``. The read box of every tile
    has the same size (tile + 2 halo) and may extend past the image (the reader pads with glass).
    ``keep(core)`` filters tiles, e.g. to tissue only. ``margin``: see :meth:`Tile.owns`; the halo must be
    larger (ValueError).
    """
    if tile <= 0 or halo < 0 or margin < 0:
        raise ValueError(f"tile must be > 0, halo and margin >= 0, got tile={tile}, halo={halo}, margin={margin}")
    tile, halo = round_up(tile, align), round_up(halo, align)
    if halo <= margin:
        raise ValueError(f"halo {halo} px must be larger than the ownership margin {margin} px")
    tiles = []
    for r, y in enumerate(range(0, max(height, 1), tile)):
        for c, x in enumerate(range(0, max(width, 1), tile)):
            core = Box(y, x, min(y + tile, height), min(x + tile, width))
            if core.h <= 0 or core.w <= 0:
                continue
            if keep is not None and not keep(core):
                continue
            read = Box(y - halo, x - halo, y + tile + halo, x + tile + halo)
            tiles.append(Tile(r, c, core, read, margin))
    return TileGrid(height, width, tile, halo, tuple(tiles), margin)
