"""Nucleus types per nucleus: from a model's per-pixel type probabilities, or from a dataset's class map.

A model with a type head adds ``1 + K`` channels after the six instance maps (``fg``, ``boundary``,
``dist``, ``hv_x``, ``hv_y``, ``centre``): a softmax over background (channel 0) and the K types
(channels 1..K, CoNSeP numbering 1 other, 2 inflammatory, 3 epithelial, 4 spindle-shaped). Its
``config.json`` names the types in order (``"types": ["other", "inflammatory", ...]``); a config without
that key has no types.

**Which type a nucleus gets.** Each pixel of the nucleus votes for its most probable type among 1..K (the
background channel is left out: the instance mask has already said the pixel is nucleus), and the nucleus
takes the type with most votes; a tie goes to the type of higher summed probability. This is the
majority rule of HoVer-Net's post-processing (Graham et al. 2019), so F_c is comparable to its published
figures, and a few very confident pixels cannot outvote the body of the nucleus: the rim pixels, where
the head maps are upsampled and blended with the neighbour or the background, are the least reliable
and the most numerous in small nuclei.

**Its probability** (``type_prob``) is the mean over the nucleus' pixels of the chosen type's probability
*given that the pixel is nucleus*, ``p_t / (p_1 + ... + p_K)``: the instance mask already decided
"nucleus", so the background mass a pixel carries (high on the rim) would otherwise lower every type's
probability alike and make small nuclei look unsure of their type when they are only unsure of their
outline. It is 1 when every pixel is sure of the type, and 1/K at worst for the majority type's pixels.
"""
from __future__ import annotations

import numpy as np

# Instance head maps come first in the model output; a type head's 1 + K channels follow.
N_INSTANCE_MAPS = 6


def model_types(config: dict | None) -> tuple[str, ...]:
    """The type names a model's ``config.json`` declares (``"types"``), in channel order; () when none.

    Tolerant: a missing, empty or malformed key means the model has no type head.

    Examples
    --------
    >>> model_types({"types": ["other", "inflammatory", "epithelial", "spindle-shaped"]})
    ('other', 'inflammatory', 'epithelial', 'spindle-shaped')
    >>> model_types({"name": "he-student-int8"})
    ()
    """
    t = (config or {}).get("types")
    if not isinstance(t, (list, tuple)) or not t or not all(isinstance(x, str) and x for x in t):
        return ()
    return tuple(t)


def type_prob_map(maps: np.ndarray) -> np.ndarray | None:
    """The type probabilities ``(1 + K, H, W)`` in a model's activated maps, or None when it has none.

    Examples
    --------
    >>> type_prob_map(np.zeros((6, 4, 4))) is None
    True
    >>> type_prob_map(np.zeros((11, 4, 4))).shape
    (5, 4, 4)
    """
    return maps[N_INSTANCE_MAPS:] if maps.shape[0] > N_INSTANCE_MAPS + 1 else None


