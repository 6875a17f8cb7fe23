"""The type head end to end with a tiny random model: predictor maps, eval (F_d, F_c, confusion, classes.png),
and the per-nucleus ``type`` / ``type_prob`` of the run path; shipped 6-channel models are unchanged."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pytest import approx

from wsi_nuc.cli import main

DATASET_TYPES = ["other", "inflammatory", "epithelial", "spindle-shaped"]
# the model's own order differs from the dataset's: eval must map types by name
MODEL_TYPES = ["epithelial", "other", "inflammatory", "spindle-shaped"]
# the type head's biases (background, then MODEL_TYPES): "epithelial" wins on every pixel, with
# P(epithelial | nucleus) = e^2 / (e^2 + 3)
TYPE_BIAS = (0.0, 2.0, 0.0, 0.0, 0.0)
P_EPI = np.exp(2.0) / (np.exp(2.0) + 3.0)
STEMS = ("train_3_012", "train_24_008")   # val crops with several types each


@pytest.fixture(scope="module")
def consep(shared):
    p = shared / "data" / "consep-train"
    if not (p / "classes").is_dir():
        pytest.skip("consep-train with classes/ not present")
    return p


@pytest.fixture(scope="module")
def tiny_model(consep, tmp_path_factory):
    """An 11-channel U-Net (6 instance maps + background + 4 types), random but for two things: the fg
    bias puts about 40 % of a CoNSeP crop's pixels in nuclei, and the type head is constant (TYPE_BIAS)."""
    import torch

    from wsi_nuc.dataset import load_sample
    from wsi_nuc.model.io import save_model
    from wsi_nuc.model.net import HEADS, NetConfig, UNet

    torch.manual_seed(0)
    net = UNet(NetConfig(base=4, depth=2, max_channels=8, heads=HEADS + tuple(f"type_{i}" for i in range(5))))
    net.eval()
    img = load_sample(consep, STEMS[0]).image[::2, ::2]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float().div(255).sub(0.5).div(0.25)
    with torch.no_grad():
        net.head.weight[0] *= 1000.0                       # a fg logit that varies over the image
        net.head.bias[0] = 0.0
        net.head.bias[0] = -net(x)[0, 0].quantile(0.6)
        net.head.weight[6:] = 0.0
        net.head.bias[6:] = torch.tensor(TYPE_BIAS)
    d = tmp_path_factory.mktemp("tiny") / "model"
    save_model(net, d, {"name": "tiny-typed", "version": "0", "mpp": 0.5, "norm": {"mean": 0.5, "std": 0.25},
                        "postprocess": {}, "types": MODEL_TYPES})
    return d


@pytest.fixture(scope="module")
def tiny_dataset(consep, tmp_path_factory):
    ds = tmp_path_factory.mktemp("ds")
    for sub in ("images", "labels", "classes"):
        (ds / sub).mkdir()
    for stem in STEMS:
        shutil.copy(consep / "images" / f"{stem}.png", ds / "images")
        shutil.copy(consep / "labels" / f"{stem}.tif", ds / "labels")
        shutil.copy(consep / "classes" / f"{stem}.png", ds / "classes")
    meta = json.loads((consep / "dataset.json").read_text())
    (ds / "dataset.json").write_text(json.dumps({"name": "tiny", "mpp": 0.25, "classes": meta["classes"]}))
    return ds


def test_shipped_model_keeps_six_maps_and_no_types(consep):
    from wsi_nuc.dataset import load_sample
    from wsi_nuc.instances import InstanceParams
    from wsi_nuc.predict import get_predictor
    from wsi_nuc.segment import segment_image, segment_image_typed

    pr = get_predictor("he-student-int8", "cpu")    # v0.2: six maps, no types (the default has types)
    assert pr.types == ()
    s = load_sample(consep, STEMS[0])
    assert pr.maps(s.image[None, :64, :64]).shape == (1, 6, 64, 64)
    params = InstanceParams.from_dict(pr.config.get("postprocess"))
    lab, types, prob = segment_image_typed(s.image, pr, params, s.mpp)
    assert types is None and prob is None and lab.max() > 0
    assert np.array_equal(lab, segment_image(s.image, pr, params, s.mpp))


