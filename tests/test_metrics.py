"""Tests for wsi_nuc.metrics on hand-made label images with hand-computed answers."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pytest import approx

from wsi_nuc.metrics import (
    aji,
    aji_counts,
    dice,
    f1_at,
    map_dsb,
    match_iou,
    pq,
    score_image,
    score_images,
)

PER_IMAGE_KEYS = ("aji", "pq", "dq", "sq", "f1", "dice", "map_dsb")
SHARED = Path(__file__).parents[1] / ".." / "shared"
REAL_LABELS = SHARED / "data" / "monuseg2018-train" / "labels" / "TCGA-21-5784-01Z-00-DX1.tif"


def a(rows):
    return np.array(rows, dtype=np.int32)


def test_perfect_match_is_one_everywhere():
    gt = a([[1, 1, 0, 0],
            [1, 1, 0, 7],
            [0, 0, 0, 7]])
    s = score_image(gt, gt.copy())
    for k in PER_IMAGE_KEYS:
        assert s[k] == approx(1.0), k
    assert (s["tp"], s["fp"], s["fn"]) == (2, 0, 0)
    assert (s["aji_c"], s["aji_u"]) == (6, 6)


def test_match_iou_table():
    # GT 1 = 4 px (cols 0-3), pred 5 = 4 px (cols 2-5): I = 2, U = 6.
    gt = a([[1, 1, 1, 1, 0, 0]])
    pred = a([[0, 0, 5, 5, 5, 5]])
    ov = match_iou(gt, pred)
    assert list(ov.gt_ids) == [1] and list(ov.pred_ids) == [5]
    assert list(ov.gt_areas) == [4] and list(ov.pred_areas) == [4]
    assert list(ov.inter) == [2] and list(ov.union) == [6]
    assert ov.iou_matrix() == approx(np.array([[1 / 3]]))
    assert ov.inter_matrix().tolist() == [[2]]


def test_half_overlapping_pair():
    # GT 1 = cols 0-3, pred 2 = cols 2-5: half of each overlaps; I = 2, U = 6, IoU = 1/3.
    gt = a([[1, 1, 1, 1, 0, 0]])
    pred = a([[0, 0, 2, 2, 2, 2]])
    # AJI: C = 2, U = 6 -> 1/3.
    assert aji_counts(gt, pred) == (2, 6)
    assert aji(gt, pred) == approx(1 / 3)
    # PQ: 1/3 <= 0.5 -> TP 0, FP 1, FN 1 -> all zero.
    assert pq(gt, pred) == dict(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=1, fn=1)
    assert f1_at(gt, pred) == approx(0.0)
    # ... but at thr 0.3 the pair matches: TP 1 -> F1 1.
    assert f1_at(gt, pred, thr=0.3) == approx(1.0)
    # Dice: 2 * 2 / (4 + 4) = 0.5.
    assert dice(gt, pred) == approx(0.5)
    assert map_dsb(gt, pred) == approx(0.0)


def test_split_nucleus():
    # One GT of 6 px; preds 1 (2 px, IoU 2/6) and 2 (4 px, IoU 4/6).
    gt = a([[3, 3, 3, 3, 3, 3]])
    pred = a([[1, 1, 2, 2, 2, 2]])
    # AJI: best pred = 2: C = 4, U = 6; pred 1 unused adds 2 -> 4 / 8 = 0.5.
    assert aji_counts(gt, pred) == (4, 8)
    assert aji(gt, pred) == approx(0.5)
    # PQ: TP 1 (IoU 2/3), FP 1, FN 0 -> DQ = 1 / 1.5 = 2/3, SQ = 2/3, PQ = 4/9.
    p = pq(gt, pred)
    assert (p["tp"], p["fp"], p["fn"]) == (1, 1, 0)
    assert p["dq"] == approx(2 / 3)
    assert p["sq"] == approx(2 / 3)
    assert p["pq"] == approx(4 / 9)
    assert f1_at(gt, pred) == approx(2 / 3)
    # Both preds have IoU > 0.3 but only one may match: still 2/3.
    assert f1_at(gt, pred, thr=0.3) == approx(2 / 3)
    assert dice(gt, pred) == approx(1.0)
    # DSB: IoU 2/3 beats t = 0.50, 0.55, 0.60, 0.65 -> TP 1, FP 1, FN 0 -> 1/2 each; 0 for
    # the other 6 thresholds (TP 0, FP 2, FN 1) -> 4 * 0.5 / 10 = 0.2.
    assert map_dsb(gt, pred) == approx(0.2)


def test_merged_nucleus():
    # GT 1 (2 px) and GT 2 (4 px) covered by one pred of 6 px: IoUs 2/6 and 4/6.
    gt = a([[1, 1, 2, 2, 2, 2]])
    pred = a([[5, 5, 5, 5, 5, 5]])
    # AJI: both GT pick pred 5: C = 2 + 4 = 6, U = 6 + 6 = 12 -> 0.5.
    assert aji_counts(gt, pred) == (6, 12)
    assert aji(gt, pred) == approx(0.5)
    # PQ: TP 1 (GT 2), FN 1, FP 0 -> DQ 2/3, SQ 2/3, PQ 4/9.
    p = pq(gt, pred)
    assert (p["tp"], p["fp"], p["fn"]) == (1, 0, 1)
    assert p["pq"] == approx(4 / 9)
    assert dice(gt, pred) == approx(1.0)
    assert map_dsb(gt, pred) == approx(0.2)  # same counts as the split case, mirrored


def test_missed_nucleus():
    # GT 1 found exactly, GT 2 (2 px) missed.
    gt = a([[1, 1, 0, 2, 2]])
    pred = a([[3, 3, 0, 0, 0]])
    # AJI: C = 2, U = 2 + area of missed GT 2 (2) = 4 -> 0.5.
    assert aji_counts(gt, pred) == (2, 4)
    assert aji(gt, pred) == approx(0.5)
    # PQ: TP 1, FN 1 -> DQ = 1 / 1.5 = 2/3, SQ = 1, PQ = 2/3.
    assert pq(gt, pred) == dict(pq=approx(2 / 3), dq=approx(2 / 3), sq=approx(1.0), tp=1, fp=0, fn=1)
    assert f1_at(gt, pred) == approx(2 / 3)
    # Dice: 2 * 2 / (4 + 2) = 2/3.
    assert dice(gt, pred) == approx(2 / 3)
    # DSB: 1 / (1 + 0 + 1) = 0.5 at every threshold.
    assert map_dsb(gt, pred) == approx(0.5)


def test_false_positive():
    # GT 1 found exactly, pred 4 (2 px) has no GT.
    gt = a([[1, 1, 0, 0, 0]])
    pred = a([[3, 3, 0, 4, 4]])
    # AJI: C = 2, U = 2 + unused pred 4 (2) = 4 -> 0.5.
    assert aji_counts(gt, pred) == (2, 4)
    assert aji(gt, pred) == approx(0.5)
    assert pq(gt, pred) == dict(pq=approx(2 / 3), dq=approx(2 / 3), sq=approx(1.0), tp=1, fp=1, fn=0)
    assert f1_at(gt, pred) == approx(2 / 3)
    assert dice(gt, pred) == approx(2 / 3)
    assert map_dsb(gt, pred) == approx(0.5)


def test_empty_images():
    empty = np.zeros((3, 4), np.uint16)
    some = empty.copy()
    some[1, 1:3] = 9
    s = score_image(empty, empty)
    for k in PER_IMAGE_KEYS:
        assert s[k] == 1.0, k
    assert pq(empty, empty) == dict(pq=1.0, dq=1.0, sq=1.0, tp=0, fp=0, fn=0)
    for gt, pred in ((empty, some), (some, empty)):
        s = score_image(gt, pred)
        for k in PER_IMAGE_KEYS:
            assert s[k] == 0.0, k
    assert pq(empty, some) == dict(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=1, fn=0)
    assert pq(some, empty) == dict(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=0, fn=1)
    assert aji_counts(some, empty) == (0, 2)


def test_iou_exactly_half_is_not_a_match():
    # GT 4 px, pred = its left 2 px: I = 2, U = 4, IoU = 0.5 exactly -> no match at > 0.5.
    gt = a([[1, 1, 1, 1]])
    pred = a([[2, 2, 0, 0]])
    assert pq(gt, pred) == dict(pq=0.0, dq=0.0, sq=0.0, tp=0, fp=1, fn=1)
    assert f1_at(gt, pred) == 0.0
    assert map_dsb(gt, pred) == 0.0
    # Just below 0.5 it matches: F1 = 1.
    assert f1_at(gt, pred, thr=0.49) == approx(1.0)
    # AJI still credits the overlap: 2 / 4.
    assert aji(gt, pred) == approx(0.5)


def test_f1_low_threshold_uses_optimal_assignment():
    # GT A = cols 0-3 (4 px), GT B = cols 4-5 (2 px); pred P2 = col 0, P1 = cols 1-5 (5 px).
    # IoU(A, P1) = 3/6 = 0.5, IoU(B, P1) = 2/5 = 0.4, IoU(A, P2) = 1/4 = 0.25.
    gt = a([[1, 1, 1, 1, 2, 2]])
    pred = a([[8, 9, 9, 9, 9, 9]])
    # thr 0.2: greedy A-P1 would give TP 1; optimal A-P2 + B-P1 gives TP 2 -> F1 = 1.
    assert f1_at(gt, pred, thr=0.2) == approx(1.0)
    # thr 0.3: only A-P1 and B-P1 qualify, one can match -> TP 1, FP 1, FN 1 -> 0.5.
    assert f1_at(gt, pred, thr=0.3) == approx(0.5)
    # thr 0.5: nothing is > 0.5 -> 0.
    assert f1_at(gt, pred, thr=0.5) == 0.0
    with pytest.raises(ValueError):
        f1_at(gt, pred, thr=1.0)


def test_f1_low_threshold_prefers_more_matches_over_higher_iou():
    # A = cols 0-4 (10 px), B = col 5 (2 px); P2 = col 0 (2 px), P1 = cols 1-5 (10 px).
    # IoU(A, P1) = 8/12 = 2/3, IoU(B, P1) = 2/10 = 0.2, IoU(A, P2) = 2/10 = 0.2.
    gt = a([[1, 1, 1, 1, 1, 2],
            [1, 1, 1, 1, 1, 2]])
    pred = a([[4, 3, 3, 3, 3, 3],
              [4, 3, 3, 3, 3, 3]])
    # thr 0.15: A-P2 + B-P1 (2 matches, IoU sum 0.4) beats A-P1 alone (IoU 2/3) -> F1 = 1.
    assert f1_at(gt, pred, thr=0.15) == approx(1.0)
    # thr 0.5: only A-P1 -> TP 1, FP 1, FN 1 -> 0.5.
    assert f1_at(gt, pred, thr=0.5) == approx(0.5)


def test_map_dsb_single_pair_at_iou_0p7():
    # GT 10 px, pred its first 7 px: IoU = 7/10 = 0.7, a match for t = 0.50, 0.55, 0.60, 0.65
    # only (not 0.70, strictly greater) -> 4 of 10 thresholds score 1 -> 0.4.
    gt = a([[1] * 10])
    pred = a([[1] * 7 + [0] * 3])
    assert map_dsb(gt, pred) == approx(0.4)
    assert score_image(gt, pred)["map_dsb"] == approx(0.4)


def test_pooled_vs_mean_aji():
    # Image 1 (2x2): perfect, C = 4, U = 4, AJI 1.
    gt1 = a([[1, 1], [1, 1]])
    # Image 2 (1x8): GT 8 px, pred its first 4 px: C = 4, U = 8, AJI 0.5.
    gt2 = a([[1] * 8])
    pred2 = a([[1] * 4 + [0] * 4])
    s = score_images([(gt1, gt1), (gt2, pred2)])
    assert s["n_images"] == 2
    assert s["aji"] == approx((1.0 + 0.5) / 2)  # 0.75
    assert s["aji_pooled"] == approx((4 + 4) / (4 + 8))  # 2/3
    assert set(s) == {"aji", "aji_pooled", "pq", "dq", "sq", "f1", "dice", "map_dsb", "n_images"}
    # Image 2: IoU 0.5 -> PQ 0; mean PQ = (1 + 0) / 2. Dice 2: 2*4/12 = 2/3.
    assert s["pq"] == approx(0.5)
    assert s["f1"] == approx(0.5)
    assert s["dice"] == approx((1 + 2 / 3) / 2)
    assert s["map_dsb"] == approx(0.5)
    with pytest.raises(ValueError):
        score_images([])


def test_label_permutation_invariance():
    gt = a([[1, 1, 0, 2, 2, 2, 0, 3],
            [1, 1, 0, 2, 2, 2, 0, 3],
            [0, 0, 0, 0, 0, 0, 0, 3],
            [4, 4, 4, 0, 5, 5, 0, 0]])
    pred = a([[1, 1, 1, 2, 2, 0, 0, 0],
              [1, 1, 0, 2, 2, 3, 0, 6],
              [0, 0, 0, 0, 0, 0, 0, 6],
              [4, 4, 0, 0, 5, 5, 5, 5]])
    ref = score_image(gt, pred)
    rng = np.random.default_rng(0)
    for _ in range(3):
        gmap = np.zeros(gt.max() + 1, np.int64)
        gmap[1:] = rng.choice(np.arange(10, 100_000), gt.max(), replace=False)
        pmap = np.zeros(pred.max() + 1, np.int64)
        pmap[1:] = rng.choice(np.arange(10, 100_000), pred.max(), replace=False)
        s = score_image(gmap[gt].astype(np.uint32), pmap[pred].astype(np.uint32))
        for k in PER_IMAGE_KEYS + ("aji_c", "aji_u", "tp", "fp", "fn"):
            assert s[k] == approx(ref[k]), k
    # Sanity: the reference is not trivial.
    assert 0 < ref["aji"] < 1 and 0 < ref["pq"] < 1


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        score_image(np.zeros((2, 3), int), np.zeros((3, 2), int))
    for fn in (aji, pq, f1_at, dice, map_dsb, match_iou):
        with pytest.raises(ValueError):
            fn(np.zeros((2, 3), int), np.zeros((3, 2), int))


def test_bad_dtype_or_negative_labels_raise():
    with pytest.raises(ValueError):
        aji(np.zeros((2, 2), float), np.zeros((2, 2), int))
    with pytest.raises(ValueError):
        aji(np.full((2, 2), -1), np.zeros((2, 2), int))


@pytest.mark.skipif(not REAL_LABELS.exists(), reason="MoNuSeg 2018 labels not available")
def test_real_monuseg_image():
    tifffile = pytest.importorskip("tifffile")
    from scipy import ndimage as ndi

    gt = tifffile.imread(REAL_LABELS)
    assert gt.ndim == 2

    t0 = time.perf_counter()
    s = score_image(gt, gt)
    for k in PER_IMAGE_KEYS:
        assert s[k] == 1.0, k

    # Erode every nucleus by 1 px (4-connectivity), also along nucleus-nucleus borders.
    cross = ndi.generate_binary_structure(2, 1)
    keep = (ndi.grey_erosion(gt, footprint=cross) == gt) & (ndi.grey_dilation(gt, footprint=cross) == gt)
    pred = np.where(keep, gt, 0)
    s = score_image(gt, pred)
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0

    # Independent expectation: each eroded nucleus lies inside its own GT nucleus only, so its
    # IoU is eroded_area / area; nuclei eroded away leave a missed GT.
    ids = np.unique(gt[gt > 0])
    area = ndi.sum_labels(np.ones_like(gt), gt, ids).astype(np.int64)
    eroded = ndi.sum_labels(np.ones_like(gt), pred, ids).astype(np.int64)
    n_gt, n_pred = ids.size, int((eroded > 0).sum())
    tp = int((2 * eroded > area).sum())
    assert s["aji"] == approx(eroded.sum() / area.sum())
    assert 0.5 < s["aji"] < 1.0
    assert s["f1"] == approx(2 * tp / (n_gt + n_pred))
    assert s["dice"] == approx(2 * eroded.sum() / (area.sum() + eroded.sum()))
    # A 1-px erosion keeps IoU > 0.5 for all but a few small or thin nuclei.
    assert s["f1"] > 0.95
