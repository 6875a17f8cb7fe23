"""Tile geometry at the working resolution: each tile is a core it owns plus a halo of context.

Coordinates are working-resolution pixels (y down, x right), boxes half-open. Cores and halos are
multiples of the network stride, so every read window starts on the same pooling grid and a pixel's
prediction does not depend on which tile computed it (up to the context the halo gives).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator


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

    def contains(self, y: float, x: float) -> bool:
        return self.y0 <= y < self.y1 and self.x0 <= x < self.x1

    def depth(self, y: float, x: float) -> float:
        """Distance from (y, x) to the nearest edge of the box; negative outside."""
        return min(y - self.y0, self.y1 - y, x - self.x0, self.x1 - x)

    def intersects(self, other: "Box") -> bool:
        return self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1


@dataclass(frozen=True)
class Tile:
    """One unit of work: ``core`` is owned, ``read`` = core + halo is what the model sees."""

    row: int
    col: int
    core: Box
    read: Box

    @property
    def key(self) -> str:
        return f"r{self.row:05d}_c{self.col:05d}"

    def owns(self, y: float, x: float, margin: float = 0.0) -> bool:
        """Whether a nucleus centred at (y, x) (tile-local read-box coords excluded: global coords) is kept."""
        return self.core.expand(int(margin)).contains(y, x) if margin else self.core.contains(y, x)


@dataclass(frozen=True)
class TileGrid:
    height: int
    width: int
    tile: int
    halo: int
    tiles: tuple

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)


def round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


def make_grid(height: int, width: int, tile: int, halo: int, align: int = 16,
              keep: Callable[[Box], bool] | None = None) -> TileGrid:
    """Tiles covering an image of (height, width) working pixels.

    ``tile`` (core edge) and ``halo`` are rounded up to multiples of ``align``. The read box of every tile
    has the same size (tile + 2 halo) and may extend past the image (the reader pads with glass).
    ``keep(core)`` filters tiles, e.g. to tissue only.
    """
    if tile <= 0 or halo < 0:
        raise ValueError(f"tile must be > 0 and halo >= 0, got tile={tile}, halo={halo}")
    tile, halo = round_up(tile, align), round_up(halo, align)
    tiles = []
    for r, y in enumerate(range(0, max(height, 1), tile)):
        for c, x in enumerate(range(0, max(width, 1), tile)):
            core = Box(y, x, min(y + tile, height), min(x + tile, width))
            if core.h <= 0 or core.w <= 0:
                continue
            if keep is not None and not keep(core):
                continue
            read = Box(y - halo, x - halo, y + tile + halo, x + tile + halo)
            tiles.append(Tile(r, c, core, read))
    return TileGrid(height, width, tile, halo, tuple(tiles))
