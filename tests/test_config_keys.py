"""Configuration dicts reject unknown keys (a typo in ``postprocess`` is an error, not silently ignored), and every
shipped model's config.json still loads."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wsi_nuc.cli import main
from wsi_nuc.errors import InputError
from wsi_nuc.instances import InstanceParams
from wsi_nuc.model.mobilenet import MobileUNetConfig
from wsi_nuc.model.net import NetConfig, build_net
from wsi_nuc.refine import RefineParams

MODELS = sorted((Path(__file__).resolve().parents[1] / "wsi_nuc" / "models").glob("*/config.json"))


@pytest.mark.parametrize("cls, what, typo", [(InstanceParams, "postprocess", "fg_treshold"),
                                             (RefineParams, "refine", "enabeld"),
                                             (NetConfig, "arch", "bsae"),
                                             (MobileUNetConfig, "arch", "decodr")])
def test_unknown_key_is_an_error_naming_it(cls, what, typo):
    with pytest.raises(InputError, match=rf"{what}: unknown key '{typo}' \(known: "):
        cls.from_dict({typo: 1})


def test_known_keys_and_the_unet_kind_load():
    assert InstanceParams.from_dict({"fg_threshold": 0.4}).fg_threshold == 0.4
    assert InstanceParams.from_dict(None) == InstanceParams()
    assert NetConfig.from_dict({"kind": "unet", "base": 16, "heads": ["fg"]}) == NetConfig(base=16, heads=("fg",))


@pytest.mark.parametrize("config", MODELS, ids=[p.parent.name for p in MODELS])
def test_shipped_model_configs_load(config):
    cfg = json.loads(config.read_text())
    InstanceParams.from_dict(cfg.get("postprocess"))
    RefineParams.from_dict(cfg.get("refine"))
    build_net(dict(cfg["arch"]))


def test_run_with_a_postprocess_typo_is_one_line_before_any_cluster(tmp_path, slides, capsys):
    model = tmp_path / "typo-model"
    shutil.copytree(MODELS[0].parent, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["postprocess"] = {**(cfg.get("postprocess") or {}), "fg_treshold": 0.4}
    (model / "config.json").write_text(json.dumps(cfg))
    rc = main(["run", str(slides / "CMU-1-Small-Region.svs"), "--out", str(tmp_path / "out"), "--model", str(model),
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "config.json: postprocess: unknown key 'fg_treshold'" in err[0]
    assert not (tmp_path / "out" / "CMU-1-Small-Region").exists()
