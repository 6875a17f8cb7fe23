"""Instance-segmentation metrics (AJI, PQ, F1, Dice, DSB-2018 mAP) on integer label images."""
from __future__ import annotations

from typing import Iterable, NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

# DSB 2018 thresholds 0.50, 0.55, ..., 0.95 in hundredths, so that "IoU > t" is tested exactly
# on integers as 100 * inter > k * union.
_DSB_THRESHOLDS_PCT = tuple(range(50, 100, 5))


class Overlaps(NamedTuple):
    """Sparse pairwise overlap table between the instances of two label images.

    ``pair_gt`` / ``pair_pred`` index into ``gt_ids`` / ``pred_ids``; only pairs that share at
    least one pixel are listed, sorted by (gt index, pred index). Areas, intersections and
    unions are pixel counts (int64); ``iou`` is float64.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_areas: np.ndarray
    pred_areas: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    iou: np.ndarray

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    def iou_matrix(self) -> np.ndarray:
        """Dense (n_gt, n_pred) IoU matrix; zero where instances do not overlap."""
        m = np.zeros((self.n_gt, self.n_pred), np.float64)
        m[self.pair_gt, self.pair_pred] = self.iou
        return m

    def inter_matrix(self) -> np.ndarray:
        """Dense (n_gt, n_pred) intersection matrix in pixels."""
        m = np.zeros((self.n_gt, self.n_pred), np.int64)
        m[self.pair_gt, self.pair_pred] = self.inter
        return m


def _check(gt, pred) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"label images differ in shape: gt {gt.shape} vs pred {pred.shape}")
    for name, a in (("gt", gt), ("pred", pred)):
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{name} label image must have an integer dtype, got {a.dtype}")
        if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
            raise ValueError(f"{name} label image has negative labels")
    return gt, pred


def _dense_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instance ids without 0, per-pixel index with 0 = background, areas per index)."""
    ids, idx = np.unique(labels, return_inverse=True)
    idx = idx.reshape(-1).astype(np.int64, copy=False)
    if ids.size == 0 or ids[0] != 0:
        idx += 1  # reserve index 0 for background even if no background pixel exists
    else:
        ids = ids[1:]
    areas = np.bincount(idx, minlength=ids.size + 1)
    return ids, idx, areas


def match_iou(gt, pred) -> Overlaps:
    """Pairwise intersections and IoUs of all overlapping (GT, prediction) instance pairs.

    Computed from a sparse joint histogram of the two label images, so the cost is
    O(pixels log pixels) regardless of the number of instances.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape (typically 2-D); 0 is background, ids need not be
        sequential.

    Returns
    -------
    Overlaps
        Instance ids, areas and the list of overlapping pairs with intersection, union and IoU.

    Raises
    ------
    ValueError
        If the shapes differ, a dtype is not integer, or labels are negative.
    """
    gt, pred = _check(gt, pred)
    gt_ids, g, g_area = _dense_index(gt)
    pred_ids, p, p_area = _dense_index(pred)
    both = (g > 0) & (p > 0)
    n_p1 = pred_ids.size + 1
    keys, inter = np.unique(g[both] * n_p1 + p[both], return_counts=True)
    pair_gt = keys // n_p1 - 1
    pair_pred = keys % n_p1 - 1
    gt_areas = g_area[1:].astype(np.int64)
    pred_areas = p_area[1:].astype(np.int64)
    inter = inter.astype(np.int64)
    union = gt_areas[pair_gt] + pred_areas[pair_pred] - inter
    iou = inter / union if inter.size else np.zeros(0, np.float64)
    return Overlaps(gt_ids, pred_ids, gt_areas, pred_areas, pair_gt, pair_pred, inter, union, iou)


# ---------------------------------------------------------------------------------------------
# Metrics on a precomputed Overlaps table


