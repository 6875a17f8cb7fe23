"""Training data from several annotated sources: load each at the working scale, draw weighted batches.

A source is one dataset folder in the shared layout, given in ``data.roots`` either as a path or as
``{path, weight, modality, type_bounds}``: ``weight`` is its share of the drawn crops (default 1, normalised
over the sources), ``modality`` keeps only images whose ``dataset.json`` entry has that modality (DSB's
``colour_brightfield``), ``type_bounds`` a file of bounds on the type proportions of its images by organ
(:mod:`wsi_nuc.train.type_bounds`). Images without a known scale (DSB) are brought to the working scale by their
own annotated nuclei: the scale at which their median nucleus area equals ``data.nucleus_area_um2``.
A model's own scale rule (``nucleus_area_um2`` in its config, :mod:`wsi_nuc.scale`) is the median nucleus
of the sources whose scale is known (:func:`known_scale_samples`): a scale estimated from nucleus sizes
(DSB, NuInsSeg) must not set the sizes that later estimates are made against.

Images smaller than the crop (CoNSeP's 256² crops at 40x are 128² at 0.5 µm/px) are drawn as a 2x2 mosaic
of four half-size crops of the same source, each augmented on its own, so no crop is mostly padding.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..dataset import Sample, list_stems, load_at_mpp, load_sample, read_index
from .augment import augment
from .targets import make_targets

DEFAULT_AREA_UM2 = 18.25   # median MoNuSeg training nucleus (v0.2 models' nucleus_area_um2)


@dataclass
class Source:
    name: str
    weight: float
    samples: list = field(default_factory=list)
    bounds: dict = field(default_factory=dict)     # stem -> (lo, hi) type-proportion bounds
    scale_known: bool = True                       # False: dataset.json gives no scale, or an estimated one

    @property
    def has_types(self) -> bool:
        return any(s.types is not None for s in self.samples)


def root_specs(data_cfg: dict) -> list[dict]:
    """``data.roots`` as a list of ``{path, weight, modality}`` dicts."""
    out = []
    for r in data_cfg["roots"]:
        spec = {"path": r} if isinstance(r, str) else dict(r)
        unknown = set(spec) - {"path", "weight", "modality", "type_bounds"}
        if unknown:
            raise ValueError(f"data.roots: unknown keys {sorted(unknown)} in {r!r}")
        spec.setdefault("weight", 1.0)
        spec.setdefault("modality", None)
        spec.setdefault("type_bounds", None)
        out.append(spec)
    return out


def scale_from_labels(labels: np.ndarray, area_um2: float) -> float | None:
    """The µm/px at which this image's median annotated nucleus has ``area_um2``."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size < 3:
        return None
    return float(np.sqrt(area_um2 / np.median(areas)))


def load_source(spec: dict, split: str, mpp: float | None, area_um2: float = DEFAULT_AREA_UM2,
                types: list[str] | None = None) -> Source:
    from pathlib import Path

    root = spec["path"]
    meta = read_index(root)
    images = meta.get("images") or {}
    src = Source(Path(root).name + (f":{spec['modality']}" if spec["modality"] else ""), float(spec["weight"]))
    stems = list_stems(root, split)
    src.scale_known = not meta.get("mpp_estimated") and bool(
        meta.get("mpp") or all((images.get(st) or {}).get("mpp") for st in stems))
    for stem in stems:
        if spec["modality"] and (images.get(stem) or {}).get("modality") != spec["modality"]:
            continue
        if mpp and not (images.get(stem) or {}).get("mpp") and not meta.get("mpp"):
            s = load_sample(root, stem, meta)
            est = scale_from_labels(s.labels, area_um2) if s.labels is not None else None
            if est is None:
                continue
            meta_i = dict(meta, images={stem: {"mpp": est}})
            s = load_at_mpp(root, stem, mpp, meta_i)
        else:
            s = load_at_mpp(root, stem, mpp, meta)
        if s.labels is not None:
            src.samples.append(s)
    if spec.get("type_bounds"):
        from .type_bounds import source_bounds

        src.bounds = source_bounds(spec["type_bounds"], [s.stem for s in src.samples], images, types)
    return src


