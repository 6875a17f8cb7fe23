"""A shape prior on nucleus types: the network's per-nucleus type probabilities reweighted by how likely
the nucleus' shape is under each type.

The type head reads texture and colour, learned on colorectal tissue only; off that tissue it can call a
big round keratinocyte nucleus "spindle-shaped" with confidence. Size and elongation carry over between
organs better than texture (a spindle-shaped nucleus is small and long wherever it is), so a model's
``types_calibration`` block may hold ``"prior"``: per type, a Gaussian over shape features
(:mod:`wsi_nuc.type_features`: ``log_area`` and ``elongation``) of the CoNSeP train nuclei truly of that
type, and a weight ``w`` chosen on CoNSeP val (:mod:`wsi_nuc.train.calibrate_types`). Then

    q'(t) ∝ q(t) · (N(shape | t) / c_t)^w

replaces the network's probabilities ``q``, and its argmax the network's type, before the temperature,
thresholds and the tissue check of :mod:`wsi_nuc.type_trust`; the network's own type stays in
``type_model``. ``log c_t`` is the mean of ``log N(shape | t)`` over all the fitted nuclei, so that the
prior moves nuclei between types by their shape and not by the types' overall frequencies. ``w = 0`` or no
block: ``q`` unchanged.
"""
from __future__ import annotations

import numpy as np

from .type_features import FEATURES

PRIOR_FEATURES = ("log_area", "elongation")
SHRINK = 0.1


def shrunk_gaussian(f: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, inverse and log-determinant of the covariance of the rows of ``f`` (N, F), shrunk towards its
    diagonal by ``shrink``: the Gaussians of the shape prior and of the tissue check
    (:func:`wsi_nuc.train.calibrate_types.fit_ood`)."""
    cov = np.atleast_2d(np.cov(f, rowvar=False))
    cov = (1 - shrink) * cov + shrink * np.diag(np.diag(cov))
    return f.mean(0), np.linalg.inv(cov), float(np.linalg.slogdet(cov)[1])


def mahalanobis_sq(d: np.ndarray, icov) -> np.ndarray:
    """Squared Mahalanobis length of each row of the differences ``d`` (N, F) under the inverse covariance."""
    return np.einsum("ij,jk,ik->i", d, np.asarray(icov, float), d)


def fit(features: np.ndarray, true: np.ndarray, names, use=PRIOR_FEATURES, shrink: float = SHRINK) -> dict:
    """Per type name: mean, inverse and log-determinant of the shrunk covariance of ``features`` (N, F
    in :data:`~wsi_nuc.type_features.FEATURES` order) of the nuclei whose true type (1..K) is that type.
    The weight is 0 until chosen (:func:`wsi_nuc.train.calibrate_types.choose_prior_weight`)."""
    cols = [FEATURES.index(n) for n in use]
    out = {"features": list(use), "weight": 0.0, "shrink": shrink, "mean": {}, "icov": {}, "logdet": {}, "n": {}}
    for k, name in enumerate(names, start=1):
        f = np.asarray(features, float)[np.asarray(true) == k][:, cols]
        f = f[np.isfinite(f).all(1)]
        if len(f) < 5 * len(cols):
            continue
        mu, icov, logdet = shrunk_gaussian(f, shrink)
        out["mean"][name] = np.round(mu, 5).tolist()
        out["icov"][name] = np.round(icov, 5).tolist()
        out["logdet"][name] = round(logdet, 5)
        out["n"][name] = int(len(f))
    # centred over all the nuclei (every type): on average no type gains, so the weight buys shape, not a
    # shift of the types' frequencies (which the network's calibration owns)
    every = np.asarray(features, float)[np.asarray(true) > 0]
    ll = log_likelihood(every, {**out, "offset": {}}, list(out["mean"]))
    ok = np.isfinite(every[:, cols]).all(1)
    out["offset"] = {n: round(float(ll[ok, k].mean()), 5) for k, n in enumerate(out["mean"])}
    return out


def log_likelihood(features: np.ndarray, prior: dict, types) -> np.ndarray:
    """(N, K) Gaussian log-density of each nucleus' shape (``features``: N rows in
    :data:`~wsi_nuc.type_features.FEATURES` order) under each type, less the type's mean over the fitting
    nuclei (``offset``); 0 for a type without a fit and for a nucleus without finite shape features (no
    information either way)."""
    f = np.asarray(features, float)[:, [FEATURES.index(n) for n in prior["features"]]]
    out = np.zeros((len(f), len(types)))
    ok = np.isfinite(f).all(1)
    for k, name in enumerate(types):
        if name not in prior.get("mean", {}):
            continue
        d = f[ok] - np.asarray(prior["mean"][name], float)
        out[ok, k] = (-0.5 * mahalanobis_sq(d, prior["icov"][name]) - 0.5 * float(prior["logdet"][name])
                      - float(prior.get("offset", {}).get(name, 0.0)))
    return out


def apply(codes: np.ndarray, q: np.ndarray, features, prior: dict | None, types,
          weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(codes', q')``: the probabilities reweighted by the shape likelihood to the power ``weight``
    (default the prior's) and renormalised, and the type their argmax (only where the network gave one).

    >>> p = {"features": ["log_area", "elongation"], "weight": 1.0, "logdet": {"a": 0.0, "b": 0.0},
    ...      "mean": {"a": [3.0, 0.0], "b": [1.0, 0.7]}, "icov": {"a": [[1, 0], [0, 1]], "b": [[1, 0], [0, 1]]}}
    >>> f = np.zeros((1, 6)); f[0, :2] = [3.0, 0.1]          # big and round: "a"
    >>> c, q = apply(np.array([2]), np.array([[0.4, 0.6]]), f, p, ("a", "b"))
    >>> c.tolist(), bool(q[0, 0] > 0.8)
    ([1], True)
    """
    codes = np.asarray(codes, np.int64)
    q = np.asarray(q, np.float64)
    w = float(prior.get("weight", 0.0) if weight is None else weight) if prior else 0.0
    if w == 0.0 or features is None or not len(codes):
        return codes, q
    lq = np.log(np.clip(q, 1e-6, 1.0)) + w * log_likelihood(features, prior, types)
    lq -= lq.max(1, keepdims=True)
    e = np.exp(lq)
    q2 = e / e.sum(1, keepdims=True)
    has = (codes > 0) & np.isfinite(q2).all(1)
    q2[~has] = q[~has]
    return np.where(has, q2.argmax(1) + 1, codes), q2