def _aji_cu(ov: Overlaps) -> tuple[int, int]:
    if ov.inter.size:
        # Per GT: max IoU, ties broken by larger intersection then lower pred index.
        order = np.lexsort((ov.pair_pred, -ov.inter, -ov.iou, ov.pair_gt))
        g_sorted = ov.pair_gt[order]
        first = np.ones(order.size, bool)
        first[1:] = g_sorted[1:] != g_sorted[:-1]
        best = order[first]
        c = int(ov.inter[best].sum())
        u = int(ov.union[best].sum())
        gt_matched = np.zeros(ov.n_gt, bool)
        gt_matched[ov.pair_gt[best]] = True
        pred_used = np.zeros(ov.n_pred, bool)
        pred_used[ov.pair_pred[best]] = True
    else:
        c = u = 0
        gt_matched = np.zeros(ov.n_gt, bool)
        pred_used = np.zeros(ov.n_pred, bool)
    u += int(ov.gt_areas[~gt_matched].sum())  # missed GT: |G ∪ ∅| = |G|
    u += int(ov.pred_areas[~pred_used].sum())  # predictions never picked
    return c, u


def _ratio(c: float, u: float) -> float:
    return 1.0 if u == 0 else float(c) / float(u)


def _f1(tp: int, n_gt: int, n_pred: int) -> float:
    denom = n_gt + n_pred  # = 2 TP + FP + FN
    return 1.0 if denom == 0 else 2.0 * tp / denom


def _pq(ov: Overlaps) -> dict:
    matched = 2 * ov.inter > ov.union  # IoU > 0.5, exact; such matches are unique
    tp = int(matched.sum())
    fp, fn = ov.n_pred - tp, ov.n_gt - tp
    if ov.n_gt + ov.n_pred == 0:
        return dict(pq=1.0, dq=1.0, sq=1.0, tp=0, fp=0, fn=0)
    dq = _f1(tp, ov.n_gt, ov.n_pred)
    sq = float(ov.iou[matched].mean()) if tp else 0.0
    return dict(pq=dq * sq, dq=dq, sq=sq, tp=tp, fp=fp, fn=fn)


def _tp_at(ov: Overlaps, thr: float) -> int:
    valid = ov.iou > thr
    if thr >= 0.5:
        return int(valid.sum())  # IoU > 0.5 pairs are already one-to-one
    if not valid.any():
        return 0
    # One-to-one assignment maximising the number of matches, then their summed IoU.
    gi, rows = np.unique(ov.pair_gt[valid], return_inverse=True)
    pj, cols = np.unique(ov.pair_pred[valid], return_inverse=True)
    weight = np.zeros((gi.size, pj.size))
    weight[rows, cols] = (min(gi.size, pj.size) + 1) + ov.iou[valid]
    r, c = linear_sum_assignment(weight, maximize=True)
    return int((weight[r, c] > 0).sum())


def _dice(ov: Overlaps) -> float:
    denom = int(ov.gt_areas.sum() + ov.pred_areas.sum())
    return 1.0 if denom == 0 else 2.0 * int(ov.inter.sum()) / denom


def _map_dsb(ov: Overlaps) -> float:
    if ov.n_gt + ov.n_pred == 0:
        return 1.0
    scores = []
    for k in _DSB_THRESHOLDS_PCT:
        tp = int((100 * ov.inter > k * ov.union).sum())
        scores.append(tp / (ov.n_gt + ov.n_pred - tp))  # TP / (TP + FP + FN)
    return float(np.mean(scores))


# ---------------------------------------------------------------------------------------------
# Public per-image metrics


def aji_counts(gt, pred) -> tuple[int, int]:
    """Aggregated Jaccard Index numerator and denominator (C, U) of one image.

    Per Kumar et al. 2017 (IEEE TMI): every GT nucleus is paired with the prediction of
    maximum IoU (if any overlaps); their intersection is added to C and union to U. A GT
    nucleus with no overlapping prediction adds its area to U, and every prediction never
    picked adds its area to U. IoU ties are broken by larger intersection, then lower id.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.

    Returns
    -------
    tuple of int
        (C, U) in pixels; sum them over images for pooled AJI.
    """
    return _aji_cu(match_iou(gt, pred))


def aji(gt, pred) -> float:
    """Aggregated Jaccard Index C / U of one image (Kumar et al. 2017).

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.

    Returns
    -------
    float
        AJI in [0, 1]; 1.0 if both images are empty, 0.0 if exactly one is.
    """
    return _ratio(*aji_counts(gt, pred))


def pq(gt, pred) -> dict:
    """Panoptic quality with unique matching at IoU > 0.5 (strictly).

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.

    Returns
    -------
    dict
        ``pq``, ``dq`` (= TP / (TP + FP/2 + FN/2)), ``sq`` (mean IoU of matches, 0 if none),
        and integer ``tp``, ``fp``, ``fn``. All three scores are 1.0 when both are empty.
    """
    return _pq(match_iou(gt, pred))


