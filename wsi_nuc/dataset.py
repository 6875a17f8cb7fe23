"""Read annotated nucleus datasets in the shared layout (images/*.png or *.jpg, labels/*.tif, dataset.json)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclass
class Sample:
    """One annotated image: RGB uint8 (H, W, 3), instance labels (H, W), and its scale."""

    stem: str
    image: np.ndarray
    labels: np.ndarray | None
    mpp: float | None
    types: np.ndarray | None = None     # per-label nucleus type (index = label id; 0 = unknown type)
    classes: np.ndarray | None = None   # the dataset's per-pixel type map (H, W), when it has one


def read_index(root: str | Path) -> dict:
    root = Path(root)
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise InputError(f"{root}: not a dataset folder")
    if not meta_path.is_file():
        raise InputError(f"{root}: no dataset.json (expected images/, labels/, dataset.json)")
    from .dataset_checks import check_meta
    from .json_in import read_json

    return check_meta(read_json(meta_path, "dataset.json", max_bytes=256 << 20), meta_path)


def list_stems(root: str | Path, split: str = "all") -> list[str]:
    """Stems of the images in ``split`` ('train', 'val' or 'all'); a set without a split is all 'all'."""
    root = Path(root)
    meta = read_index(root)
    stems = sorted({p.stem for ext in IMAGE_EXTS for p in (root / "images").glob(f"*{ext}")})
    if not stems:
        raise InputError(f"{root}: no images/*.png or images/*.jpg")
    splits = meta.get("split")
    if split == "all" or not splits:
        return stems
    if split not in splits:
        raise InputError(f"{root}: dataset.json has no split named {split!r}")
    wanted = set(splits[split])
    chosen = [s for s in stems if s in wanted]
    if not chosen:
        raise InputError(f"{root}: split {split!r} of dataset.json names none of the images in images/")
    return chosen


IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def image_path(root: Path, stem: str) -> Path:
    """``images/<stem>`` with the first extension of :data:`IMAGE_EXTS` that exists (.png if none)."""
    for ext in IMAGE_EXTS:
        p = root / "images" / f"{stem}{ext}"
        if p.exists():
            return p
    return root / "images" / f"{stem}.png"


def image_mpp(meta: dict, stem: str) -> float | None:
    per = (meta.get("images") or {}).get(stem) or {}
    return per.get("mpp") or meta.get("mpp")


def load_sample(root: str | Path, stem: str, meta: dict | None = None, with_labels: bool = True) -> Sample:
    root = Path(root)
    meta = meta if meta is not None else read_index(root)
    img_path = image_path(root, stem)
    from .dataset_checks import check_classes, check_labels
    from .image_in import read_image

    image = read_image(img_path, "image", mode="RGB")     # every decode guarded by its claimed size
    labels = classes = None
    lab_path = root / "labels" / f"{stem}.tif"
    if with_labels and lab_path.exists():
        labels = check_labels(read_image(lab_path, "label image"), image.shape, lab_path)
    cls_path = root / "classes" / f"{stem}.png"
    if with_labels and cls_path.exists():
        classes = check_classes(read_image(cls_path, "class image"), image.shape, cls_path)
    s = Sample(stem, image, labels, image_mpp(meta, stem), classes=classes)
    if labels is not None and classes is not None:
        s.types = label_types(labels, classes)
    return s


def label_types(labels: np.ndarray, classes: np.ndarray, n_types: int = 4) -> np.ndarray:
    """Each label's type: the most frequent non-zero class among its pixels (0 where it has none).

    >>> label_types(np.array([[1, 1, 2]]), np.array([[3, 3, 0]])).tolist()
    [0, 3, 0]
    """
    n = int(labels.max()) + 1
    m = (labels > 0) & (classes > 0) & (classes <= n_types)
    counts = np.bincount(labels[m].astype(np.int64) * (n_types + 1) + classes[m], minlength=n * (n_types + 1))
    counts = counts.reshape(n, n_types + 1)
    types = counts.argmax(1).astype(np.uint8)
    types[counts.sum(1) == 0] = 0
    return types


def class_names(meta: dict) -> dict[int, str]:
    """The dataset's nucleus types, ``{id: name}`` from dataset.json ``"classes"`` (ids 1..K); {} if none.

    Examples
    --------
    >>> class_names({"classes": {"1": "other", "2": "inflammatory"}})
    {1: 'other', 2: 'inflammatory'}
    """
    out = {}
    for k, v in (meta.get("classes") or {}).items():
        try:
            i = int(k)
        except (TypeError, ValueError):
            continue
        if i > 0 and isinstance(v, str):
            out[i] = v
    return dict(sorted(out.items()))


def _cause(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def resample_factor(sample_mpp: float | None, work_mpp: float | None) -> float:
    """Zoom factor from the sample's scale to the working scale (1 where either is unknown)."""
    if not sample_mpp or not work_mpp:
        return 1.0
    return float(sample_mpp) / float(work_mpp)


def resize_image(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if img.shape[:2] == tuple(shape):
        return img
    return np.asarray(Image.fromarray(img).resize((shape[1], shape[0]), Image.BILINEAR if
                      shape[0] > img.shape[0] else Image.BOX))


def resize_labels(lab: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image, sampling pixel centres."""
    if lab.shape == tuple(shape):
        return lab
    h, w = lab.shape
    ys = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(int), h - 1)
    xs = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(int), w - 1)
    return lab[ys][:, xs]


def load_at_mpp(root, stem, work_mpp, meta=None) -> Sample:
    """A sample resampled to the working scale (labels relabelled sequentially)."""
    return at_mpp(load_sample(root, stem, meta), work_mpp)


def at_mpp(s: Sample, work_mpp) -> Sample:
    """``s`` resampled from its ``mpp`` to ``work_mpp`` (either None: left as it is), in place."""
    from skimage.segmentation import relabel_sequential

    f = resample_factor(s.mpp, work_mpp)
    if abs(f - 1) > 1e-3:
        shape = (max(1, round(s.image.shape[0] * f)), max(1, round(s.image.shape[1] * f)))
        s.image = resize_image(s.image, shape)
        if s.labels is not None:
            s.labels = relabel_sequential(resize_labels(s.labels, shape))[0].astype(np.int32)
        if s.classes is not None:
            s.classes = resize_labels(s.classes, shape)
            if s.labels is not None:
                s.types = label_types(s.labels, s.classes)
        s.mpp = work_mpp
    return s
