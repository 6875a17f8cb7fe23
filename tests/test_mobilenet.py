"""The v0.3 network: the converted ImageNet MobileNetV2 encoder, the multi-head + type U-Net, type targets
and losses, and multi-source batches (real weights and data from ../shared)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_nuc.dataset import label_types
from wsi_nuc.model.mobilenet import MobileNetV2Encoder, MobileUNet, MobileUNetConfig
from wsi_nuc.model.net import build_net

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TFLITE = SHARED / "weights" / "mobilenet_v2_1.0_224_quant.tflite"


def _images(n=6):
    from PIL import Image

    paths = sorted((SHARED / "data" / "monuseg2018-train" / "images").glob("*.png"))[:n // 2]
    paths += sorted((SHARED / "data" / "consep-train" / "images").glob("*.png"))[:n - n // 2]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p in paths])


def test_conversion_matches_tflite_interpreter():
    pytest.importorskip("tflite")
    pytest.importorskip("ai_edge_litert")
    from wsi_nuc.train.tflite_import import compare_with_tflite, convert

    net = convert(TFLITE)
    r = compare_with_tflite(TFLITE, _images(), net)
    assert r["top1_agreement"] == 1.0
    assert r["prob_correlation"] > 0.98


def test_shipped_encoder_is_the_conversion():
    pytest.importorskip("tflite")
    from safetensors.torch import load_file

    from wsi_nuc.train.tflite_import import ENCODER_FILE, convert

    shipped = load_file(str(ENCODER_FILE))
    conv = convert(TFLITE).encoder.state_dict()
    assert set(shipped) == set(conv)
    for k, v in conv.items():
        assert torch.allclose(shipped[k].float(), v, atol=2e-3, rtol=1e-3), k
    enc = MobileNetV2Encoder()
    from wsi_nuc.train.tflite_import import load_encoder

    load_encoder(enc)  # loads without pickle and fits the architecture


def test_mobileunet_shapes_and_translation():
    torch.manual_seed(0)
    cfg = MobileUNetConfig(decoder=(16, 16, 16, 16, 8), stem=8)
    net = build_net(cfg.to_dict()).eval()
    assert isinstance(net, MobileUNet) and net.cfg == cfg
    assert cfg.out_channels == 6 + 5
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        y = net(x)
        # shifting the input by the network's stride shifts the output (away from the borders)
        y2 = net(torch.roll(x, shifts=(32, 32), dims=(-2, -1)))
    assert y.shape == (1, 11, 192, 192)
    inner = (slice(None), slice(None), slice(64, 128), slice(64, 128))
    shifted = (slice(None), slice(None), slice(96, 160), slice(96, 160))
    assert torch.allclose(y[inner], y2[shifted], atol=1e-4)
    from wsi_nuc.errors import InputError

    with pytest.raises(InputError, match="arch: unknown key 'decodr'"):
        MobileUNetConfig.from_dict({"kind": "mobileunet", "decodr": [1]})


def test_label_types_majority():
    lab = np.array([[1, 1, 1, 2], [3, 3, 0, 2]])
    cls = np.array([[2, 2, 4, 0], [1, 3, 3, 0]])
    t = label_types(lab, cls)
    assert t.tolist() == [0, 2, 0, 1] or t.tolist() == [0, 2, 0, 3]  # label 3 is a tie (1 vs 3)
    assert t[2] == 0  # no typed pixel


def test_type_losses_ignore_unknown():
    from wsi_nuc.train.losses import type_losses

    logits = torch.zeros(1, 5, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), -1, dtype=torch.long)
    parts = type_losses(logits, target)
    assert float(parts["type_ce"].detach()) == 0.0
    target[0, :2] = 3
    target[0, 2:] = 0
    good = torch.full((1, 5, 4, 4), -5.0)
    good[:, 3, :2] = 5.0
    good[:, 0, 2:] = 5.0
    assert float(type_losses(good, target)["type_ce"]) < 0.01
    assert float(type_losses(good, target)["type_dice"]) < 0.01
    assert float(type_losses(-good, target)["type_ce"]) > 5.0


def test_sources_mosaic_carries_types():
    from wsi_nuc.train.augment import AugmentConfig
    from wsi_nuc.train.sources import draw_crop, load_source

    src = load_source({"path": str(SHARED / "data" / "consep-train"), "weight": 1, "modality": None},
                      "val", 0.5)
    assert len(src.samples) == 80 and src.has_types
    assert src.samples[0].image.shape[:2] == (128, 128)
    rng = np.random.default_rng(1)
    img, lab, typ = draw_crop(src, 256, AugmentConfig(), rng)
    assert img.shape == (256, 256, 3) and lab.shape == typ.shape == (256, 256)
    assert ((lab > 0) == (typ != 0)).all()          # every nucleus pixel has a type (or -1), never 0
    assert set(np.unique(typ)) <= {-1, 0, 1, 2, 3, 4} and (typ > 0).sum() > 1000
    # nuclei from different quadrants never share an id
    for y, x in ((0, 0), (0, 128), (128, 0), (128, 128)):
        q = set(np.unique(lab[y:y + 128, x:x + 128])) - {0}
        rest = set(np.unique(lab)) - q - {0}
        assert not q & rest


def test_stride2_eval_path_equals_tf_same_padding():
    """In eval mode a stride-2 conv runs at stride 1 (symmetric padding, fast INT8 kernels) and keeps
    every second output: the same function as TensorFlow's SAME padding used in training."""
    from wsi_nuc.model.mobilenet import SameConv

    torch.manual_seed(0)
    for groups, cin in ((1, 3), (8, 8)):
        conv = SameConv(cin, 8, 3, stride=2, groups=groups)
        x = torch.randn(2, cin, 32, 48)
        with torch.no_grad():
            ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight,
                                             conv.bias, 2, 0, 1, groups)
            conv.train()
            a = conv(x)
            conv.eval()
            b = conv(x)
        assert a.shape == b.shape == (2, 8, 16, 24)
        assert torch.allclose(a, ref, atol=1e-5) and torch.allclose(b, ref, atol=1e-5)