def f1_at(gt, pred, thr: float = 0.5) -> float:
    """Detection F1 with one-to-one matching at IoU > ``thr``.

    For ``thr >= 0.5`` matches are unique by construction; below that an optimal assignment
    (most matches, then highest summed IoU) is used.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.
    thr : float
        IoU threshold in [0, 1); a pair matches if its IoU is strictly greater.

    Returns
    -------
    float
        TP / (TP + FP/2 + FN/2); 1.0 if both images are empty.
    """
    if not 0.0 <= thr < 1.0:
        raise ValueError(f"thr must be in [0, 1), got {thr}")
    ov = match_iou(gt, pred)
    return _f1(_tp_at(ov, thr), ov.n_gt, ov.n_pred)


def dice(gt, pred) -> float:
    """Pixel Dice coefficient of the binary foregrounds (label > 0).

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.

    Returns
    -------
    float
        2 |G ∩ P| / (|G| + |P|); 1.0 if both are empty.
    """
    gt, pred = _check(gt, pred)
    g, p = gt > 0, pred > 0
    denom = int(g.sum()) + int(p.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(g & p)) / denom


def map_dsb(gt, pred) -> float:
    """2018 Data Science Bowl score of one image.

    Mean over t = 0.50, 0.55, ..., 0.95 of TP(t) / (TP(t) + FP(t) + FN(t)), where a pair
    matches at t if its IoU > t (strictly; unique since t >= 0.5).

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.

    Returns
    -------
    float
        Score in [0, 1]; 1.0 if both images are empty, 0.0 if exactly one is.
    """
    return _map_dsb(match_iou(gt, pred))


def score_image(gt, pred) -> dict:
    """All metrics of one image from a single overlap computation.

    Parameters
    ----------
    gt, pred : array_like of int
        Label images of the same shape; 0 is background.

    Returns
    -------
    dict
        Floats ``aji``, ``pq``, ``dq``, ``sq``, ``f1`` (IoU > 0.5), ``dice``, ``map_dsb``;
        integers ``aji_c``, ``aji_u``, ``tp``, ``fp``, ``fn`` (at IoU > 0.5), ``n_gt``, ``n_pred``.
    """
    ov = match_iou(gt, pred)
    c, u = _aji_cu(ov)
    p = _pq(ov)
    return dict(
        aji=_ratio(c, u),
        pq=p["pq"],
        dq=p["dq"],
        sq=p["sq"],
        f1=_f1(_tp_at(ov, 0.5), ov.n_gt, ov.n_pred),
        dice=_dice(ov),
        map_dsb=_map_dsb(ov),
        aji_c=c,
        aji_u=u,
        tp=p["tp"],
        fp=p["fp"],
        fn=p["fn"],
        n_gt=ov.n_gt,
        n_pred=ov.n_pred,
    )


def score_images(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Aggregate metrics over images.

    Parameters
    ----------
    pairs : iterable of (gt, pred)
        Label image pairs; each pair must match in shape, images may differ in size.

    Returns
    -------
    dict
        ``aji`` (mean of per-image AJI, the MoNuSeg 2018 "a-AJI"), ``aji_pooled``
        (sum C / sum U over all images), means over images of ``pq``, ``dq``, ``sq``, ``f1``,
        ``dice``, ``map_dsb``, and ``n_images``.

    Raises
    ------
    ValueError
        If ``pairs`` is empty or any pair is invalid.
    """
    return aggregate([score_image(gt, pred) for gt, pred in pairs])


def aggregate(per_image: list[dict]) -> dict:
    """Aggregate :func:`score_image` results: means over images, and AJI pooled over all pixels.

    Raises
    ------
    ValueError
        If ``per_image`` is empty.
    """
    if not per_image:
        raise ValueError("score_images needs at least one (gt, pred) pair")
    keys = ("aji", "pq", "dq", "sq", "f1", "dice", "map_dsb")
    out = {k: float(np.mean([s[k] for s in per_image])) for k in keys}
    out["aji_pooled"] = _ratio(sum(s["aji_c"] for s in per_image), sum(s["aji_u"] for s in per_image))
    out["n_images"] = len(per_image)
    return {k: out[k] for k in ("aji", "aji_pooled", "pq", "dq", "sq", "f1", "dice", "map_dsb", "n_images")}
