"""HoVer-Net detection / classification F1 and per-nucleus types, on hand-made images with hand-computed answers."""
from __future__ import annotations

import numpy as np
import pytest
from pytest import approx

from wsi_nuc.metrics_types import (
    DETECTION_RADIUS_UM,
    add_counts,
    classification_f1,
    label_centroids,
    match_centroids,
    type_counts,
    type_scores,
)
from wsi_nuc.type_map import model_types, nucleus_types, paint_types, to_dataset_ids, true_nucleus_types

NAMES = ["other", "inflammatory", "epithelial", "spindle-shaped"]


def square(lab, cy, cx, v, r=2):
    """A (2r+1)-px square nucleus ``v`` centred on (cy, cx): its centroid is exactly (cy, cx)."""
    lab[cy - r:cy + r + 1, cx - r:cx + r + 1] = v


# ------------------------------------------------------------------------------------------------
# detection


def test_detection_radius_in_um_follows_the_image_scale():
    """Centroid shifts 0, 10, 13 px; one true nucleus missed, one prediction extra.

    At 0.25 µm/px the 3 µm radius is 12 px: pairs (0 px) and (10 px); the 13-px one is both an FP and an
    FN. TP 2, FP 2, FN 2 -> F_d = 4 / (4 + 2 + 2) = 0.5. At 0.125 µm/px the radius is 24 px and the 13-px
    shift pairs too: TP 3, FP 1, FN 1 -> F_d = 6 / 8 = 0.75.
    """
    assert DETECTION_RADIUS_UM == 3.0
    t = np.zeros((120, 120), np.int32)
    p = np.zeros_like(t)
    square(t, 10, 10, 1); square(p, 10, 10, 1)            # same centre
    square(t, 10, 60, 2); square(p, 20, 60, 2)            # 10 px
    square(t, 60, 10, 3); square(p, 60, 23, 3)            # 13 px
    square(t, 60, 60, 4)                                  # missed
    square(p, 100, 100, 5)                                # extra
    c = type_counts(t, p, 0.25)
    assert (c["tp_d"], c["fp_d"], c["fn_d"]) == (2, 2, 2)
    assert type_scores(c, [])["f_d"] == approx(0.5)
    c = type_counts(t, p, 0.125)
    assert (c["tp_d"], c["fp_d"], c["fn_d"]) == (3, 1, 1)
    assert type_scores(c, [])["f_d"] == approx(0.75)
    # the radius is inclusive: 12 px at 0.25 µm/px pairs, 12 px + a hair does not
    assert len(match_centroids([[0, 0]], [[0, 12]], 12)[0]) == 1
    assert len(match_centroids([[0, 0]], [[0, 12.001]], 12)[0]) == 0


def test_pairing_is_unique_and_maximal():
    """Greedy nearest-first would pair P (x=6) with B (x=10, 4 px) and leave Q (x=16) 16 px from A: one
    pair. The assignment pairs P-A (6 px) and Q-B (6 px): two."""
    pairs, ut, up = match_centroids([[0, 0], [0, 10]], [[0, 6], [0, 16]], radius=8)
    assert pairs.tolist() == [[0, 0], [1, 1]] and ut.size == 0 and up.size == 0
    # one prediction between two true nuclei pairs once only
    pairs, ut, up = match_centroids([[0, 0], [0, 4]], [[0, 2]], radius=8)
    assert len(pairs) == 1 and len(ut) == 1 and up.size == 0
    # among maximal pairings, the one of least total distance
    pairs, _, _ = match_centroids([[0, 0], [0, 3]], [[0, 1], [0, 4]], radius=5)
    assert pairs.tolist() == [[0, 0], [1, 1]]
    # empty sides
    pairs, ut, up = match_centroids(np.zeros((0, 2)), [[1, 1]], 3)
    assert pairs.shape == (0, 2) and ut.size == 0 and up.tolist() == [0]


def test_label_centroids_are_centres_of_mass():
    lab = np.zeros((10, 10), np.int32)
    lab[1:4, 1:4] = 7              # centre (2, 2)
    lab[6, 3:8] = 3                # centre (6, 5)
    ids, c = label_centroids(lab)
    assert ids.tolist() == [3, 7]
    assert c.tolist() == [[6.0, 5.0], [2.0, 2.0]]


# ------------------------------------------------------------------------------------------------
# classification