@pytest.mark.parametrize("engine", ["torch-int8-onednn", "torch-fp32"])
def test_no_types_runs_the_trunk_alone_with_the_same_maps(consep, engine):
    """--no-types builds the default's graph without its type branch: the six instance maps are the typed
    graph's to the bit (real CoNSeP crop, the shipped default), the type channels are gone."""
    import torch

    from wsi_nuc.dataset import load_sample
    from wsi_nuc.predict import get_predictor

    if "onednn" in engine and "onednn" not in torch.backends.quantized.supported_engines:
        pytest.skip("no oneDNN quantized engine in this PyTorch build")
    img = load_sample(consep, STEMS[0]).image[None, :128, :128]
    typed = get_predictor("he-types-int8", "cpu", None, engine)
    trunk = get_predictor("he-types-int8", "cpu", None, engine, types=False)
    assert typed.types and trunk.types == () and trunk is not typed
    a, b = typed.maps(img), trunk.maps(img)
    assert a.shape[1] > 6 and b.shape == (1, 6, 128, 128)
    assert np.array_equal(a[:, :6], b)
    if engine.startswith("torch-int8"):
        code = trunk.net.graph.code
        assert "type_branch" not in code and "type_branch" in typed.net.graph.code


def test_cuda_default_is_the_typed_fp32_network_of_the_cpu_default(consep):
    """On CUDA (INT8 graphs are CPU kernels) the default is he-types: the fp32 network that the CPU default
    quantises, with the same types and settings. Run here on the CPU on a real CoNSeP crop, its maps agree
    with the INT8 default's: foreground and, on the nuclei both find, the type they give."""
    from wsi_nuc.dataset import load_sample
    from wsi_nuc.model.io import default_model, read_model_config, resolve_model_dir
    from wsi_nuc.predict import get_predictor

    name = default_model("cuda")
    fp32_cfg = read_model_config(resolve_model_dir(name))
    int8_cfg = read_model_config(resolve_model_dir(default_model("cpu")))
    assert name != default_model("cpu") and fp32_cfg.get("quantized") is None
    for key in ("types", "type_weights", "postprocess", "stain_norm", "arch", "version"):
        assert fp32_cfg[key] == int8_cfg[key], key
    img = load_sample(consep, STEMS[0]).image[None]
    a = get_predictor(name, "cpu", None, "torch-fp32").maps(img)[0]
    b = get_predictor(default_model("cpu"), "cpu", None, "torch-int8").maps(img)[0]
    assert a.shape == b.shape == (6 + 1 + len(fp32_cfg["types"]), *img.shape[1:3])
    fa, fb = a[0] > 0.5, b[0] > 0.5
    assert fa.mean() > 0.05 and (fa == fb).mean() > 0.97
    both = fa & fb
    assert (a[7:].argmax(0)[both] == b[7:].argmax(0)[both]).mean() > 0.9


def test_type_channels_are_a_softmax_and_flow_through(tiny_model, consep):
    from wsi_nuc.dataset import load_sample
    from wsi_nuc.instances import InstanceParams
    from wsi_nuc.predict import get_predictor
    from wsi_nuc.segment import segment_image_typed, tiled_maps

    pr = get_predictor(str(tiny_model), "cpu")
    assert pr.types == tuple(MODEL_TYPES)
    img = load_sample(consep, STEMS[0]).image
    m = pr.maps(img[None, :96, :96])[0]
    assert m.shape == (11, 96, 96)
    assert m[6:].sum(0) == approx(np.ones((96, 96)), abs=1e-5)
    assert (m[7] > m[6]).all() and (m[7] > m[8]).all()            # the biased type wins everywhere
    assert tiled_maps(img[:96, :96], pr, tile=32, halo=16).shape == (11, 96, 96)
    # through the upsampling path (0.25 µm/px image, 0.5 µm/px model): every nucleus typed, one row each
    lab, types, prob = segment_image_typed(img, pr, InstanceParams(), 0.25)
    n = len(np.unique(lab)) - 1
    assert n > 10 and types.shape == (n,) and prob.shape == (n,)
    assert (types == 1).all() and prob == approx(np.full(n, P_EPI), rel=1e-4)
    # a coarser image (labels resized back with nearest): still one row per label that remains
    lab, types, prob = segment_image_typed(img[::4, ::4], pr, InstanceParams(), 1.0)
    assert types.shape == (len(np.unique(lab)) - 1,)


