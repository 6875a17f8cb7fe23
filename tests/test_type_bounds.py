"""Bounds on type proportions (organ priors) as weak type supervision: file, maps, loss, real NuInsSeg."""
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_nuc.errors import InputError
from wsi_nuc.train.type_bounds import as_arrays, bounds_loss, bounds_maps, read_bounds

ROOT = Path(__file__).resolve().parents[1]
NUINSSEG = ROOT.parent / "shared" / "data" / "nuinsseg-train"
TYPES = ["other", "inflammatory", "epithelial", "spindle-shaped"]


def test_shipped_bounds_file_reads_and_names_known_types():
    spec = read_bounds(ROOT / "configs" / "type-bounds-nuinsseg.yaml")
    assert as_arrays(spec["by_organ"]["liver"], TYPES)[0][2] == pytest.approx(0.6)
    assert len(spec["by_image"]) >= 20 and all(k.startswith("human_oesophagus_") for k in spec["by_image"])
    for part in spec.values():
        for b in part.values():
            as_arrays(b, TYPES)          # raises on a type the model does not have
    if NUINSSEG.is_dir():                # every image and organ named is one of NuInsSeg's train split
        import json

        meta = json.loads((NUINSSEG / "dataset.json").read_text())
        train = set(meta["split"]["train"])
        assert set(spec["by_image"]) <= train
        assert set(spec["by_organ"]) <= {meta["images"][s]["organ"] for s in train}


def test_bad_bounds_are_refused(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text("by_organ:\n  heart: {epithelial: [0.5, 0.2]}\n")
    with pytest.raises(InputError, match="lo <= hi"):
        read_bounds(bad)
    bad.write_text("by_tissue: {}\n")
    with pytest.raises(InputError, match="unknown keys"):
        read_bounds(bad)
    with pytest.raises(InputError, match="unknown type 'keratinocyte'"):
        as_arrays({"keratinocyte": [0, 1]}, TYPES)


def _batch(logits_types, lo, hi):
    """One 8x8 crop, all nucleus, one bounded group; logits (T,) the same at every pixel."""
    b = bounds_maps([("a", 0, 0, 8)], {"a": (np.array(lo, np.float32), np.array(hi, np.float32))}, 8, 4)
    t = {k: torch.from_numpy(v)[None] for k, v in b.items()}
    t["fg"] = torch.ones(1, 8, 8)
    logits = torch.tensor([0.0, *logits_types]).view(1, 5, 1, 1).expand(1, 5, 8, 8).clone().requires_grad_()
    return logits, t


def test_bounds_loss_is_zero_inside_and_pushes_towards_the_bound():
    lo, hi = [0, 0, 0.6, 0], [1, 1, 1, 1]
    inside, t = _batch([0, 0, 3, 0], lo, hi)                 # P(epithelial) ~ 0.87 >= 0.6
    assert float(bounds_loss(inside, t, min_px=10).detach()) == 0.0
    outside, t = _batch([0, 0, 0, 2], lo, hi)                # P(epithelial) ~ 0.09 < 0.6
    loss = bounds_loss(outside, t, min_px=10)
    assert float(loss.detach()) == pytest.approx(np.log(0.6) - np.log(np.exp(0) / (3 + np.exp(2))), abs=1e-3)
    loss.backward()
    assert float(outside.grad[0, 3].sum()) < 0              # gradient descent raises the epithelial logit
    # an upper bound: at most 5 % epithelial
    over, t = _batch([0, 0, 2, 0], [0, 0, 0, 0], [1, 1, 0.05, 1])
    assert float(bounds_loss(over, t, min_px=10).detach()) > 0.5
    # too few nucleus pixels in the group: no term
    assert float(bounds_loss(outside, t, min_px=100).detach()) == 0.0


def test_unbounded_placements_are_group_minus_one():
    b = bounds_maps([("a", 0, 0, 4), ("b", 0, 4, 4)], {"b": (np.full(4, 0.1, np.float32), np.ones(4, np.float32))},
                    8, 4)
    assert (b["tb_group"][:4, :4] == -1).all() and (b["tb_group"][:4, 4:] == 1).all()
    assert b["tb_lo"][:, :4, 4:].min() == pytest.approx(0.1) and b["tb_lo"][:, :4, :4].max() == 0


@pytest.mark.skipif(not NUINSSEG.is_dir(), reason="needs ../shared/data/nuinsseg-train")
def test_real_nuinsseg_images_get_their_organs_bounds_in_batches(tmp_path):
    from wsi_nuc.train.augment import AugmentConfig
    from wsi_nuc.train.sources import load_source, make_batch

    f = tmp_path / "b.yaml"
    f.write_text("by_organ:\n  heart: {epithelial: [0, 0.05]}\nby_image:\n  human_lung_1: {epithelial: [0.3, 1]}\n")
    src = load_source({"path": str(NUINSSEG), "weight": 1, "modality": None, "type_bounds": str(f)},
                      "val", 0.5, types=TYPES)
    organs = {s.stem.rsplit("_", 1)[0] for s in src.samples if s.stem in src.bounds}
    assert organs == {"mouse_heart", "human_lung"}
    assert sum(s.stem.startswith("mouse_heart") for s in src.samples) == len(src.bounds) - 1
    assert src.bounds["human_lung_1"][0][2] == pytest.approx(0.3)
    imgs, tgts = make_batch([src], 256, 6, AugmentConfig(), np.random.default_rng(0))
    n_groups = 0
    for t in tgts:
        assert t["tb_group"].shape == (256, 256) and t["tb_lo"].shape == (4, 256, 256)
        g = t["tb_group"]
        assert set(np.unique(g)) <= {-1, 0, 1, 2, 3}
        assert (t["tb_hi"][[0, 1, 3]] == 1).all() and (t["tb_lo"][[0, 1, 3]] == 0).all()
        for k in set(np.unique(g)) - {-1}:
            n_groups += 1
            lo, hi = np.unique(t["tb_lo"][2][g == k]), np.unique(t["tb_hi"][2][g == k])
            assert (lo, hi) in ((0, np.float32(0.05)), (np.float32(0.3), 1))
        assert (t["tb_lo"][2][g < 0] == 0).all() and (t["tb_hi"][2][g < 0] == 1).all()
    assert n_groups >= 6        # 28 of the 62 val images are mouse heart


def test_head_losses_carry_the_bounds_term_only_where_a_source_has_bounds():
    from wsi_nuc.train.losses import head_losses

    logits, t = _batch([0, 0, 0, 2], [0, 0, 0.6, 0], [1, 1, 1, 1])
    out = torch.cat([torch.zeros(1, 6, 8, 8), logits.detach()], 1)
    t.update(fg=torch.ones(1, 8, 8), types=torch.full((1, 8, 8), -1))
    w = {k: 0 for k in ("fg_bce", "fg_dice", "bd_bce", "bd_dice", "centre", "dist_mse", "dist_grad", "hv_mse",
                        "hv_grad", "type_ce", "type_dice")}
    t_plain = {k: v for k, v in t.items() if not k.startswith("tb_")}
    assert "type_bounds" not in head_losses(out, t_plain, w)[1]
    # min_px is 50 in training: an 8x8 group is 64 nucleus pixels
    total, parts = head_losses(out, t, dict(w, type_bounds=2.0))
    assert parts["type_bounds"] > 1.0 and float(total) == pytest.approx(2.0 * parts["type_bounds"], rel=1e-4)
    assert float(head_losses(out, t, dict(w, type_bounds=0))[0]) == 0.0
