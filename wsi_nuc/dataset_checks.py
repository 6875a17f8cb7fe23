"""What a dataset folder's files must be (checked as they are read by :mod:`wsi_nuc.dataset`): dataset.json's
scales and splits, label images of instance ids, type maps; each failure one InputError naming the file.

>>> check_labels(np.array([[0, 1.0], [2, 2]]), (2, 2), "l.tif").dtype
dtype('int32')
>>> check_labels(np.array([[0, -1]]), (1, 2), "l.tif")
Traceback (most recent call last):
...
wsi_nuc.errors.InputError: l.tif: label image has negative values (instance ids are 0 or more)
"""
from __future__ import annotations

import numpy as np

from .errors import InputError, one_line


def check_mpp_value(value, where: str) -> float | None:
    """A dataset.json ``mpp``: null, or a number the slide rules accept (:func:`wsi_nuc.slide.mpp.check_mpp`,
    the one owner of mpp bounds)."""
    from .slide.mpp import check_mpp

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: mpp {value!r} is not a number (µm per pixel, e.g. 0.25)")
    return check_mpp(value, where, source="dataset")


def check_meta(meta, meta_path) -> dict:
    """dataset.json: an object; every ``mpp`` (the set's and each image's) valid; ``split`` lists of stems."""
    where = one_line(meta_path)
    if not isinstance(meta, dict):
        raise InputError(f"{where}: must be a JSON object (got {type(meta).__name__})")
    check_mpp_value(meta.get("mpp"), where)
    images = meta.get("images")
    if images is not None and not isinstance(images, dict):
        raise InputError(f"{where}: 'images' must be an object of per-image entries")
    for stem, per in (images or {}).items():
        if per is not None and not isinstance(per, dict):
            raise InputError(f"{where}: images.{one_line(stem)} must be an object")
        check_mpp_value((per or {}).get("mpp"), f"{where} (image {one_line(stem)})")
    splits = meta.get("split")
    if splits is not None:
        if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
            raise InputError(f"{where}: 'split' must map split names to lists of image stems")
    return meta


def check_labels(labels: np.ndarray, image_shape, path) -> np.ndarray:
    """Instance ids (H, W) as int32, the image's size; float labels only when whole, finite, 0 or more."""
    a = np.asarray(labels)
    where = one_line(path)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(f"{where}: label image must be 2-D instance ids, got shape {a.shape} (an RGB picture?)")
    if tuple(a.shape) != tuple(image_shape[:2]):
        raise InputError(f"{where}: label image is {a.shape[1]}x{a.shape[0]}, its image "
                         f"{image_shape[1]}x{image_shape[0]}: they must match")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{where}: label image has NaN or infinite values (instance ids are whole numbers)")
        if (a != np.round(a)).any():
            raise InputError(f"{where}: label image has fractional values (instance ids are whole numbers)")
    elif a.dtype.kind not in "iub":
        raise InputError(f"{where}: label image of type {a.dtype} (instance ids are whole numbers)")
    if a.size and a.min() < 0:
        raise InputError(f"{where}: label image has negative values (instance ids are 0 or more)")
    if a.size and a.max() > np.iinfo(np.int32).max:
        raise InputError(f"{where}: label image has ids above {np.iinfo(np.int32).max}")
    return a.astype(np.int32)


def check_classes(classes: np.ndarray, image_shape, path) -> np.ndarray:
    """A per-pixel type map (H, W) of small whole numbers, the image's size, as uint8."""
    a = np.asarray(classes)
    where = one_line(path)
    if a.ndim != 2 or tuple(a.shape) != tuple(image_shape[:2]):
        raise InputError(f"{where}: type map must be a 2-D image the size of its image "
                         f"({image_shape[1]}x{image_shape[0]}), got shape {a.shape}")
    if a.dtype.kind not in "iub" or (a.size and (a.min() < 0 or a.max() > 255)):
        raise InputError(f"{where}: type map must hold type ids 0-255")
    return a.astype(np.uint8)


PREDICTIONS_LIST = "wsi-nuc-predictions.json"   # the prediction files eval wrote in a folder


def check_save_dir(save_dir, root, stems=()):
    """``eval --save-predictions DIR``: a folder (made if needed), never a file, and never the dataset's own
    images/, labels/ or classes/ (predictions named like the labels would replace them). A file there that
    a prediction of ``stems`` would replace must be one an earlier eval wrote (listed in
    :data:`PREDICTIONS_LIST`): anything else is the user's and is refused by name."""
    from pathlib import Path

    if save_dir is None:
        return None
    d = Path(save_dir)
    if d.exists() and not d.is_dir():
        raise InputError(f"{one_line(d)}: --save-predictions names a file; it needs a folder")
    real = d.resolve()
    for sub in ("images", "labels", "classes"):
        inp = (Path(root) / sub).resolve()
        if real == inp or inp in real.parents:
            raise InputError(f"{one_line(d)}: --save-predictions would write among the dataset's own files "
                             f"({one_line(Path(root) / sub)}); choose a folder outside it")
    ours = set(written_predictions(d))
    for stem in stems:
        for name in (f"{stem}.tif", f"{stem}.classes.png"):
            if (d / name).exists() and name not in ours:
                raise InputError(f"{one_line(d / name)}: --save-predictions would replace this file, which "
                                 "wsi-nuc eval did not write; choose another folder or move it")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{one_line(d)}: cannot make the predictions folder ({e.strerror or e})") from None
    return d


def written_predictions(d) -> list[str]:
    """The file names an earlier ``eval --save-predictions`` wrote in folder ``d`` ([] if none)."""
    from pathlib import Path

    from .json_in import read_json

    f = Path(d) / PREDICTIONS_LIST
    if not f.is_file():
        return []
    try:
        names = read_json(f).get("files", [])
    except (InputError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and "/" not in n and "\\" not in n]


def note_prediction(d, name: str) -> None:
    """Add ``name`` to the folder's list of files eval wrote (before the file is written)."""
    import json
    import os
    from pathlib import Path

    names = written_predictions(d)
    if name not in names:
        f = Path(d) / PREDICTIONS_LIST
        tmp = f.with_name(f.name + ".tmp")
        tmp.write_text(json.dumps({"written_by": "wsi-nuc eval --save-predictions", "files": names + [name]}))
        os.replace(tmp, f)
