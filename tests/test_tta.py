"""Test-time augmentation undoes each flip/rotation on the maps, offsets included."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_nuc.predict import MAP_CHANNELS, forward_tta


def _offset_oracle(x: torch.Tensor) -> torch.Tensor:
    """A geometry-equivariant "network": fg = the input, hv = each bright pixel's offset from the bright
    pixels' centre of mass (x along columns, y along rows), as the real heads are trained to predict."""
    b, _, h, w = x.shape
    m = (x[:, :1] > 0.5).float()
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(b, 1, h, w)
    n = m.sum((2, 3), keepdim=True)
    cy, cx = (rows * m).sum((2, 3), keepdim=True) / n, (cols * m).sum((2, 3), keepdim=True) / n
    out = torch.zeros(b, len(MAP_CHANNELS), h, w)
    out[:, 0:1] = x[:, :1]
    out[:, 2:3] = m * 0.5
    out[:, MAP_CHANNELS.index("hv_x")] = ((cols - cx) * m)[:, 0]
    out[:, MAP_CHANNELS.index("hv_y")] = ((rows - cy) * m)[:, 0]
    return out


@pytest.mark.parametrize("n", [1, 4, 8])
def test_tta_of_an_equivariant_net_is_the_net(n):
    x = torch.zeros(1, 3, 32, 48)                               # not square: the transposes must undo
    x[:, :, 5:9, 30:41] = 1.0                                   # an off-centre, elongated blob
    ref = _offset_oracle(x)
    got = forward_tta(_offset_oracle, x, n)
    assert torch.allclose(got, ref, atol=1e-5)
    assert got[:, MAP_CHANNELS.index("hv_x")].abs().max() > 4   # offsets were there to get wrong


def test_tta_rejects_other_counts():
    with pytest.raises(ValueError, match="tta"):
        forward_tta(_offset_oracle, torch.zeros(1, 3, 8, 8), 3)


def test_tta_on_the_default_model_agrees_with_plain_inference(slides):
    """On a real CMU tile the averaged maps stay close to the plain ones (same nuclei, smoother maps)."""
    from wsi_nuc.predict import get_predictor
    from wsi_nuc.slide import open_slide

    rgb = open_slide(slides / "CMU-1-Small-Region.svs").read_level(0, 900, 600, 512, 512)
    p = get_predictor(None, "cpu")
    plain, avg = p.maps(rgb[None])[0], p.maps(rgb[None], tta=8)[0]
    assert avg.shape == plain.shape
    fg0, fg8 = plain[0] > 0.5, avg[0] > 0.5
    iou = (fg0 & fg8).sum() / max((fg0 | fg8).sum(), 1)
    assert iou > 0.85 and fg0.sum() > 1000
    assert not np.allclose(plain, avg)                          # the transforms did run


def test_run_with_tta_reaches_the_tiles_and_changes_the_same_run(tmp_path):
    """--tta is a setting of the tiles: it reaches the worker's maps() and a run with another --tta is not
    resumed from the tiles of the first; bad values are refused like the other choices."""
    from wsi_nuc.errors import InputError
    from wsi_nuc.run_context import RunSettings, result_settings
    from wsi_nuc.validate import validate_settings

    assert result_settings(RunSettings(tta=8), "tiles") != result_settings(RunSettings(), "tiles")
    with pytest.raises(InputError, match="--tta"):
        validate_settings(RunSettings(tta=3))
    from wsi_nuc.cli import build_parser

    a = build_parser().parse_args(["run", "x.svs", "--tta", "4"])
    assert a.tta == 4
