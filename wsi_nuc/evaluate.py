"""Score a model on an annotated dataset folder with the same inference and instance code as ``run``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import class_names, list_stems, load_sample, read_index
from .instances import InstanceParams


def save_prediction(path: Path, labels: np.ndarray) -> None:
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) < 65535 else np.uint32
    tifffile.imwrite(path, labels.astype(dtype), compression="zlib")


def save_classes(path: Path, classes: np.ndarray) -> None:
    """A per-pixel type map as an 8-bit greyscale PNG (0 background, the dataset's type ids)."""
    from PIL import Image

    Image.fromarray(np.asarray(classes, np.uint8)).save(path)


def evaluate(dataset_dir: str | Path, model: str | None = None, split: str | None = None,
             device: str = "auto", save_dir: str | Path | None = None, params: dict | None = None,
             log=None, auto_scale: bool = True, tta: int = 1, type_threshold: float | None = None,
             abstain: bool = True) -> dict:
    """Per-image and aggregate metrics of ``model`` on ``dataset_dir``.

    ``split`` defaults to ``val`` when dataset.json has a split, else ``all``. ``params`` overrides the
    model's post-processing settings (for tuning). Images of unknown scale are segmented at the scale
    :func:`wsi_nuc.scale.estimate_mpp` finds for them when ``auto_scale`` and the model records its
    training nuclei's size, else at their own pixels. Returns ``{"aggregate": {...}, "images": [...]}``,
    each image with the scale used (``mpp``) and where it came from (``mpp_source``).

    Detection and types (HoVer-Net's F1s, :mod:`wsi_nuc.metrics_types`): every scored image also gets
    ``f_d`` and its pairing counts (``type_counts``); the aggregate gets ``f_d`` from the counts pooled
    over the images. When the model has a type head (``"types"`` in its config.json) and the dataset has
    ``classes/<stem>.png``, the aggregate also holds ``f_c_<type>`` for each of the dataset's types
    (dataset.json ``"classes"``; names with underscores, e.g. ``f_c_spindle_shaped``) and
    ``type_confusion`` (rows true, columns predicted type, over the paired nuclei). With ``save_dir``,
    a model with types also writes ``<stem>.classes.png`` (uint8, each predicted nucleus painted with its
    type in the dataset's numbering, 0 background).

    Types are scored as ``run`` writes them (:mod:`wsi_nuc.type_trust`): a nucleus the model's calibration
    withholds is untyped, and an untyped nucleus paired with a true nucleus of type t counts as a wrong
    type for t (HoVer-Net's definition, :mod:`wsi_nuc.metrics_types`), so abstaining is not free.
    ``type_threshold`` replaces the model's per-type thresholds; ``abstain=False`` keeps every type the
    model gives (the scores before the check). The aggregate's ``typed_fraction`` is the share of predicted
    nuclei that kept a type.
    """
    from .model.io import check_model_dir, resolve_model_dir
    from .predict import get_predictor

    root = Path(dataset_dir)
    meta = read_index(root)
    if split is None:
        split = "val" if meta.get("split") else "all"
    stems = list_stems(root, split)
    from .dataset_checks import check_save_dir
    from .validate import check_postprocess

    save_dir = check_save_dir(save_dir, root, stems)    # a file, the dataset's or a user's files: refused first
    model_dir = resolve_model_dir(model, device)
    check_postprocess(check_model_dir(model_dir), model_dir)
    predictor = get_predictor(model, device)
    before, predictor.tta = predictor.tta, int(tta)      # the cached predictor: restored on the way out
    try:
        from .type_trust import TypeTrust

        trust = TypeTrust.from_config(predictor.config, type_threshold, abstain)
        return _evaluate(root, meta, split, stems, predictor, params, save_dir, log, auto_scale, trust)
    finally:
        predictor.tta = before


def _evaluate(root, meta, split, stems, predictor, params, save_dir, log, auto_scale, trust=None) -> dict:
    """:func:`evaluate` with the model loaded: every image scored, then the aggregate."""
    from .metrics import aggregate
    from .metrics_types import add_counts, type_scores
    from .type_map import to_dataset_ids

    p = InstanceParams.from_dict({**(predictor.config.get("postprocess") or {}), **(params or {})})
    classes = class_names(meta)
    lut = to_dataset_ids(predictor.types, classes) if predictor.types else None
    n_types = max([*classes, *(lut.tolist() if lut is not None else [])], default=0)
    names = [classes.get(i, f"type_{i}") for i in range(1, n_types + 1)]
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
    per_image = []
    for stem in stems:
        sc = _evaluate_image(load_sample(root, stem, meta), stem, predictor, p, auto_scale, lut, n_types, save_dir,
                             trust)
        if sc is not None:
            per_image.append(sc)
            if log:
                log(sc)
    agg = aggregate(per_image) if per_image else {}
    if per_image:
        agg.update(type_scores(add_counts([sc["type_counts"] for sc in per_image]), names))
        if lut is not None:
            n_pred = sum(sc.get("n_pred", 0) for sc in per_image)
            agg["typed_fraction"] = (sum(sc.get("n_typed", 0) for sc in per_image) / n_pred) if n_pred else None
            agg["abstain"] = bool(trust is not None and trust.abstain)
    return {"dataset": str(root), "split": split, "model": predictor.config.get("name"),
            "types": list(predictor.types), "postprocess": p.to_dict(), "aggregate": agg, "images": per_image}


def _evaluate_image(s, stem: str, predictor, p: InstanceParams, auto_scale: bool, lut, n_types: int,
                    save_dir: Path | None, trust=None) -> dict | None:
    """One image: segment (at its scale), save the prediction when asked, score it against its labels (None
    when it has none); ``lut`` maps the model's types to the dataset's (None: no type head)."""
    from .metrics import score_image
    from .metrics_types import detection_f1, type_counts
    from .type_map import paint_types, true_nucleus_types

    pred, ptypes, _, mpp, source = segment_at_scale_typed(s.image, s.mpp, predictor, p, auto_scale, lut is not None,
                                                          trust)
    ds_types = lut[ptypes] if ptypes is not None else None
    if save_dir is not None:
        from .dataset_checks import note_prediction

        note_prediction(save_dir, f"{stem}.tif")
        save_prediction(save_dir / f"{stem}.tif", pred)
        if ds_types is not None:
            pred_ids = np.unique(pred)
            note_prediction(save_dir, f"{stem}.classes.png")
            save_classes(save_dir / f"{stem}.classes.png", paint_types(pred, pred_ids[pred_ids > 0], ds_types))
    if s.labels is None:
        return None
    sc = score_image(s.labels, pred)
    true_types = None
    if ds_types is not None and s.classes is not None:
        true_types = true_nucleus_types(s.labels, s.classes)
    counts = type_counts(s.labels, pred, mpp or predictor.mpp, true_types,
                         ds_types if true_types is not None else None, n_types)
    sc.update(image=stem, mpp=mpp, mpp_source=source,
              f_d=detection_f1(counts["tp_d"], counts["fp_d"], counts["fn_d"]), type_counts=counts)
    if ptypes is not None:
        sc.update(n_pred=int(len(ptypes)), n_typed=int((np.asarray(ptypes) > 0).sum()))
    return sc


def segment_at_scale(image: np.ndarray, mpp: float | None, predictor, params: InstanceParams,
                     auto_scale: bool = True) -> tuple[np.ndarray, float | None, str]:
    """Instance labels of one image, the scale used, and its source (dataset | estimated | native)."""
    labels, _, _, mpp, source = segment_at_scale_typed(image, mpp, predictor, params, auto_scale, False)
    return labels, mpp, source


def segment_at_scale_typed(image: np.ndarray, mpp: float | None, predictor, params: InstanceParams,
                           auto_scale: bool = True, with_types: bool = True, trust=None):
    """``(labels, types, type_prob, mpp used, its source)`` of one image; see :func:`segment_at_scale` and
    :func:`wsi_nuc.segment.segment_image_typed` (types None without a type head or ``with_types``)."""
    from .scale import estimate_mpp
    from .segment import segment_image_typed

    if mpp:
        return (*segment_image_typed(image, predictor, params, mpp, with_types=with_types, trust=trust), float(mpp),
                "dataset")
    res = segment_image_typed(image, predictor, params, None, with_types=with_types, trust=trust)
    area = predictor.config.get("nucleus_area_um2")
    if not (auto_scale and predictor.mpp and area):
        return (*res, None, "native")
    est = estimate_mpp(res[0], predictor.mpp, area)
    if est != predictor.mpp:
        res = segment_image_typed(image, predictor, params, est, with_types=with_types, trust=trust)
    return (*res, est, "estimated")
