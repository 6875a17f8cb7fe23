"""Training targets for every head, computed from an instance label image."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def instance_boundaries(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner one-pixel rim of each instance, and the subset of it that touches another instance."""
    lab = labels
    pad = np.pad(lab, 1, mode="edge")
    rim = np.zeros(lab.shape, bool)
    touch = np.zeros(lab.shape, bool)
    h, w = lab.shape
    for dy, dx in ((0, 1), (1, 0), (1, 2), (2, 1)):
        nb = pad[dy:dy + h, dx:dx + w]
        diff = (nb != lab) & (lab > 0)
        rim |= diff
        touch |= diff & (nb > 0)
    return rim, touch


def make_targets(labels: np.ndarray, centre_sigma: float = 1.5, touch_weight: float = 5.0) -> dict:
    """Per-head targets for one label image (H, W) of instance ids.

    Returns float32 maps: ``fg``, ``boundary``, ``dist`` (0 rim .. 1 centre, per nucleus), ``hv`` (2, H, W)
    offsets to the centroid scaled to [-1, 1] per nucleus, ``centre`` (Gaussian at each centroid, peak 1),
    and ``weight`` (pixel weight for the foreground and boundary losses, high where nuclei touch).
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    fg = (labels > 0).astype(np.float32)
    rim, touch = instance_boundaries(labels)
    dist = np.zeros((h, w), np.float32)
    hv = np.zeros((2, h, w), np.float32)
    centres = []
    for idx, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = sl
        y0, x0 = ys.start, xs.start
        sub = labels[sl] == idx
        d = ndi.distance_transform_edt(np.pad(sub, 1))[1:-1, 1:-1]
        m = d.max()
        if m > 0:
            dist[sl][sub] = (d[sub] / m).astype(np.float32)
        yy, xx = np.nonzero(sub)
        cy, cx = yy.mean(), xx.mean()
        centres.append((cy + y0, cx + x0))
        ox = xx - cx
        oy = yy - cy
        sx = np.abs(ox).max() or 1.0
        sy = np.abs(oy).max() or 1.0
        hv[0][yy + y0, xx + x0] = ox / sx
        hv[1][yy + y0, xx + x0] = oy / sy
    centre = np.zeros((h, w), np.float32)
    r = int(np.ceil(3 * centre_sigma))
    gy, gx = np.mgrid[-r:r + 1, -r:r + 1]
    for cy, cx in centres:
        iy, ix = int(round(cy)), int(round(cx))
        g = np.exp(-((gy + iy - cy) ** 2 + (gx + ix - cx) ** 2) / (2 * centre_sigma**2)).astype(np.float32)
        g /= g.max()
        ya, yb = max(iy - r, 0), min(iy + r + 1, h)
        xa, xb = max(ix - r, 0), min(ix + r + 1, w)
        if ya >= yb or xa >= xb:
            continue
        gs = g[ya - (iy - r):yb - (iy - r), xa - (ix - r):xb - (ix - r)]
        np.maximum(centre[ya:yb, xa:xb], gs, out=centre[ya:yb, xa:xb])
    weight = np.ones((h, w), np.float32)
    if touch.any():
        weight[ndi.binary_dilation(touch, iterations=1)] = touch_weight
    return {"fg": fg, "boundary": rim.astype(np.float32), "dist": dist, "hv": hv, "centre": centre,
            "weight": weight}