def test_eval_reports_types_and_writes_class_maps(tiny_model, tiny_dataset, tmp_path, capsys):
    from wsi_nuc.evaluate import evaluate
    from wsi_nuc.metrics_types import classification_f1

    pred = tmp_path / "pred"
    assert main(["eval", str(tiny_dataset), "--model", str(tiny_model), "--device", "cpu", "--json",
                 "--save-predictions", str(pred)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for k in ("f_d", "f_c_other", "f_c_inflammatory", "f_c_epithelial", "f_c_spindle_shaped", "aji"):
        assert k in res, k
    conf = res["type_confusion"]
    assert conf["types"] == DATASET_TYPES
    mat = np.array(conf["matrix"])
    # every prediction is epithelial (dataset id 3, model index 1): only that column is filled
    assert mat[:, 2].sum() > 0 and mat[:, [0, 1, 3]].sum() == 0
    # no predicted type is right unless the true one is epithelial: F_c of the others is 0 or undefined
    assert res["f_c_inflammatory"] in (0.0, None) and res["f_c_spindle_shaped"] in (0.0, None)
    assert 0 < res["f_c_epithelial"] < 1
    full = evaluate(tiny_dataset, str(tiny_model), device="cpu")
    counts = [im["type_counts"] for im in full["images"]]
    assert mat.sum() == sum(c["tp_d"] for c in counts)         # every pair has a known true type
    pooled = {k: np.sum([c[k] for c in counts], axis=0).tolist()
              for k in ("confusion", "unpaired_true", "unpaired_pred")}
    assert res["f_c_epithelial"] == approx(classification_f1(pooled, 3))
    tp, fp, fn = (sum(c[k] for c in counts) for k in ("tp_d", "fp_d", "fn_d"))
    assert res["f_d"] == approx(2 * tp / (2 * tp + fp + fn))
    from PIL import Image
    import tifffile

    for stem in STEMS:
        cls = np.asarray(Image.open(pred / f"{stem}.classes.png"))
        lab = tifffile.imread(pred / f"{stem}.tif")
        assert cls.dtype == np.uint8 and cls.shape == lab.shape == (256, 256)
        assert np.array_equal(cls, np.where(lab > 0, 3, 0))


def test_eval_without_types_reports_detection_only(tiny_dataset, tmp_path, capsys):
    pred = tmp_path / "pred"
    assert main(["eval", str(tiny_dataset), "--device", "cpu", "--json", "--save-predictions", str(pred),
                 "--model", "he-student-int8"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < res["f_d"] <= 1
    assert not any(k.startswith("f_c_") for k in res) and "type_confusion" not in res
    assert not list(pred.glob("*.classes.png")) and len(list(pred.glob("*.tif"))) == len(STEMS)


@pytest.fixture(scope="module")
def client():
    from wsi_nuc.cluster import dask_client

    with dask_client(workers=1) as c:
        yield c


def test_run_records_carry_type_unless_no_types(tiny_model, consep, tmp_path, client, monkeypatch):
    import wsi_nuc.pipeline as pipeline
    from wsi_nuc.pipeline import RunSettings, run_slide

    seen = {}
    original = pipeline.write_outputs

    def capture(tmp, run, plan, final):
        seen["tiles"] = [tn for tn, _, _ in final]
        return original(tmp, run, plan, final)

    monkeypatch.setattr(pipeline, "write_outputs", capture)
    slide = tmp_path / "crop.png"
    shutil.copy(consep / "images" / f"{STEMS[0]}.png", slide)
    st = RunSettings(model=str(tiny_model), device="cpu", mpp=0.25, tissue_detection=False, quiet=True)
    s = run_slide(slide, tmp_path / "on", st, client=client)
    cols = [tn.columns for tn in seen["tiles"] if tn.n]
    assert s["nucleus_count"] > 10 and cols
    for c in cols:
        n = len(c["area_um2"])
        assert c["type"].tolist() == ["epithelial"] * n
        assert c["type_prob"] == approx(np.full(n, P_EPI), rel=1e-4)
    from dataclasses import replace

    s2 = run_slide(slide, tmp_path / "off", replace(st, types=False), client=client)
    assert s2["nucleus_count"] == s["nucleus_count"]
    assert all("type" not in tn.columns and "type_prob" not in tn.columns for tn in seen["tiles"])


def test_no_types_flag_reaches_the_settings(captured_settings):
    got = captured_settings
    assert main(["run", "x.svs", "--quiet"]) == 0
    assert main(["run", "x.svs", "--quiet", "--no-types"]) == 0
    assert main(["batch", "x.svs", "--quiet", "--no-types"]) == 0
    assert [st.types for st in got] == [True, False, False]