def _label_index(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel, 1 + the position of its label in ``ids`` (0: background or a label not in ``ids``)."""
    labels = np.asarray(labels)
    flat = labels.ravel()
    top = int(flat.max(initial=0))
    if len(ids) == 0:
        return np.zeros(flat.shape, np.int64), 1
    if top <= 4 * flat.size + 1024:  # compact ids: one lookup table
        lut = np.zeros(top + 1, np.int64)
        ok = (ids >= 0) & (ids <= top)
        lut[ids[ok]] = np.flatnonzero(ok) + 1
        return lut[flat], len(ids) + 1
    order = np.argsort(ids)
    pos = np.searchsorted(ids, flat, sorter=order)
    pos = np.minimum(pos, len(ids) - 1)
    hit = ids[order[pos]] == flat
    return np.where(hit, order[pos] + 1, 0).astype(np.int64), len(ids) + 1


def _ids(labels: np.ndarray, ids) -> np.ndarray:
    if ids is None:
        u = np.unique(labels)
        return u[u > 0].astype(np.int64)
    return np.asarray(ids, np.int64).ravel()


def nucleus_types(labels: np.ndarray, type_prob: np.ndarray, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Type (1..K) and type probability of each nucleus of an instance label image.

    Parameters
    ----------
    labels : int (H, W)
        Instance labels, 0 background.
    type_prob : float (1 + K, H, W)
        Per-pixel softmax over background (channel 0) and the K types.
    ids : sequence of int, optional
        The labels to type, in output order (default: every label present, ascending).

    Returns
    -------
    types : int64 (N,)
        Majority over the nucleus' pixels of the most probable type among 1..K (ties: higher summed
        probability); 0 for an id with no pixel.
    prob : float64 (N,)
        Mean over its pixels of ``p_type / (p_1 + ... + p_K)``; NaN for an id with no pixel.

    Examples
    --------
    >>> lab = np.array([[1, 1, 2]])
    >>> p = np.zeros((3, 1, 3)); p[1] = [0.8, 0.6, 0.1]; p[2] = 1 - p[1]   # background 0 everywhere
    >>> t, q = nucleus_types(lab, p)
    >>> t.tolist(), np.round(q, 2).tolist()
    ([1, 2], [0.7, 0.9])
    """
    types, probs = nucleus_type_probs(labels, type_prob, ids)
    rows = np.arange(len(types))
    with np.errstate(invalid="ignore"):
        prob = np.where(types > 0, probs[rows, np.maximum(types, 1) - 1], np.nan)
    return types, prob


def nucleus_type_probs(labels: np.ndarray, type_prob: np.ndarray, ids=None) -> tuple[np.ndarray, np.ndarray]:
    """Type (1..K, as :func:`nucleus_types`) and the whole per-nucleus probability vector of each nucleus.

    ``probs[i, k]`` is the mean over nucleus i's pixels of ``p_(k+1) / (p_1 + ... + p_K)`` (each row sums
    to 1; NaN for an id with no pixel): the vector :mod:`wsi_nuc.type_trust` calibrates.

    >>> lab = np.array([[1, 1, 2]])
    >>> p = np.zeros((3, 1, 3)); p[1] = [0.8, 0.6, 0.1]; p[2] = 1 - p[1]
    >>> t, q = nucleus_type_probs(lab, p)
    >>> t.tolist(), np.round(q, 2).tolist()
    ([1, 2], [[0.7, 0.3], [0.1, 0.9]])
    """
    labels = np.asarray(labels)
    type_prob = np.asarray(type_prob)
    if type_prob.ndim != 3 or type_prob.shape[1:] != labels.shape or type_prob.shape[0] < 2:
        raise ValueError(f"type_prob must be (1 + K, H, W) over labels {labels.shape}, got {type_prob.shape}")
    ids = _ids(labels, ids)
    k = type_prob.shape[0] - 1
    idx, n = _label_index(labels, ids)
    inside = np.flatnonzero(idx)
    li = idx[inside]
    p = type_prob[1:].reshape(k, -1)[:, inside].astype(np.float64)      # (K, n_px) type channels only
    s = p.sum(0)
    cond = p / np.where(s > 0, s, 1.0)                                   # P(type | nucleus) per pixel
    vote = cond.argmax(0)                                                # 0..K-1
    votes = np.bincount(li * k + vote, minlength=n * k).reshape(n, k).astype(np.float64)
    mass = np.stack([np.bincount(li, cond[j], n) for j in range(k)], 1)  # (n, K) summed P(type | nucleus)
    npx = np.bincount(li, minlength=n)
    # votes are integers and the summed probability of a type is below the pixel count + 1, so adding
    # it scaled into [0, 1) breaks ties without changing a strict majority
    best = (votes + mass / (npx[:, None] + 1.0)).argmax(1)
    types = np.where(npx > 0, best + 1, 0)[1:].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = (mass / np.where(npx > 0, npx, np.nan)[:, None])[1:]
    return types, probs


def true_nucleus_types(labels: np.ndarray, classes: np.ndarray, ids=None) -> np.ndarray:
    """Ground-truth type of each nucleus: the majority of the non-zero class pixels inside it.

    Parameters
    ----------
    labels : int (H, W)
        Ground-truth instance labels, 0 background.
    classes : int (H, W)
        Per-pixel class map of the dataset (``classes/<stem>.png``): 0 background, 1..K types.
    ids : sequence of int, optional
        The labels to type, in output order (default: every label present, ascending).

    Returns
    -------
    int64 (N,)
        The most frequent non-zero class among the nucleus' pixels (ties: the lower class id); 0 when
        none of its pixels has a class.

    Examples
    --------
    >>> lab = np.array([[1, 1, 1, 2, 2]])
    >>> cls = np.array([[3, 3, 2, 0, 0]])
    >>> true_nucleus_types(lab, cls).tolist()
    [3, 0]
    """
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    if classes.shape != labels.shape:
        raise ValueError(f"classes {classes.shape} and labels {labels.shape} differ in shape")
    ids = _ids(labels, ids)
    idx, n = _label_index(labels, ids)
    c = classes.ravel().astype(np.int64)
    keep = (idx > 0) & (c > 0)
    if not keep.any():
        return np.zeros(len(ids), np.int64)
    k = int(c[keep].max())
    counts = np.bincount(idx[keep] * (k + 1) + c[keep], minlength=n * (k + 1)).reshape(n, k + 1)
    counts[:, 0] = 0
    out = counts.argmax(1)
    out[counts.max(1) == 0] = 0
    return out[1:].astype(np.int64)


def paint_types(labels: np.ndarray, ids, types) -> np.ndarray:
    """A uint8 class image: every pixel of nucleus ``ids[i]`` set to ``types[i]``, 0 elsewhere.

    Examples
    --------
    >>> paint_types(np.array([[0, 1, 2, 2]]), [1, 2], [4, 2]).tolist()
    [[0, 4, 2, 2]]
    """
    ids = np.asarray(ids, np.int64).ravel()
    types = np.asarray(types).ravel()
    idx, n = _label_index(np.asarray(labels), ids)
    lut = np.zeros(n, np.uint8)
    lut[1:] = np.clip(types, 0, 255).astype(np.uint8)
    return lut[idx].reshape(np.shape(labels))


def to_dataset_ids(type_names, classes: dict[int, str]) -> np.ndarray:
    """Lookup table from a model's type index (1..K, its ``types`` order) to a dataset's class id.

    Types are matched by name (case, spaces, hyphens and underscores ignored); when some model type is
    not among the dataset's names, the model's numbering is taken as the dataset's (index k -> id k).
    Index 0 (no type) maps to 0.

    Examples
    --------
    >>> to_dataset_ids(["b", "a"], {1: "a", 2: "b"}).tolist()
    [0, 2, 1]
    >>> to_dataset_ids(["x", "y"], {1: "a", 2: "b"}).tolist()
    [0, 1, 2]
    """
    def key(s):
        return "".join(ch for ch in str(s).lower() if ch.isalnum())

    names = list(type_names)
    by_name = {key(v): int(k) for k, v in classes.items()}
    if names and all(key(n) in by_name for n in names):
        return np.array([0] + [by_name[key(n)] for n in names], np.int64)
    return np.arange(len(names) + 1, dtype=np.int64)
