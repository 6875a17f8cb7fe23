"""Fitting what :mod:`wsi_nuc.type_trust` needs for a typed model, on an annotated set with per-pixel types
(CoNSeP: ``classes/``), and storing it under ``"types_calibration"`` in the model's ``config.json``.

    python -m wsi_nuc.train.calibrate_types --model wsi_nuc/models/he-types-int8 \\
        --dataset ../shared/data/consep-train --write --report benchmarks/results/types-calibration-v05

1. Every image of the train and val splits is segmented with the same code as ``wsi-nuc eval``
   (:func:`wsi_nuc.segment.segment_image_detail`); each predicted nucleus is paired with a true one as
   HoVer-Net pairs them (:func:`wsi_nuc.metrics_types.match_centroids`, 3 µm) and gets its true type.
2. **Shape prior** (:mod:`wsi_nuc.type_prior`): per type, a Gaussian over ``log_area`` and ``elongation``
   of the train nuclei truly of that type; its weight is the one of :data:`PRIOR_WEIGHTS` whose reweighted
   val probabilities reach the least NLL after their own temperature (``--prior-weight`` fixes it). The
   steps below see the reweighted probabilities and types.
3. **Temperature** (val): the T of :func:`wsi_nuc.type_trust.calibrate` that minimises the negative
   log-likelihood of the true type over the paired val nuclei (bounded 1-D search).
4. **Thresholds** (val): per type, the least calibrated probability at which the val nuclei given that
   type and at least that probability are of that type with the target precision (0.8); a type that
   never reaches it with :data:`MIN_SUPPORT` nuclei gets 1.0 (never given).
5. **Familiar tissue** (train): per type, the mean and inverse covariance (shrunk) of the stain-normalised
   features (:mod:`wsi_nuc.type_features`) of the train nuclei truly of that type and given it, and a
   limit on the Mahalanobis distance: the :data:`OOD_QUANTILE` quantile of those nuclei's own distances.
6. **Stain range** (train): per-image CIELAB mean and std, widened by :data:`STAIN_MARGIN` of their spread.

Reported: NLL and top-label ECE (15 equal bins; confidence = probability of the model's type) before and
after, the reliability diagram (JSON and PNG), and how many val nuclei each check withholds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..type_features import FEATURES

PRECISION = 0.8
MIN_SUPPORT = 20
OOD_QUANTILE = 0.95
# the nucleus' size and the colour of the tissue around it: on CoNSeP val and CMU skin these separate the
# nuclei the head types wrongly off its tissue best among the features of wsi_nuc.type_features
OOD_FEATURES = ("log_area", "ring_L", "ring_b")
# the shape prior's weights tried on val (0: none)
PRIOR_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))
SHRINK = 0.05
STAIN_MARGIN = 0.5
BINS = 15


def collect(dataset_dir, split: str, predictor, log=None) -> dict:
    """Per predicted nucleus of ``split``: ``types``, ``q`` (N, K), ``features`` (N, F), ``true`` (the paired
    true nucleus' type; -1 unpaired, 0 true type unknown), ``image`` (index); and ``stain`` (per image, 6)."""
    from ..dataset import list_stems, load_sample, read_index
    from ..instances import InstanceParams
    from ..metrics_types import label_centroids, match_centroids
    from ..segment import segment_image_detail
    from ..type_map import true_nucleus_types

    root = Path(dataset_dir)
    meta = read_index(root)
    params = InstanceParams.from_dict(predictor.config.get("postprocess"))
    acc, stains = [], []
    for i, stem in enumerate(list_stems(root, split)):
        s = load_sample(root, stem, meta)
        labels, d = segment_image_detail(s.image, predictor, params, s.mpp)
        if d is None:
            raise ValueError(f"{predictor.config.get('name')}: the model has no type head")
        true = np.full(len(d["types"]), -1, np.int64)
        if s.classes is not None and s.labels is not None:
            tt = true_nucleus_types(s.labels, s.classes)
            _, tc = label_centroids(s.labels)
            _, pc = label_centroids(labels)
            pairs, _, _ = match_centroids(tc, pc, 3.0 / float(s.mpp or predictor.mpp))
            true[pairs[:, 1]] = tt[pairs[:, 0]]
        acc.append({"types": d["types"], "q": d["q"], "features": d["features"], "true": true,
                    "image": np.full(len(true), i)})
        st = d["stain"]
        stains.append(list(st.mean) + list(st.std) if st is not None else [np.nan] * 6)
        if log and i % 50 == 0:
            log(f"{split}: {i + 1} images")
    out = {k: np.concatenate([a[k] for a in acc]) for k in acc[0]}
    out["stain"] = np.asarray(stains, float)
    return out


def nll(p: np.ndarray, true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true types (1..K) under probabilities (N, K)."""
    return float(-np.mean(np.log(np.clip(p[np.arange(len(true)), true - 1], 1e-12, 1.0))))


def reliability(conf, correct, bins: int = BINS) -> dict:
    """Top-label reliability diagram: per equal-width bin count, mean confidence, accuracy; and the ECE."""
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, float)
    idx = np.clip((conf * bins).astype(np.int64), 0, bins - 1)
    n = np.bincount(idx, minlength=bins)
    sc = np.bincount(idx, conf, bins)
    sy = np.bincount(idx, correct, bins)
    nz = n > 0
    ece = float(np.abs(sc[nz] - sy[nz]).sum() / max(len(conf), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"bins": bins, "count": n.tolist(), "confidence": np.where(nz, sc / n, np.nan).round(4).tolist(),
                "accuracy": np.where(nz, sy / n, np.nan).round(4).tolist(), "ece": round(ece, 4)}


def fit_temperature(q: np.ndarray, true: np.ndarray) -> float:
    """The T minimising :func:`nll` of ``calibrate(q, T)`` (0.05..20, on log T)."""
    from scipy.optimize import minimize_scalar

    from ..type_trust import calibrate

    r = minimize_scalar(lambda lt: nll(calibrate(q, float(np.exp(lt))), true), bounds=(np.log(0.05), np.log(20.0)),
                        method="bounded", options={"xatol": 1e-4})
    return float(np.exp(r.x))


def choose_thresholds(prob, types, true, names, precision: float = PRECISION,
                      min_support: int = MIN_SUPPORT) -> tuple[dict, dict]:
    """Per type name: the least threshold whose kept nuclei (given the type, probability >= it) reach
    ``precision`` with at least ``min_support`` of them (1.0 when none does); and what each keeps."""
    th, kept = {}, {}
    for k, name in enumerate(names, start=1):
        m = types == k
        p, ok = prob[m], (true[m] == k)
        order = np.argsort(-p, kind="stable")
        p, ok = p[order], ok[order]
        prec = np.cumsum(ok) / np.arange(1, len(ok) + 1) if len(ok) else np.zeros(0)
        good = np.flatnonzero((prec >= precision) & (np.arange(1, len(ok) + 1) >= min_support))
        if len(good):
            j = good[-1]
            while j + 1 < len(p) and p[j + 1] == p[j]:   # a threshold keeps all nuclei at its value
                j += 1
            th[name] = float(p[j])
            kept[name] = {"n": int(j + 1), "of": int(len(p)), "precision": round(float(prec[j]), 4)}
        else:
            th[name] = 1.0
            kept[name] = {"n": 0, "of": int(len(p)), "precision": None}
    return th, kept


def fit_ood(features: np.ndarray, types: np.ndarray, true: np.ndarray, names, quantile: float = OOD_QUANTILE,
            shrink: float = SHRINK, use=OOD_FEATURES) -> dict:
    """Per type: mean, inverse of the shrunk covariance and distance limit of the train nuclei truly of that
    type and given it (missing feature values at the mean)."""
    from ..type_prior import shrunk_gaussian
    from ..type_trust import ood_distance

    out = {"features": list(use), "quantile": quantile, "shrink": shrink, "mean": {}, "icov": {},
           "limit": {}, "n": {}}
    cols = [FEATURES.index(n) for n in use]
    for k, name in enumerate(names, start=1):
        f = features[(types == k) & (true == k)][:, cols]
        if len(f) < 2 * f.shape[1]:
            continue
        g = np.where(np.isfinite(f), f, np.nanmean(f, 0))
        mu, icov, _ = shrunk_gaussian(g, shrink)
        out["mean"][name] = np.round(mu, 5).tolist()
        out["icov"][name] = np.round(icov, 5).tolist()
        d = ood_distance(g, np.full(len(g), k), {"features": list(use), "mean": {name: out["mean"][name]},
                                                 "icov": {name: out["icov"][name]}}, [None] * (k - 1) + [name])
        out["limit"][name] = round(float(np.quantile(d, quantile)), 4)
        out["n"][name] = int(len(f))
    return out


def stain_range(stats: np.ndarray, margin: float = STAIN_MARGIN) -> dict:
    """Per-image CIELAB mean and std (n, 6) -> their range widened by ``margin`` of it on each side."""
    s = stats[np.isfinite(stats).all(1)]
    lo, hi = s.min(0), s.max(0)
    w = hi - lo
    return {"lo": np.round(lo - margin * w, 3).tolist(), "hi": np.round(hi + margin * w, 3).tolist(),
            "n_images": int(len(s))}


def choose_prior_weight(val: dict, prior: dict, names, weights=PRIOR_WEIGHTS) -> tuple[float, dict]:
    """The shape prior's weight (:mod:`wsi_nuc.type_prior`) with the least val NLL after its own temperature
    (the first of equals; 0 keeps the network's probabilities), and the NLL of every weight tried."""
    from .. import type_prior
    from ..type_trust import calibrate

    m = val["true"] > 0
    path = {}
    for w in weights:
        _, q = type_prior.apply(val["types"][m], val["q"][m], val["features"][m], prior, names, weight=w)
        path[float(w)] = round(nll(calibrate(q, fit_temperature(q, val["true"][m])), val["true"][m]), 5)
    best = min(path, key=lambda w: (path[w], w))
    return best, path


def with_prior(d: dict, prior: dict, names) -> dict:
    """:func:`collect` results with the model's types and probabilities reweighted by the shape prior."""
    from .. import type_prior

    types, q = type_prior.apply(d["types"], d["q"], d["features"], prior, names)
    return {**d, "types": types, "q": q}


def fit(train: dict, val: dict, names, precision: float = PRECISION,
        prior_weight: float | None = None, prior_features=None) -> tuple[dict, dict]:
    """(the ``types_calibration`` block, the report) from :func:`collect` results of train and val.
    ``prior_weight``: the shape prior's weight (None: chosen on val, :func:`choose_prior_weight`);
    ``prior_features``: its features (default :data:`wsi_nuc.type_prior.PRIOR_FEATURES`)."""
    from .. import type_prior
    from ..type_trust import TypeTrust, calibrate, decide

    prior = type_prior.fit(train["features"], train["true"], names, prior_features or type_prior.PRIOR_FEATURES)
    path = {}
    if prior_weight is None:
        prior_weight, path = choose_prior_weight(val, prior, names)
    prior["weight"] = float(prior_weight)
    m = val["true"] > 0
    t0, p0 = val["types"][m], calibrate(val["q"][m], 1.0)     # "before": the network's own probabilities
    train, val = with_prior(train, prior, names), with_prior(val, prior, names)
    q, t, true = val["q"][m], val["types"][m], val["true"][m]
    temp = fit_temperature(q, true)
    rows = np.arange(len(t))
    p1 = calibrate(q, temp)
    th, kept = choose_thresholds(p1[rows, t - 1], t, true, names, precision)
    ood = fit_ood(train["features"], train["types"], train["true"], names)
    block = {"method": "temperature", "temperature": round(temp, 4),
             "thresholds": {n: round(th[n], 4) for n in names}, "precision_target": precision,
             "ood": ood, "stain": stain_range(train["stain"]), "prior": prior,
             "trained_on": "colorectal tissue (CoNSeP)",
             "fitted_on": "CoNSeP val (temperature, thresholds; per nucleus, paired with the true nuclei at 3 µm), "
                          "CoNSeP train (tissue check, stain range)"}
    report = {"temperature": block["temperature"], "prior_weight": prior["weight"], "prior_nll_by_weight": path,
              "n_val_paired": int(m.sum()),
              "nll_before": round(nll(p0, true), 4), "nll_after": round(nll(p1, true), 4),
              "reliability_before": reliability(p0[rows, t0 - 1], t0 == true),
              "reliability_after": reliability(p1[rows, t - 1], t == true),
              "thresholds": block["thresholds"], "kept_at_threshold": kept}
    report["ece_before"] = report["reliability_before"]["ece"]
    report["ece_after"] = report["reliability_after"]["ece"]
    trust = TypeTrust(tuple(names), temp, tuple(th[n] for n in names), ood, block["stain"])  # prior applied above
    for split, d in (("val", val), ("train", train)):
        r = decide(d["types"], d["q"], d["features"], trust)
        n = max(len(r["type"]), 1)
        report[f"{split}_typed_fraction"] = round(float((r["type"] > 0).sum() / n), 4)
        report[f"{split}_withheld"] = {name: int((r["reason"] == k + 1).sum())
                                       for k, name in enumerate(("stain", "unfamiliar_tissue", "low_confidence"))}
        ok = (d["true"] > 0) & (d["types"] == d["true"])
        report[f"{split}_correct_withheld_by_tissue_check"] = round(float((r["reason"][ok] == 2).mean()), 4) \
            if ok.any() else None
    return block, report


def reliability_png(path, report: dict) -> None:
    """Reliability diagram (before / after calibration) as a small PNG, drawn with Pillow."""
    from PIL import Image, ImageDraw

    size, pad = 360, 50
    img = Image.new("RGB", (2 * size + 3 * pad, size + 2 * pad + 30), "white")
    d = ImageDraw.Draw(img)
    for j, key in enumerate(("reliability_before", "reliability_after")):
        rel = report[key]
        x0, y0 = pad + j * (size + pad), pad
        d.rectangle([x0, y0, x0 + size, y0 + size], outline="black")
        d.line([x0, y0 + size, x0 + size, y0], fill=(160, 160, 160))
        b = rel["bins"]
        for i in range(b):
            acc = rel["accuracy"][i]
            if acc is None or acc != acc:
                continue
            bx0, bx1 = x0 + size * i / b, x0 + size * (i + 1) / b
            d.rectangle([bx0 + 1, y0 + size * (1 - acc), bx1 - 1, y0 + size], fill=(70, 120, 200), outline="black")
            conf = rel["confidence"][i]
            d.line([bx0 + 1, y0 + size * (1 - conf), bx1 - 1, y0 + size * (1 - conf)], fill=(220, 40, 40), width=2)
        title = "before" if j == 0 else f"after (T = {report['temperature']:.3f})"
        d.text((x0, y0 - 30), f"{title}: ECE {rel['ece']:.4f}", fill="black")
        d.text((x0, y0 + size + 6), "confidence of the given type (bars: accuracy, red: mean confidence)",
               fill="black")
    d.text((pad, size + 2 * pad + 10), f"CoNSeP val, {report['n_val_paired']} paired nuclei; NLL "
           f"{report['nll_before']:.4f} -> {report['nll_after']:.4f}", fill="black")
    img.save(path)


def main(argv=None) -> int:
    import argparse

    import torch

    from ..predict import get_predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--precision", type=float, default=PRECISION)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="store the block in the model's config.json")
    ap.add_argument("--report", help="write REPORT.json and REPORT.png")
    ap.add_argument("--cache", help="an .npz of the collected nuclei (read when it exists, else written)")
    ap.add_argument("--prior-weight", type=float, default=None,
                    help="the shape prior's weight (default: chosen on val; 0: no prior)")
    ap.add_argument("--prior-features", nargs="+", choices=FEATURES, default=None,
                    help="the shape prior's features (default: log_area elongation)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pred = get_predictor(a.model, "cpu", types=True)
    pred.config = {k: v for k, v in pred.config.items() if k != "types_calibration"}
    names = list(pred.types)
    data = _cached(a.cache, lambda: {s: collect(a.dataset, s, pred, log=print) for s in ("train", "val")})
    block, report = fit(data["train"], data["val"], names, a.precision, a.prior_weight, a.prior_features)
    print(json.dumps({k: v for k, v in report.items() if not k.startswith("reliability")}, indent=1))
    if a.report:
        Path(a.report).parent.mkdir(parents=True, exist_ok=True)
        Path(a.report + ".json").write_text(json.dumps({"model": a.model, "dataset": a.dataset, **report,
                                                        "block": block}, indent=1) + "\n")
        reliability_png(a.report + ".png", report)
    if a.write:
        cfg_path = Path(pred.config["path"]) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["types_calibration"] = {**block, "ece_before": report["ece_before"], "ece_after": report["ece_after"],
                                    "nll_before": report["nll_before"], "nll_after": report["nll_after"],
                                    "checked_on": (cfg.get("types_calibration") or {}).get("checked_on", "")}
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return 0


def _cached(path, make) -> dict:
    if path and Path(path).exists():
        z = np.load(path)
        out: dict = {}
        for k in z.files:
            split, key = k.split("/", 1)
            out.setdefault(split, {})[key] = z[k]
        return out
    data = make()
    if path:
        np.savez_compressed(path, **{f"{s}/{k}": v for s, d in data.items() for k, v in d.items()})
    return data


if __name__ == "__main__":
    raise SystemExit(main())
