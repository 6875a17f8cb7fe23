"""Which nuclei may keep the type the model gives them: calibrated probabilities, a per-type confidence
threshold and a check that the nucleus and its tissue look like what the type head learned.

The type head learned colorectal tissue only (CoNSeP). Off that tissue it can be wrong with confidence (on
CMU-1-Small-Region, skin, most keratinocytes of the epidermis come out "spindle-shaped" at the
confidence of a correct call on CoNSeP), so a type is given only where three checks pass; the other nuclei
are written *untyped* (plain ``Nucleus``) with the reason, their probabilities kept:

``stain``
    the slide's (image's) CIELAB statistics lie outside the range of the type head's training images
    (:func:`stain_familiar`): not H&E as the head knows it, so no nucleus is typed;
``unfamiliar_tissue``
    the nucleus and the tissue around it lie far from the training nuclei of the type it was given: the
    features the model's block names (:mod:`wsi_nuc.type_features`; for the shipped models the nucleus'
    size and the lightness and blue-yellow colour of a ring 1-4 µm around it, stain-normalised), as a
    Mahalanobis distance under a Gaussian fitted on the CoNSeP train nuclei of that type, above the 95th
    percentile of those nuclei's own distances (:func:`ood_distance`);
``low_confidence``
    its calibrated probability (:func:`calibrate`: temperature scaling of the per-nucleus probability
    vector, :func:`wsi_nuc.type_map.nucleus_type_probs`, fitted on CoNSeP val) is below the threshold of
    its type, chosen on CoNSeP val for a precision of 0.8 (``--type-threshold`` sets one for all types).

Before the checks, a model's shape prior (:mod:`wsi_nuc.type_prior`) may reweight the probabilities by
the nucleus' size and elongation, and so change its type.

Everything is fitted by :mod:`wsi_nuc.train.calibrate_types` and stored in the model's ``config.json``
under ``"types_calibration"``; a model without that block keeps every type (only ``--type-threshold``
applies, on the raw probabilities). The type the model gave is kept as ``type_model``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import type_prior
from .metrics_types import type_key
from .type_features import FEATURES, normalised

CONFIG_KEY = "types_calibration"
REASONS = ("stain", "unfamiliar_tissue", "low_confidence")   # reason code k + 1, in order of precedence
TRAINED_ON = "colorectal tissue (CoNSeP)"


def q_column(name: str) -> str:
    """Tile column of the raw per-nucleus probability of a type: ``q_<type>``."""
    return f"q_{type_key(name)}"


def p_column(name: str) -> str:
    """Output column of the calibrated probability of a type: ``p_<type>`` (e.g. ``p_spindle_shaped``)."""
    return f"p_{type_key(name)}"


def f_column(name: str) -> str:
    return f"f_{name}"


@dataclass(frozen=True)
class TypeTrust:
    """What :func:`decide` needs, from a model's ``config.json`` (:meth:`from_config`)."""

    types: tuple
    temperature: float = 1.0
    thresholds: tuple = ()          # per type, on the calibrated probability; () = 0 for all
    ood: dict | None = None         # {"features", "mean": {type: [...]}, "icov": {type: [[...]]}, "limit": {type: x}}
    stain: dict | None = None       # {"lo": [6], "hi": [6]}: CIELAB mean and std ranges of the training images
    abstain: bool = True            # False: every nucleus keeps the model's type (probabilities still calibrated)
    prior: dict | None = None       # the shape prior (:mod:`wsi_nuc.type_prior`), applied before everything else
    threshold_source: str = "model"
    info: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict | None, threshold: float | None = None, abstain: bool = True
                    ) -> "TypeTrust | None":
        """None for a model without types; ``threshold`` (0..1) replaces every type's threshold."""
        from .type_map import model_types

        types = model_types(config)
        if not types:
            return None
        block = (config or {}).get(CONFIG_KEY) or {}
        th = block.get("thresholds") or {}
        thresholds = tuple(float(th.get(n, 0.0)) for n in types)
        source = "model" if block else "none"
        if threshold is not None:
            t = float(threshold)
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"type threshold must be within 0..1, got {threshold}")
            thresholds, source = (t,) * len(types), "user"
        return cls(types, float(block.get("temperature", 1.0)), thresholds, block.get("ood"), block.get("stain"),
                   bool(abstain), block.get("prior"), source,
                   {k: block[k] for k in ("trained_on", "checked_on", "precision_target") if k in block})

    def describe(self) -> dict:
        """What summary.json says about the check."""
        return {"trained_on": self.info.get("trained_on", TRAINED_ON), "abstain": self.abstain,
                "calibrated": self.temperature != 1.0, "temperature": round(self.temperature, 4),
                "thresholds": {n: round(t, 4) for n, t in zip(self.types, self.thresholds)},
                "threshold_source": self.threshold_source,
                "precision_target": self.info.get("precision_target"),
                "shape_prior_weight": float((self.prior or {}).get("weight", 0.0)),
                "ood_check": bool(self.ood), "stain_check": bool(self.stain),
                "checked_on": self.info.get("checked_on", "")}


