"""HoVer-Net's detection and classification F1 (Graham et al. 2019, MedIA 58, section on evaluation).

Nuclei are detected when a predicted centroid lies within a fixed distance of a true one: HoVer-Net uses
12 px on CoNSeP at 40x (0.25 µm/px), that is **3 µm** (:data:`DETECTION_RADIUS_UM`), converted here with
the image's own µm per pixel. Pairs are unique: a Hungarian assignment over the centroid distances
within the radius (pairs farther apart are never made), so the number of pairs is the largest possible
and, among those pairings, the total distance is the smallest. (HoVer-Net's code assigns over all
distances first and drops the pairs beyond the radius afterwards; that can only make fewer pairs, and
the two agree wherever the nuclei within reach of each other are unambiguous.)

- detection: ``F_d = 2 TP_d / (2 TP_d + FP_d + FN_d)``, TP_d the pairs, FP_d / FN_d the unpaired
  predicted / true nuclei;
- classification, per type t:
  ``F_c^t = 2 (TP_c + TN_c) / (2 (TP_c + TN_c) + 2 FP_c + 2 FN_c + FP_d^t + FN_d^t)``, where over the
  *pairs* TP_c counts true t predicted t, FP_c true not-t predicted t, FN_c true t predicted not-t, and
  TN_c true not-t predicted not-t *among the pairs that involve t*; FP_d^t / FN_d^t count the unpaired
  predicted / true nuclei of type t. The pairs that involve t are those with t on either side, so TN_c is
  0 by construction: this is the definition of the reference implementation (``compute_stats.py`` of
  HoVer-Net, which produced the paper's CoNSeP figures, restricts the pairs to "true t or predicted t"
  before counting). Counting every correctly typed pair of the other types as TN_c instead would put
  F_c^t near F_d for every type, which the published figures (F_d 0.75 but F_c 0.43 for "other") rule
  out.

**Untyped nuclei** (the ones :mod:`wsi_nuc.type_trust` withholds a type from; type 0 here) stay on this
definition: a pair "true t, predicted untyped" counts in FN_c of t, so an untyped nucleus is a wrong type
and abstaining is never free in F_c (it can only lower it, through FN_c, while it spares F_c the
FP_c of the wrong types it withholds). F_d does not see types. An unpaired predicted nucleus that is
untyped enters no type's FP_d^t (it has no type), as in the reference code. ``wsi-nuc eval`` scores
types as ``run`` writes them (abstaining) unless told ``--no-type-check``.

Counts are pooled over all images of a set before the ratios are taken, as HoVer-Net does (a per-image
mean would weigh a crop with two nuclei like one with two hundred). Per image, :func:`type_counts` returns
plain integers and lists that add up across images with :func:`add_counts`.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

DETECTION_RADIUS_UM = 3.0   # 12 px at 0.25 µm/px (CoNSeP, 40x), HoVer-Net's pairing radius


def label_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids (ascending, 0 excluded) and (N, 2) centroids (y, x) in pixels of an instance label image.

    Examples
    --------
    >>> ids, c = label_centroids(np.array([[0, 1, 1], [0, 0, 2]]))
    >>> ids.tolist(), c.tolist()
    ([1, 2], [[0.0, 1.5], [1.0, 2.0]])
    """
    labels = np.asarray(labels)
    flat = labels.ravel().astype(np.int64)
    ids = np.unique(flat)
    ids = ids[ids > 0]
    if len(ids) == 0:
        return ids, np.zeros((0, 2))
    pos = np.searchsorted(ids, flat)
    inside = flat > 0
    pos, px = pos[inside], np.flatnonzero(inside)
    n = np.bincount(pos, minlength=len(ids)).astype(np.float64)
    w = labels.shape[-1]
    y = np.bincount(pos, px // w, len(ids)) / n
    x = np.bincount(pos, px % w, len(ids)) / n
    return ids, np.stack([y, x], 1)


def match_centroids(true_yx, pred_yx, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique pairing of true and predicted points no farther apart than ``radius``.

    The pairing has the most pairs possible within the radius and, among those, the least total
    distance (Hungarian assignment on each connected group of points within reach of each other).

    Parameters
    ----------
    true_yx, pred_yx : (N, 2), (M, 2) array_like
        Point coordinates (any units, the same as ``radius``).
    radius : float
        Largest distance of a pair (inclusive).

    Returns
    -------
    pairs : int64 (P, 2)
        (true index, predicted index), sorted by true index.
    unpaired_true, unpaired_pred : int64 arrays
        Indices left without a partner.

    Examples
    --------
    >>> p, ut, up = match_centroids([[0, 0], [0, 10]], [[0, 9], [0, 30]], radius=3)
    >>> p.tolist(), ut.tolist(), up.tolist()
    ([[1, 0]], [0], [1])
    """
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    a = np.asarray(true_yx, float).reshape(-1, 2)
    b = np.asarray(pred_yx, float).reshape(-1, 2)
    n, m = len(a), len(b)
    pairs = np.zeros((0, 2), np.int64)
    if n and m:
        # records (i, j, distance): a pair at distance 0 is listed like any other
        d = cKDTree(a).sparse_distance_matrix(cKDTree(b), float(radius), output_type="ndarray")
        rows, cols, dist = d["i"].astype(np.int64), d["j"].astype(np.int64), d["v"].astype(float)
        if len(rows):
            import scipy.sparse as sp

            graph = sp.coo_matrix((np.ones(len(rows)), (rows, n + cols)), shape=(n + m, n + m))
            _, comp = connected_components(graph, directed=False)
            big = float(radius) * (min(n, m) + 1) + 1.0  # no distance sum within reach comes close
            found = []
            order = np.argsort(comp[rows], kind="stable")
            rows, cols, dist = rows[order], cols[order], dist[order]
            bounds = np.flatnonzero(np.diff(comp[rows])) + 1
            for r, c, dd in zip(np.split(rows, bounds), np.split(cols, bounds), np.split(dist, bounds)):
                ur, ir = np.unique(r, return_inverse=True)
                uc, ic = np.unique(c, return_inverse=True)
                cost = np.full((len(ur), len(uc)), big)
                cost[ir, ic] = dd
                i, j = linear_sum_assignment(cost)
                ok = cost[i, j] < big
                found.append(np.stack([ur[i[ok]], uc[j[ok]]], 1))
            pairs = np.concatenate(found).astype(np.int64)
            pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    unpaired_true = np.setdiff1d(np.arange(n), pairs[:, 0]).astype(np.int64)
    unpaired_pred = np.setdiff1d(np.arange(m), pairs[:, 1]).astype(np.int64)
    return pairs, unpaired_true, unpaired_pred


def type_counts(true_labels, pred_labels, mpp: float | None, true_types=None, pred_types=None,
                n_types: int = 0, radius_um: float = DETECTION_RADIUS_UM) -> dict:
    """Detection and per-type counts of one image (plain ints and lists; add them with :func:`add_counts`).

    Parameters
    ----------
    true_labels, pred_labels : int (H, W)
        Instance label images on the same pixel grid.
    mpp : float or None
        µm per pixel of that grid; None: 0.25 (the scale at which HoVer-Net's 12 px were set).
    true_types, pred_types : int arrays, optional
        Type (0 unknown, 1..``n_types``) of each nucleus, in ascending label order (the order of
        :func:`label_centroids`). Without both, only detection is counted.
    n_types : int
        Number of types K.
    radius_um : float
        Pairing radius in µm.

    Returns
    -------
    dict
        ``tp_d``, ``fp_d``, ``fn_d``; with types also ``confusion`` ((K+1) x (K+1) nested list, rows
        true type, columns predicted type, index 0 unknown, over the pairs), ``unpaired_true`` and
        ``unpaired_pred`` (length K+1: unpaired nuclei per type).

    Examples
    --------
    >>> t = np.zeros((20, 40), int); t[2:6, 2:6] = 1; t[2:6, 30:34] = 2
    >>> p = np.zeros((20, 40), int); p[3:7, 3:7] = 1; p[12:16, 12:16] = 2
    >>> c = type_counts(t, p, 0.25, [3, 2], [3, 1], n_types=4)
    >>> c["tp_d"], c["fp_d"], c["fn_d"], c["confusion"][3][3], c["unpaired_true"][2], c["unpaired_pred"][1]
    (1, 1, 1, 1, 1, 1)
    """
    _, tc = label_centroids(true_labels)
    _, pc = label_centroids(pred_labels)
    radius = float(radius_um) / float(mpp or 0.25)
    pairs, ut, up = match_centroids(tc, pc, radius)
    out = {"tp_d": int(len(pairs)), "fp_d": int(len(up)), "fn_d": int(len(ut))}
    if true_types is None or pred_types is None or not n_types:
        return out
    tt = np.asarray(true_types, np.int64).ravel()
    pt = np.asarray(pred_types, np.int64).ravel()
    if len(tt) != len(tc) or len(pt) != len(pc):
        raise ValueError(f"types for {len(tt)} true / {len(pt)} predicted nuclei, "
                         f"labels hold {len(tc)} / {len(pc)}")
    k1 = int(n_types) + 1
    tt, pt = np.where((tt >= 0) & (tt < k1), tt, 0), np.where((pt >= 0) & (pt < k1), pt, 0)
    conf = np.zeros((k1, k1), np.int64)
    np.add.at(conf, (tt[pairs[:, 0]], pt[pairs[:, 1]]), 1)
    out["confusion"] = conf.tolist()
    out["unpaired_true"] = np.bincount(tt[ut], minlength=k1).tolist()
    out["unpaired_pred"] = np.bincount(pt[up], minlength=k1).tolist()
    return out


def add_counts(counts: list[dict]) -> dict:
    """Sum :func:`type_counts` results over images (the type keys only where every image has them).

    Examples
    --------
    >>> add_counts([{"tp_d": 1, "fp_d": 0, "fn_d": 2}, {"tp_d": 3, "fp_d": 1, "fn_d": 0}])
    {'tp_d': 4, 'fp_d': 1, 'fn_d': 2}
    """
    out = {k: int(sum(c[k] for c in counts)) for k in ("tp_d", "fp_d", "fn_d")}
    if counts and all("confusion" in c for c in counts):
        out["confusion"] = np.sum([c["confusion"] for c in counts], axis=0).tolist()
        out["unpaired_true"] = np.sum([c["unpaired_true"] for c in counts], axis=0).tolist()
        out["unpaired_pred"] = np.sum([c["unpaired_pred"] for c in counts], axis=0).tolist()
    return out


def detection_f1(tp: int, fp: int, fn: int) -> float:
    """``F_d = 2 TP / (2 TP + FP + FN)``; 1.0 when there is nothing to find and nothing was found.

    Examples
    --------
    >>> detection_f1(3, 1, 1)
    0.75
    """
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2.0 * tp / den


def classification_f1(counts: dict, t: int) -> float | None:
    """HoVer-Net's ``F_c^t`` of type ``t`` (1..K) from :func:`type_counts` / :func:`add_counts` results.

    None when type t occurs nowhere (neither true nor predicted, paired or not): the ratio is 0/0.

    Examples
    --------
    One pair true 1 / predicted 1, one pair true 1 / predicted 2, one unpaired true nucleus of type 1:
    F_c^1 = 2 * 1 / (2 * 1 + 2 * 0 + 2 * 1 + 0 + 1) = 0.4.

    >>> c = {"confusion": [[0, 0, 0], [0, 1, 1], [0, 0, 0]], "unpaired_true": [0, 1, 0],
    ...      "unpaired_pred": [0, 0, 0]}
    >>> classification_f1(c, 1)
    0.4
    """
    conf = np.asarray(counts["confusion"], np.int64)
    tp_c = int(conf[t, t])
    fp_c = int(conf[:, t].sum()) - tp_c          # true not-t, predicted t
    fn_c = int(conf[t, :].sum()) - tp_c          # true t, predicted not-t
    tn_c = 0                                     # true and predicted not-t among the pairs involving t
    fp_dt = int(counts["unpaired_pred"][t])
    fn_dt = int(counts["unpaired_true"][t])
    den = 2 * (tp_c + tn_c) + 2 * fp_c + 2 * fn_c + fp_dt + fn_dt
    return None if den == 0 else 2.0 * (tp_c + tn_c) / den


def type_key(name: str) -> str:
    """A type name as a JSON key suffix: lower case, runs of other characters as one underscore.

    Examples
    --------
    >>> type_key("spindle-shaped")
    'spindle_shaped'
    """
    import re

    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def type_scores(counts: dict, type_names) -> dict:
    """``f_d``, and with types ``f_c_<type>`` for each name and ``type_confusion``, from pooled counts.

    ``type_names[i]`` names type ``i + 1``. ``type_confusion`` is ``{"types": names, "matrix": rows true
    type, columns predicted type}`` over the pairs whose true and predicted types are both known.

    Examples
    --------
    >>> c = {"tp_d": 2, "fp_d": 0, "fn_d": 1, "confusion": [[0, 0, 0], [0, 1, 1], [0, 0, 0]],
    ...      "unpaired_true": [0, 1, 0], "unpaired_pred": [0, 0, 0]}
    >>> s = type_scores(c, ["a", "b"])
    >>> round(s["f_d"], 3), s["f_c_a"], s["f_c_b"], s["type_confusion"]["matrix"]
    (0.8, 0.4, 0.0, [[1, 1], [0, 0]])
    """
    out = {"f_d": detection_f1(counts["tp_d"], counts["fp_d"], counts["fn_d"])}
    if "confusion" not in counts:
        return out
    names = list(type_names)
    for t, name in enumerate(names, start=1):
        out[f"f_c_{type_key(name)}"] = classification_f1(counts, t)
    conf = np.asarray(counts["confusion"], np.int64)
    out["type_confusion"] = {"types": names, "matrix": conf[1:len(names) + 1, 1:len(names) + 1].tolist()}
    return out
