"""Distillation: student budget, adapters, KD terms, and a 3-step run that resumes (real MoNuSeg crops)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wsi_nuc.model.io import load_model, save_model
from wsi_nuc.model.net import NetConfig, UNet, count_params, macs_per_pixel
from wsi_nuc.train.distill import (
    FeatureAdapters,
    binary_kl,
    check_student,
    distill,
    distill_settings,
    kd_losses,
)

REPO = Path(__file__).resolve().parents[1]


def dataset_view(shared: Path, dst: Path, n_train: int = 2, n_val: int = 1) -> Path:
    """A small dataset folder of symlinks to a few real MoNuSeg images (fast to load)."""
    src = shared / "data" / "monuseg2018-train"
    if not (src / "dataset.json").is_file():
        pytest.skip(f"dataset not found: {src}")
    meta = json.loads((src / "dataset.json").read_text())
    train, val = meta["split"]["train"][:n_train], meta["split"]["val"][:n_val]
    for sub, ext in (("images", "png"), ("labels", "tif")):
        (dst / sub).mkdir(parents=True)
        for stem in train + val:
            (dst / sub / f"{stem}.{ext}").symlink_to(src / sub / f"{stem}.{ext}")
    meta["split"] = {"train": train, "val": val}
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


def test_shipped_student_config_meets_budget():
    s = yaml.safe_load((REPO / "configs" / "he-student.yaml").read_text())
    t = yaml.safe_load((REPO / "configs" / "he-teacher.yaml").read_text())
    sc, tc = NetConfig.from_dict(s["model"]), NetConfig.from_dict(t["model"])
    assert count_params(UNet(sc)) <= 2_000_000
    assert macs_per_pixel(tc) / macs_per_pixel(sc) >= 4.0
    b = check_student(UNet(sc), UNet(tc), distill_settings(s))
    assert b["flop_ratio"] >= 4.0 and b["params"] == count_params(UNet(sc))
    # base 16 / max 128 is just over the 4x budget: the check must refuse it
    with pytest.raises(Exception, match="fewer"):
        check_student(UNet(NetConfig(base=16, depth=4, max_channels=128)), UNet(tc), distill_settings(s))


def test_adapters_map_student_to_teacher_shapes():
    s_cfg, t_cfg = NetConfig(base=4, depth=3, max_channels=16), NetConfig(base=8, depth=4, max_channels=32)
    s, t = UNet(s_cfg), UNet(t_cfg)
    x = torch.randn(2, 3, 32, 32)
    _, sf = s(x, return_features=True)
    _, tf = t(x, return_features=True)
    ad = FeatureAdapters(s, t, [0, 1])
    pairs = ad(sf, tf)
    assert [tuple(a.shape) for a, _ in pairs] == [(2, 8, 32, 32), (2, 16, 16, 16)]
    assert all(a.shape == b.shape for a, b in pairs)
    with pytest.raises(Exception):
        FeatureAdapters(s, t, [2])  # the depth-3 student has only decoder levels 0 and 1


def test_binary_kl_and_rare_weighting():
    z = torch.randn(2, 8, 8)
    assert float(binary_kl(z, z, 2.0).abs().max()) < 1e-6
    assert float(binary_kl(z, z + 1, 2.0).min()) > 0
    t_out = torch.randn(1, 6, 8, 8)
    s_out = t_out.clone()
    s_out[:, :, :2] += 3.0                   # the student errs only on the first two rows
    w = dict(kd_fg=1, kd_boundary=1, kd_centre=1, kd_dist=1, kd_hv=1)
    uniform = kd_losses(s_out, t_out, torch.ones(1, 8, 8), 2.0, w)
    pix_w = torch.ones(1, 8, 8)
    pix_w[:, :2] = 5.0                        # ... which are the rare (touching-border) pixels
    rare = kd_losses(s_out, t_out, pix_w, 2.0, w)
    assert set(rare) == set(w)
    for k in w:
        assert rare[k] > uniform[k] > 0
    assert "kd_fg" not in kd_losses(s_out, t_out, pix_w, 2.0, {**w, "kd_fg": 0})


def test_distill_three_steps_then_resume(shared, tmp_path):
    data = dataset_view(shared, tmp_path / "data")
    torch.manual_seed(0)
    teacher = UNet(NetConfig(base=8, depth=3, max_channels=32))
    save_model(teacher, tmp_path / "teacher", {"name": "t", "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.25}})
    cfg = yaml.safe_load((REPO / "configs" / "he-student.yaml").read_text())
    cfg["teacher"] = str(tmp_path / "teacher")
    cfg["data"]["roots"] = [str(data)]
    cfg["model"] = {"base": 4, "depth": 3, "max_channels": 8}
    cfg["train"].update(steps=3, batch=2, crop=128, val_every=100, snapshot_every=1000, warmup=2, threads=1)
    cfg["distill"]["feature_levels"] = [0, 1]
    logs = []
    distill(cfg, tmp_path / "run", log=logs.append)
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if "loss" in r]
    assert train_recs[-1]["step"] == 3 and np.isfinite(train_recs[-1]["loss"])
    for k in ("kd_fg", "kd_boundary", "kd_centre", "kd_dist", "kd_hv", "feat", "supervised"):
        assert np.isfinite(train_recs[-1][k]), k
    assert np.isfinite([r for r in recs if "val_loss" in r][-1]["val_loss"])
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and {"model", "optim", "step", "cpu_s", "adapters"} <= set(ck)
    net, mcfg = load_model(tmp_path / "run" / "model")
    assert not any(k.startswith("adapters") for k in net.state_dict())
    assert mcfg["distillation"]["flop_ratio"] >= 4.0
    # resume: two more steps continue from step 3
    cfg["train"]["steps"] = 5
    logs.clear()
    distill(cfg, tmp_path / "run", log=logs.append)
    assert any("at step 3" in m for m in logs)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 5
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["training"]["steps"] == 5


def test_mobile_student_from_mobile_teacher_with_types(shared, tmp_path):
    """The v0.3 family: a narrow MobileNetV2 U-Net student distilled from a wider one, type KD on,
    encoder copied from the teacher, on CoNSeP (types) and MoNuSeg (no types) at once."""
    from wsi_nuc.model.mobilenet import MobileUNet, MobileUNetConfig

    torch.manual_seed(0)
    t_cfg = MobileUNetConfig(decoder=(32, 32, 16, 16, 16), stem=16)
    teacher = MobileUNet(t_cfg)
    save_model(teacher, tmp_path / "teacher", {"name": "t", "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.5},
                                                "types": list(t_cfg.types)})
    cfg = yaml.safe_load((REPO / "configs" / "he-student.yaml").read_text())
    cfg["teacher"] = str(tmp_path / "teacher")
    cfg["data"] = {"roots": [{"path": str(dataset_view(shared, tmp_path / "data")), "weight": 1},
                             {"path": str(shared / "data" / "consep-train"), "weight": 1}],
                   "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.5}}
    cfg["model"] = {"kind": "mobileunet", "decoder": [8, 8, 8, 8, 4], "stem": 4}
    cfg["train"].update(steps=2, batch=2, crop=128, val_every=2, snapshot_every=1000, warmup=1, threads=1,
                        type_class_weights=[1, 5, 2, 2, 2])
    cfg["distill"].update(feature_levels=[0, 1], init_encoder_from_teacher=True, min_flop_ratio=1.0,
                          max_params=5_000_000)
    model_dir = distill(cfg, tmp_path / "run", log=lambda m: None)
    recs = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    last = [r for r in recs if "loss" in r][-1]
    assert np.isfinite(last["kd_type"]) and last["kd_type"] >= 0
    val = [r for r in recs if "val" in r][-1]["val"]
    assert set(val) == {"data", "consep-train"}
    net, mcfg = load_model(model_dir)
    assert mcfg["types"] == list(t_cfg.types)
    assert torch.equal(net.encoder.blocks[3].project.weight, net.encoder.blocks[3].project.weight)
    t_state = teacher.encoder.state_dict()
    moved = sum(not torch.allclose(v, t_state[k]) for k, v in net.encoder.state_dict().items())
    assert moved > 0                       # the copied encoder was trained on


def test_type_branch_on_frozen_trunk_leaves_the_nuclei_alone(shared, tmp_path):
    """``trainable: type_branch``: two steps train the type branch only; the trunk (weights and BatchNorm
    statistics) and so every instance output stay those of the model it started from, and its config keeps
    that model's post-processing and scale rule."""
    from wsi_nuc.dataset import list_stems, load_sample

    torch.manual_seed(0)
    trunk_cfg = NetConfig(base=4, depth=4, max_channels=8)
    trunk = UNet(trunk_cfg)
    post = {"fg_threshold": 0.45, "min_confidence": 0.55}
    save_model(trunk, tmp_path / "trunk", {"name": "trunk", "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.25},
                                            "postprocess": post, "nucleus_area_um2": 19.5})
    typed = UNet(NetConfig(base=4, depth=4, max_channels=8, types=("a", "b", "c", "d")))
    save_model(typed, tmp_path / "types", {"name": "tt", "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.25},
                                            "types": ["a", "b", "c", "d"]})
    cfg = yaml.safe_load((REPO / "configs" / "he-types-v04.yaml").read_text())
    cfg["teacher"] = str(tmp_path / "trunk")
    cfg["data"]["roots"] = [{"path": str(dataset_view(shared, tmp_path / "data")), "weight": 1},
                            {"path": str(shared / "data" / "consep-train"), "weight": 1}]
    cfg["data"].pop("stain_target")
    cfg["model"] = {"base": 4, "depth": 4, "max_channels": 8, "types": ["a", "b", "c", "d"], "type_branch": 4}
    cfg["train"].update(steps=2, batch=2, crop=128, val_every=100, snapshot_every=1000, warmup=1, threads=1)
    cfg["distill"].update(init_student_from=str(tmp_path / "trunk"), type_teacher=str(tmp_path / "types"))
    model_dir = distill(cfg, tmp_path / "run", log=lambda m: None)
    net, mcfg = load_model(model_dir)
    assert mcfg["postprocess"] == post and mcfg["nucleus_area_um2"] == 19.5
    before, after = trunk.state_dict(), net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())      # BN running stats included
    fresh = UNet(net.cfg).state_dict()
    assert any(not torch.equal(v, fresh[k]) for k, v in after.items() if k.startswith("type_branch."))
    root = shared / "data" / "consep-train"
    img = load_sample(root, list_stems(root, "val")[0], with_labels=False).image[:128, :128]
    x = (torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        out, ref = net.eval()(x), trunk.eval()(x)
    assert out.shape[1] == 6 + 5 and torch.equal(out[:, :6], ref)


def test_merge_interpolates_weights_and_refuses_mismatches(tmp_path):
    """WiSE-FT merge of two fp32 folders: alpha 0 and 1 give the two models back, 0.5 the midpoint of every
    float tensor (integer counters from the fine-tuned one), the LTS entry is dropped, and mismatched
    architectures, INT8 folders and an existing output folder are refused."""
    from safetensors.torch import load_file

    from wsi_nuc.errors import InputError
    from wsi_nuc.train.merge import merge_folders

    cfg = NetConfig(base=4, depth=2, max_channels=8)
    torch.manual_seed(0)
    a = save_model(UNet(cfg), tmp_path / "a", {"name": "a", "mpp": 0.5, "calibration": {"method": "lts"}})
    b = save_model(UNet(cfg), tmp_path / "b", {"name": "b", "mpp": 0.5})
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for alpha in (0.0, 0.5, 1.0):
        out = merge_folders(a, b, alpha, tmp_path / f"m{alpha}")
        sm = load_file(str(out / "model.safetensors"))
        for k in sa:
            want = alpha * sa[k].float() + (1 - alpha) * sb[k].float() if sa[k].is_floating_point() else sa[k]
            assert torch.allclose(sm[k].float(), want.float(), atol=1e-6), k
        meta = json.loads((out / "config.json").read_text())
        assert meta["merge"]["alpha"] == alpha and "calibration" not in meta
    assert not torch.equal(sa["enc.0.0.weight"], sb["enc.0.0.weight"])
    net, _ = load_model(tmp_path / "m0.5")                  # loads as a model folder
    assert net(torch.zeros(1, 3, 16, 16)).shape[1] == 6
    other = save_model(UNet(NetConfig(base=8, depth=2, max_channels=8)), tmp_path / "c", {"name": "c", "mpp": 0.5})
    with pytest.raises(InputError, match="architectures"):
        merge_folders(a, other, 0.5, tmp_path / "x")
    with pytest.raises(InputError, match="exists"):
        merge_folders(a, b, 0.5, tmp_path / "m0.5")
    with pytest.raises(InputError, match="INT8"):
        merge_folders("he-student-int8", b, 0.5, tmp_path / "y")


def test_teacher_of_other_colours_and_scaling_sees_the_batch_its_way(shared):
    """A teacher with its own stain target and input scaling (the v0.6 MobileNetV2 teacher: RGB in [-1, 1])
    gets the student's batch mapped to what it would have seen had the crop been normalised for it."""
    from wsi_nuc.dataset import list_stems, load_sample
    from wsi_nuc.model.inputs import to_input
    from wsi_nuc.stainnorm import lab_stats, normalise
    from wsi_nuc.train.teachers import TeacherInput

    root = shared / "data" / "monuseg2018-train"
    rgb = load_sample(root, list_stems(root, "val")[0]).image[:128, :128]
    own = lab_stats([rgb])
    a = load_model("he-student", "cpu")[1]
    b = json.loads((REPO / "wsi_nuc" / "models" / "he-mobilenet" / "config.json").read_text())
    from wsi_nuc.stainnorm import LabStats

    sa, sb = LabStats.from_dict(a["stain_norm"]), LabStats.from_dict(b["stain_norm"])
    assert sa.to_dict() != sb.to_dict() and a["norm"] != b["norm"]
    x = to_input(normalise(rgb[None], own, sa), a["norm"], "cpu")
    want = to_input(normalise(rgb[None], own, sb), b["norm"], "cpu")
    got = TeacherInput(a["norm"], sa, b)(x)
    assert got.shape == want.shape
    step = 1 / 255 / b["norm"]["std"]
    assert float((got - want).abs().mean()) < 1.5 * step
    # a training step hands over its batch contiguous in (B, C, H, W), not as to_input's channels-last view:
    # the same input (before the stain fix the teacher saw uninitialised memory there and taught "no nuclei")
    pair = torch.cat([x, x]).contiguous()
    both = TeacherInput(a["norm"], sa, b)(pair)
    assert torch.equal(both[0], got[0]) and torch.equal(both[1], got[0])
    assert float((x - want).abs().mean()) > 10 * step          # unmapped it would be far off
    same = TeacherInput(a["norm"], sa, a)
    assert same.identity and same(x) is x
    scaled = TeacherInput(a["norm"], None, b)(x)                 # scaling alone: exact affine map
    assert torch.allclose(scaled, (x * a["norm"]["std"] + a["norm"]["mean"] - b["norm"]["mean"]) / b["norm"]["std"], atol=1e-6)


def test_narrow_warm_start_keeps_the_sources_outputs(tmp_path):
    """A MobileUNet student with a narrower full-resolution stage and stem (16 channels where the source has
    24) starts from the source's most important channels. 8 scattered channels of each of those layers are
    made worthless to the source: 4 switched off (BatchNorm scale and shift 0: 0 after ReLU) and 4 constant
    (scale 0, shift > 0). The narrowed student then computes the source's outputs (away from the image
    border, where zero padding makes a constant channel non-constant), which holds only if the ordering
    puts those channels last, their constant is folded into what reads them, and every sliced tensor lines
    up with its neighbours, the concatenation [up-sampled, stem] included. Without the sample (plain first
    channels) it does not."""
    from wsi_nuc.model.mobilenet import MobileUNetConfig
    from wsi_nuc.model.net import build_net
    from wsi_nuc.train.distill import warm_start

    torch.manual_seed(0)
    wide = build_net(MobileUNetConfig(decoder=(16, 16, 16, 16, 24), stem=24).to_dict()).eval()
    with torch.no_grad():
        for i, bn in enumerate((wide.stem[1], wide.dec[4][1], wide.dec[4][4])):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            worthless = torch.randperm(24, generator=torch.Generator().manual_seed(i))[:8]
            bn.weight[worthless] = 0
            bn.bias[worthless] = 0
            bn.bias[worthless[4:]] = torch.rand(4) + 0.5
    src = save_model(wide, tmp_path / "wide", {"name": "wide", "mpp": 0.5})
    slim = MobileUNetConfig(decoder=(16, 16, 16, 16, 16), stem=16).to_dict()
    x = torch.randn(2, 3, 96, 96)
    narrow, first = build_net(slim).eval(), build_net(slim).eval()
    sliced = warm_start(narrow, str(src), narrow=True, sample=x)
    warm_start(first, str(src), narrow=True)
    plain = warm_start(build_net(slim), str(src))
    assert "stem.0.weight" in plain and "head.weight" in plain            # left as initialised without narrow
    assert {k.split("[")[0] for k in sliced} >= {"stem.0.weight", "dec.4.0.weight", "dec.4.3.weight", "head.weight"}
    assert all("sliced" in k for k in sliced)
    inner = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    with torch.no_grad():
        want = wide(x)[inner]
        assert torch.allclose(narrow(x)[inner], want, atol=1e-4)
        assert not torch.allclose(first(x)[inner], want, atol=1e-2)


def test_narrow_student_starts_from_its_teachers_best_channels_on_real_crops(shared, tmp_path):
    """``distill.init_narrow`` wired through ``build_student``: on real training crops, the student's
    full-resolution stem is a subset of its source's stem filters (reordered), every coarser level is the
    source's unchanged, and the head's bias took the dropped channels' means."""
    from wsi_nuc.model.mobilenet import MobileUNet, MobileUNetConfig
    from wsi_nuc.train.distill import build_student, distill_settings
    from wsi_nuc.train.driver import load_data

    torch.manual_seed(0)
    src = MobileUNet(MobileUNetConfig(decoder=(16, 16, 16, 16, 12), stem=12)).eval()
    save_model(src, tmp_path / "src", {"name": "s", "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.5}})
    cfg = {"data": {"roots": [{"path": str(dataset_view(shared, tmp_path / "data")), "weight": 1}], "mpp": 0.5,
                    "norm": {"mean": 0.5, "std": 0.5}},
           "model": {"kind": "mobileunet", "decoder": [16, 16, 16, 16, 8], "stem": 8},
           "distill": {"init_student_from": str(tmp_path / "src"), "init_narrow": True}}
    student = build_student(cfg, src, distill_settings(cfg), load_data(cfg))
    src_rows = {tuple(r.flatten().tolist()) for r in src.stem[0].weight}
    assert all(tuple(r.flatten().tolist()) in src_rows for r in student.stem[0].weight)
    for k, v in student.dec[:4].state_dict().items():
        assert torch.equal(v, src.dec[:4].state_dict()[k]), k
    assert not torch.equal(student.head.bias, src.head.bias)