def _typed_scene():
    """Seven true nuclei in a row and seven predictions, each 2 px to the right (all pairs within 12 px at
    0.25 µm/px) except one unpaired on each side. (true type, predicted type):

    pairs (2, 2), (2, 3), (3, 3), (4, 2), (1, 1), (1, 1); unpaired true of type 3; unpaired prediction of
    type 2. Returns labels, the dataset class map, and the per-pixel type probabilities (1 + 4, H, W).
    """
    t = np.zeros((40, 200), np.int32)
    p = np.zeros_like(t)
    cls = np.zeros(t.shape, np.uint8)
    prob = np.zeros((5, *t.shape), np.float32)
    prob[0] = 1.0
    pairs = [(2, 2), (2, 3), (3, 3), (4, 2), (1, 1), (1, 1)]
    for i, (tt, pt) in enumerate(pairs):
        cx = 10 + 25 * i
        square(t, 10, cx, i + 1)
        cls[t == i + 1] = tt
        square(p, 10, cx + 2, i + 1)
        prob[:, p == i + 1] = 0.0
        prob[pt, p == i + 1] = 0.9
        prob[0, p == i + 1] = 0.1
    square(t, 30, 10, 20)
    cls[t == 20] = 3                                        # unpaired true nucleus of type 3
    square(p, 30, 150, 30)
    prob[:, p == 30] = 0.0
    prob[2, p == 30] = 1.0                                  # unpaired prediction of type 2
    return t, p, cls, prob


def test_classification_f1_by_hand():
    """F_c^t = 2 TP_c / (2 TP_c + 2 FP_c + 2 FN_c + FP_d^t + FN_d^t) (TN_c is 0 among pairs involving t):

    t=1 other:          TP 2, FP 0, FN 0, FP_d 0, FN_d 0 -> 4 / 4 = 1
    t=2 inflammatory:   TP 1 (2,2), FP 1 (4,2), FN 1 (2,3), FP_d 1, FN_d 0 -> 2 / (2 + 2 + 2 + 1) = 2/7
    t=3 epithelial:     TP 1 (3,3), FP 1 (2,3), FN 0, FP_d 0, FN_d 1 -> 2 / (2 + 2 + 1) = 2/5
    t=4 spindle-shaped: TP 0, FP 0, FN 1 (4,2) -> 0 / 2 = 0
    F_d: TP 6, FP 1, FN 1 -> 12 / 14.
    """
    t, p, cls, prob = _typed_scene()
    tt = true_nucleus_types(t, cls)
    pt, pprob = nucleus_types(p, prob)
    assert tt.tolist() == [2, 2, 3, 4, 1, 1, 3]
    assert pt.tolist() == [2, 3, 3, 2, 1, 1, 2]
    assert pprob == approx(np.ones(7))               # 0.9 / (0.9), background left out
    c = type_counts(t, p, 0.25, tt, pt, n_types=4)
    assert (c["tp_d"], c["fp_d"], c["fn_d"]) == (6, 1, 1)
    s = type_scores(c, NAMES)
    assert s["f_d"] == approx(12 / 14)
    assert s["f_c_other"] == approx(1.0)
    assert s["f_c_inflammatory"] == approx(2 / 7)
    assert s["f_c_epithelial"] == approx(2 / 5)
    assert s["f_c_spindle_shaped"] == approx(0.0)
    assert s["type_confusion"] == {"types": NAMES, "matrix": [[2, 0, 0, 0], [0, 1, 1, 0],
                                                              [0, 0, 1, 0], [0, 1, 0, 0]]}


def test_correct_pairs_of_other_types_do_not_raise_f_c():
    """Counting every correctly typed pair of another type as a TN_c would lift F_c^2 towards 1 here;
    HoVer-Net's definition (the one its published figures come from) leaves it unchanged."""
    base = {"tp_d": 3, "fp_d": 0, "fn_d": 0, "confusion": np.zeros((5, 5), int).tolist(),
            "unpaired_true": [0] * 5, "unpaired_pred": [0] * 5}
    base["confusion"][2][2] = 1
    base["confusion"][2][3] = 1
    f = classification_f1(base, 2)
    assert f == approx(2 / 4)
    more = dict(base, confusion=[row[:] for row in base["confusion"]])
    more["confusion"][1][1] = 50
    more["confusion"][3][3] = 50
    assert classification_f1(more, 2) == approx(f)
    assert classification_f1(base, 4) is None        # type 4 occurs nowhere: 0/0