def load_sources(data_cfg: dict, split: str, types: list[str] | None = None) -> list[Source]:
    """Every source of ``data.roots`` for one split; ``types`` (the model's) resolves type bounds."""
    mpp = data_cfg.get("mpp")
    area = float(data_cfg.get("nucleus_area_um2", DEFAULT_AREA_UM2))
    return [load_source(spec, split, mpp, area, types) for spec in root_specs(data_cfg)]


def all_samples(sources: list[Source]) -> list[Sample]:
    return [s for src in sources for s in src.samples]


def known_scale_samples(sources: list[Source]) -> list[Sample]:
    """The samples of the sources whose scale is known (all samples when none is)."""
    known = [s for src in sources if src.scale_known for s in src.samples]
    return known or all_samples(sources)


def type_target(lab: np.ndarray, types: np.ndarray | None) -> np.ndarray:
    """Per-pixel type class (0 background, 1.. types) from instance labels; -1 everywhere (ignored)
    when the sample has no types, and at nuclei whose type is unknown."""
    if types is None:
        return np.full(lab.shape, -1, np.int64)
    lut = types.astype(np.int64)
    lut = np.where(lut == 0, -1, lut)
    lut[0] = 0
    return lut[np.minimum(lab, len(lut) - 1)]


def _crop(s: Sample, size: int, aug_cfg, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img, lab = augment(s.image, s.labels, size, aug_cfg, rng)
    return img, lab, type_target(lab, s.types)


def draw_crop(src: Source, size: int, aug_cfg, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One augmented (image, labels, type target) crop of ``size`` px from a source."""
    return _draw(src, size, aug_cfg, rng)[:3]


def _draw(src: Source, size: int, aug_cfg, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """:func:`draw_crop` and the placements (stem, y, x, side) of the images it is made of."""
    s = src.samples[rng.integers(len(src.samples))]
    h, w = s.labels.shape
    if min(h, w) * 1.25 >= size:
        return (*_crop(s, size, aug_cfg, rng), [(s.stem, 0, 0, size)])
    half = size // 2
    img = np.zeros((size, size, 3), np.float32)
    lab = np.zeros((size, size), np.int32)
    typ = np.zeros((size, size), np.int64)
    offset = 0
    placements = []
    for y in (0, half):
        for x in (0, half):
            s = src.samples[rng.integers(len(src.samples))]
            placements.append((s.stem, y, x, half))
            im_q, lab_q, typ_q = _crop(s, half, aug_cfg, rng)
            img[y:y + half, x:x + half] = im_q
            lab[y:y + half, x:x + half] = np.where(lab_q > 0, lab_q + offset, 0)
            typ[y:y + half, x:x + half] = typ_q
            offset += int(lab_q.max())
    return img, lab, typ, placements


def make_batch(sources: list[Source], size: int, n: int, aug_cfg, rng) -> tuple[np.ndarray, list[dict]]:
    """``n`` crops drawn source by source with the sources' weights; returns (images, targets)."""
    p = np.array([src.weight for src in sources], float)
    p /= p.sum()
    bounded = [src for src in sources if src.bounds]
    n_types = len(next(iter(bounded[0].bounds.values()))[0]) if bounded else 0
    imgs, tgts = [], []
    for _ in range(n):
        src = sources[rng.choice(len(sources), p=p)]
        img, lab, typ, placements = _draw(src, size, aug_cfg, rng)
        t = make_targets(lab)
        t["types"] = typ
        if bounded:     # every crop of the batch carries the maps (unbounded: group -1)
            from .type_bounds import bounds_maps

            t.update(bounds_maps(placements, src.bounds, size, n_types))
        imgs.append(img)
        tgts.append(t)
    return np.stack(imgs), tgts
