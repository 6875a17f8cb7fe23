"""Sweep the watershed post-processing settings of a model on a dataset split (maps computed once).

    python benchmarks/tune_postprocess.py ../shared/data/monuseg2018-train --model he-teacher --split val

Prints one line per setting (a-AJI, PQ, F1), best last. Tune on val sparingly: the hidden sets differ.
"""
from __future__ import annotations

import argparse
import itertools
import json


from wsi_nuc.dataset import list_stems, load_sample, read_index, resample_factor, resize_image, resize_labels
from wsi_nuc.instances import InstanceParams, labels_from_maps
from wsi_nuc.metrics import aggregate, score_image
from wsi_nuc.predict import get_predictor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--model")
    ap.add_argument("--split", default="val")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    pred = get_predictor(a.model, "cpu")
    meta = read_index(a.dataset)
    cache = []
    for stem in list_stems(a.dataset, a.split):
        s = load_sample(a.dataset, stem, meta)
        f = resample_factor(s.mpp, pred.mpp)
        shape = (round(s.image.shape[0] * f), round(s.image.shape[1] * f))
        maps = pred.maps(resize_image(s.image, shape)[None])[0]
        cache.append((s.labels, maps))
    grid = []
    for thr, mt, bw, hw in itertools.product((0.4, 0.5), (0.2, 0.3, 0.4, 0.5), (0.25, 0.5, 1.0), (0.0, 0.3, 0.6)):
        grid.append(dict(marker="dist", fg_threshold=thr, marker_threshold=mt, boundary_weight=bw, hv_weight=hw))
    for thr, mt in itertools.product((0.4, 0.5), (0.2, 0.3, 0.5)):
        grid.append(dict(marker="centre", fg_threshold=thr, marker_threshold=mt))
    for thr, mt in itertools.product((0.4, 0.5), (0.3, 0.5)):
        grid.append(dict(marker="boundary", fg_threshold=thr, marker_threshold=mt))
    results = []
    for g in grid:
        p = InstanceParams.from_dict(g)
        per = []
        for gt, maps in cache:
            lab = labels_from_maps(maps, p)
            per.append(score_image(gt, resize_labels(lab, gt.shape)))
        agg = aggregate(per)
        results.append((agg["aji"], agg["pq"], agg["f1"], g))
        print(f"aji {agg['aji']:.4f} pq {agg['pq']:.4f} f1 {agg['f1']:.4f}  {g}", flush=True)
    results.sort(key=lambda r: r[0] + r[1])
    print("best:", results[-1])
    if a.json:
        with open(a.json, "w") as fh:
            json.dump([dict(aji=r[0], pq=r[1], f1=r[2], **r[3]) for r in results], fh, indent=1)


if __name__ == "__main__":
    main()
