"""Score a model on an annotated dataset folder with the same inference and instance code as ``run``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import list_stems, load_sample, read_index
from .instances import InstanceParams


def save_prediction(path: Path, labels: np.ndarray) -> None:
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) < 65535 else np.uint32
    tifffile.imwrite(path, labels.astype(dtype), compression="zlib")


def evaluate(dataset_dir: str | Path, model: str | None = None, split: str | None = None,
             device: str = "auto", save_dir: str | Path | None = None, params: dict | None = None,
             log=None, auto_scale: bool = True) -> dict:
    """Per-image and aggregate metrics of ``model`` on ``dataset_dir``.

    ``split`` defaults to ``val`` when dataset.json has a split, else ``all``. ``params`` overrides the
    model's post-processing settings (for tuning). Images of unknown scale are segmented at the scale
    :func:`wsi_nuc.scale.estimate_mpp` finds for them when ``auto_scale`` and the model records its
    training nuclei's size, else at their own pixels. Returns ``{"aggregate": {...}, "images": [...]}``,
    each image with the scale used (``mpp``) and where it came from (``mpp_source``).
    """
    from .metrics import aggregate, score_image
    from .predict import get_predictor

    root = Path(dataset_dir)
    meta = read_index(root)
    if split is None:
        split = "val" if meta.get("split") else "all"
    stems = list_stems(root, split)
    from .model.io import check_model_dir, resolve_model_dir

    check_model_dir(resolve_model_dir(model, device))
    predictor = get_predictor(model, device)
    p = InstanceParams.from_dict({**(predictor.config.get("postprocess") or {}), **(params or {})})
    if save_dir is not None:
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
    per_image = []
    for stem in stems:
        s = load_sample(root, stem, meta)
        pred, mpp, source = segment_at_scale(s.image, s.mpp, predictor, p, auto_scale)
        if save_dir is not None:
            save_prediction(save_dir / f"{stem}.tif", pred)
        if s.labels is None:
            continue
        sc = score_image(s.labels, pred)
        sc.update(image=stem, mpp=mpp, mpp_source=source)
        per_image.append(sc)
        if log:
            log(sc)
    agg = aggregate(per_image) if per_image else {}
    return {"dataset": str(root), "split": split, "model": predictor.config.get("name"),
            "postprocess": p.to_dict(), "aggregate": agg, "images": per_image}


def segment_at_scale(image: np.ndarray, mpp: float | None, predictor, params: InstanceParams,
                     auto_scale: bool = True) -> tuple[np.ndarray, float | None, str]:
    """Instance labels of one image, the scale used, and its source (dataset | estimated | native)."""
    from .scale import estimate_mpp
    from .segment import segment_image

    if mpp:
        return segment_image(image, predictor, params, mpp), float(mpp), "dataset"
    labels = segment_image(image, predictor, params, None)
    area = predictor.config.get("nucleus_area_um2")
    if not (auto_scale and predictor.mpp and area):
        return labels, None, "native"
    est = estimate_mpp(labels, predictor.mpp, area)
    if est != predictor.mpp:
        labels = segment_image(image, predictor, params, est)
    return labels, est, "estimated"