def test_counts_pool_over_images():
    """Two images: (TP 1, FP 0, FN 1) and (TP 1, FP 1, FN 0). Pooled F_d = 4 / (4 + 1 + 1) = 2/3; for
    type 1, image 1 has TP_c 1 and an unpaired true, image 2 has TP_c 0, FP_c 1 -> 2 / (2 + 2 + 1) = 0.4."""
    a = np.zeros((30, 60), np.int32)
    b = np.zeros_like(a)
    square(a, 10, 10, 1); square(b, 10, 11, 1)
    square(a, 10, 40, 2)
    c1 = type_counts(a, b, 0.25, [1, 1], [1], n_types=2)
    a2 = np.zeros_like(a)
    b2 = np.zeros_like(a)
    square(a2, 10, 10, 1); square(b2, 10, 10, 1)
    square(b2, 10, 40, 2)
    c2 = type_counts(a2, b2, 0.25, [2], [1, 2], n_types=2)
    tot = add_counts([c1, c2])
    assert (tot["tp_d"], tot["fp_d"], tot["fn_d"]) == (2, 1, 1)
    s = type_scores(tot, ["x", "y"])
    assert s["f_d"] == approx(2 / 3)
    assert s["f_c_x"] == approx(0.4)
    # y: pair (2 true, 1 pred) is an FN_c; unpaired prediction of type 2 an FP_d -> 0 / (2 + 1) = 0
    assert s["f_c_y"] == approx(0.0)
    with pytest.raises(ValueError):
        type_counts(a, b, 0.25, [1], [1], n_types=2)      # two true nuclei, one type given


# ------------------------------------------------------------------------------------------------
# per-nucleus types


def test_majority_of_pixels_not_mean_probability():
    """Five pixels: three lean to type 2 (0.5 vs 0.4 for type 3, 0.1 background), two are sure of type 3
    (0.95, type 2 0.02, background 0.03). Mean P(type | nucleus) would pick type 3 (0.658 vs 0.342); the
    majority picks type 2, with probability (3 * 0.5/0.9 + 2 * 0.02/0.97) / 5."""
    lab = np.array([[1, 1, 1, 1, 1]])
    p = np.zeros((5, 1, 5))
    p[:, 0, :3] = np.array([0.1, 0, 0.5, 0.4, 0])[:, None]
    p[:, 0, 3:] = np.array([0.03, 0, 0.02, 0.95, 0])[:, None]
    t, q = nucleus_types(lab, p)
    assert t.tolist() == [2]
    assert q[0] == approx((3 * 0.5 / 0.9 + 2 * 0.02 / 0.97) / 5)


def test_type_ties_background_and_ids():
    # a tie (one pixel each) goes to the type of higher summed probability: 0.7 vs 0.6 -> type 4
    lab = np.array([[5, 5, 0, 9]])
    p = np.zeros((5, 1, 4))
    p[1, 0, 0], p[2, 0, 0] = 0.6, 0.4        # pixel 1: type 1 (0.6)
    p[4, 0, 1], p[3, 0, 1] = 0.7, 0.3        # pixel 2: type 4 (0.7)
    p[0, 0, 3], p[4, 0, 3], p[1, 0, 3] = 0.9, 0.06, 0.04   # mostly background: still votes type 4
    t, q = nucleus_types(lab, p, ids=[9, 5, 3])
    assert t.tolist() == [4, 4, 0]
    assert q[0] == approx(0.6) and q[1] == approx(0.7 / 2) and np.isnan(q[2])


def test_true_types_majority_of_nonzero_class_pixels():
    lab = np.array([[1, 1, 1, 1, 2, 2, 3, 3]])
    cls = np.array([[0, 0, 4, 2, 1, 1, 0, 0]])          # label 1: a tie 4 vs 2 -> the lower id
    assert true_nucleus_types(lab, cls).tolist() == [2, 1, 0]
    assert true_nucleus_types(lab, np.array([[3, 3, 3, 0, 0, 0, 0, 0]]), ids=[3, 1]).tolist() == [0, 3]


def test_model_types_paint_and_dataset_ids():
    assert model_types({"types": NAMES}) == tuple(NAMES)
    for cfg in ({}, None, {"types": None}, {"types": []}, {"types": "other"}, {"types": [1, 2]}):
        assert model_types(cfg) == ()
    ds = {1: "other", 2: "inflammatory", 3: "epithelial", 4: "spindle-shaped"}
    assert to_dataset_ids(["Spindle_shaped", "other"], ds).tolist() == [0, 4, 1]
    img = paint_types(np.array([[0, 3, 3, 8]]), [3, 8], [2, 4])
    assert img.dtype == np.uint8 and img.tolist() == [[0, 2, 2, 4]]