def calibrate(q: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature scaling of per-nucleus probability vectors (N, K): ``softmax(log q / T)``.

    >>> np.round(calibrate(np.array([[0.8, 0.2]]), 2.0), 3).tolist()
    [[0.667, 0.333]]
    """
    q = np.asarray(q, np.float64)
    z = np.log(np.clip(q, 1e-6, 1.0)) / float(temperature)
    z -= np.nanmax(z, axis=-1, keepdims=True) if z.size else 0.0
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def ood_distance(features: np.ndarray, codes: np.ndarray, ood: dict, types) -> np.ndarray:
    """Mahalanobis distance of each nucleus' features to the training nuclei of its type (NaN: no type or
    no fit for it). Missing feature values (no ring pixels) are taken at the type's mean."""
    f = np.asarray(features, np.float64)
    use = [FEATURES.index(n) for n in ood.get("features", FEATURES)]
    if f.ndim == 2 and f.shape[1] == len(FEATURES) and len(use) != len(FEATURES):
        f = f[:, use]
    out = np.full(len(codes), np.nan)
    for k, name in enumerate(types, start=1):
        m = codes == k
        if not m.any() or name not in ood.get("mean", {}):
            continue
        d = f[m] - np.asarray(ood["mean"][name], float)
        d[~np.isfinite(d)] = 0.0
        out[m] = np.sqrt(np.maximum(type_prior.mahalanobis_sq(d, ood["icov"][name]), 0.0))
    return out


def stain_familiar(stats, stain: dict | None) -> bool:
    """Whether CIELAB statistics (:class:`wsi_nuc.stainnorm.LabStats`) lie within the training range."""
    if stats is None or not stain:
        return True
    v = np.r_[np.asarray(stats.mean, float), np.asarray(stats.std, float)]
    return bool(np.all(v >= np.asarray(stain["lo"], float)) and np.all(v <= np.asarray(stain["hi"], float)))


def decide(codes, q, features, trust: TypeTrust, stain_ok: bool = True) -> dict:
    """The final type of each nucleus.

    Parameters: ``codes`` (N,) the model's type (1..K, 0 none), ``q`` (N, K) raw probabilities, ``features``
    (N, F) stain-normalised :data:`~wsi_nuc.type_features.FEATURES` or None, ``stain_ok`` the image's
    stain check. The trust's shape prior (:mod:`wsi_nuc.type_prior`) first reweights ``q`` and may change
    the type. Returns ``{"type": codes or 0, "prob": calibrated probability of the (reweighted) type,
    "reason": 0 typed or 1 + index into REASONS, "p": (N, K) calibrated, "distance": (N,)}``.

    >>> t = TypeTrust(("a", "b"), thresholds=(0.7, 0.0))
    >>> r = decide(np.array([1, 1, 2]), np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]), None, t)
    >>> r["type"].tolist(), r["reason"].tolist()
    ([1, 0, 2], [0, 3, 0])
    """
    codes, q = type_prior.apply(np.asarray(codes, np.int64).ravel(), q, features, trust.prior, trust.types)
    n = len(codes)
    p = calibrate(q, trust.temperature) if n else np.zeros((0, len(trust.types)))
    rows = np.arange(n)
    has = codes > 0
    prob = np.where(has, p[rows, np.clip(codes, 1, None) - 1] if n else 0.0, np.nan)
    reason = np.zeros(n, np.int64)
    dist = np.full(n, np.nan)
    if trust.abstain:
        th = np.asarray(trust.thresholds or (0.0,) * len(trust.types), float)
        low = has & (prob < th[np.clip(codes, 1, None) - 1])
        reason[low] = 3
        if trust.ood and features is not None:
            dist = ood_distance(features, codes, trust.ood, trust.types)
            lim = np.array([trust.ood["limit"].get(nm, np.inf) for nm in trust.types], float)
            far = has & np.isfinite(dist) & (dist > lim[np.clip(codes, 1, None) - 1])
            reason[far] = 2
        if not stain_ok:
            reason[has] = 1
    final = np.where(reason > 0, 0, codes)
    return {"type": final, "prob": prob, "reason": reason, "p": p, "distance": dist}


def tile_arrays(cols: dict, types) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The model's type (1..K in ``types`` order, 0 none), raw probabilities (N, K) and raw features (N, F)
    stored in a tile's columns (:func:`wsi_nuc.segment.type_columns`); q / features None where the tile
    predates them."""
    src = cols["type_model"] if "type_model" in cols else cols["type"]
    pos = {n: k for k, n in enumerate(types, start=1)}   # the model's order (q's columns), not CoNSeP's codes
    codes = np.array([pos.get(str(v), 0) for v in np.asarray(src, dtype=object).tolist()], np.int64)
    q = None
    if all(q_column(n) in cols for n in types):
        q = np.stack([np.asarray(cols[q_column(n)], np.float64) for n in types], 1)
    f = None
    if all(f_column(n) in cols for n in FEATURES):
        f = np.stack([np.asarray(cols[f_column(n)], np.float64) for n in FEATURES], 1)
    return codes, q, f


def apply_to_columns(cols: dict, trust: TypeTrust, stain=None, target=None, stain_ok: bool = True) -> np.ndarray:
    """Decide the types of one tile's nuclei in place (idempotent: decided from ``type_model``); returns the
    reason codes. Columns written: ``type`` (final; "" untyped), ``type_model``, ``type_prob`` (calibrated
    probability of the model's type), ``untyped_reason`` ("" typed) and ``p_<type>`` per type."""
    codes, q, f = tile_arrays(cols, trust.types)
    if q is None:   # raw probabilities not kept: the model's type probability alone, uncalibrated
        q = np.full((len(codes), len(trust.types)), np.nan)
        prob = np.asarray(cols.get("type_prob", np.full(len(codes), np.nan)), np.float64)
        ok = codes > 0
        q[ok] = ((1 - prob[ok]) / max(len(trust.types) - 1, 1))[:, None]
        q[ok, codes[ok] - 1] = prob[ok]
        q[~ok] = 1.0 / len(trust.types)
    if f is not None:
        f = normalised(f, stain, target)
    r = decide(codes, q, f, trust, stain_ok)
    names = np.array(["", *trust.types], dtype=object)
    cols["type_model"] = names[codes]
    cols["type"] = names[r["type"]]
    cols["type_prob"] = r["prob"]
    cols["untyped_reason"] = np.array([""] + list(REASONS), dtype=object)[r["reason"]]
    for k, name in enumerate(trust.types):
        cols[p_column(name)] = r["p"][:, k]
    return r["reason"]


def decide_final(final, config: dict, stain: dict | None = None, threshold: float | None = None,
                 check: bool = True) -> dict | None:
    """Decide the types of stitched nuclei (:class:`wsi_nuc.stitch.FinalNuclei`) in their tiles' columns,
    as ``run`` does before writing (``stain``: the slide's statistics as a dict, ``config`` the model's);
    what was checked (for summary.json), or None for a model without types or nuclei without them."""
    from .stainnorm import LabStats

    trust = TypeTrust.from_config(config, threshold, check)
    if trust is None:
        return None
    stats = LabStats.from_dict(stain) if stain else None
    target = LabStats.from_dict(config.get("stain_norm"))
    ok = stain_familiar(stats, trust.stain)
    seen = set()
    for tn, _, _ in final:
        if id(tn) not in seen and "type" in tn.columns:
            seen.add(id(tn))
            apply_to_columns(tn.columns, trust, stats, target, ok)
    return {**trust.describe(), "stain_familiar": ok}


def reason_counts(reasons) -> dict:
    """{reason: count} over reason codes (every reason listed)."""
    c = np.bincount(np.asarray(reasons, np.int64), minlength=len(REASONS) + 1)
    return {name: int(c[k + 1]) for k, name in enumerate(REASONS)}
