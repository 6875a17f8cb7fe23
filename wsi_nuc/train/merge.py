"""Weight-space interpolation of two fp32 model folders of one architecture (a fine-tuned model and the
model it started from: WiSE-FT, Wortsman et al. 2022, "Robust fine-tuning of zero-shot models").

    python -m wsi_nuc.train.merge FINE_TUNED START --alpha 0.5 --out FOLDER

Every floating-point tensor (weights, biases, batch-norm running statistics) becomes
``alpha * FINE_TUNED + (1 - alpha) * START``; integer tensors (batch-norm step counters) are the fine-tuned
model's. The output folder is the fine-tuned folder's ``config.json`` (its LTS calibration dropped: it
belonged to other weights) with a ``merge`` entry, and the merged ``model.safetensors``. Without pickle.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ..errors import InputError


def merge_states(fine: dict, start: dict, alpha: float) -> dict:
    """``alpha * fine + (1 - alpha) * start`` per floating tensor; the tensors must agree in names and shapes."""
    if set(fine) != set(start):
        raise InputError(f"the models differ in their tensors: {sorted(set(fine) ^ set(start))[:4]}")
    out = {}
    for k, a in fine.items():
        b = start[k]
        if a.shape != b.shape:
            raise InputError(f"{k}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.is_floating_point():
            out[k] = (alpha * a.float() + (1.0 - alpha) * b.float()).to(a.dtype).contiguous()
        else:
            out[k] = a.clone()
    return out


def merge_folders(fine_dir, start_dir, alpha: float, out_dir) -> Path:
    from safetensors.torch import load_file, save_file

    from ..model.folders import read_model_config, resolve_model_dir

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha {alpha}: must be in [0, 1]")
    fine_dir, start_dir, out_dir = resolve_model_dir(fine_dir), resolve_model_dir(start_dir), Path(out_dir)
    cfg, start_cfg = read_model_config(fine_dir), read_model_config(start_dir)
    for c, d in ((cfg, fine_dir), (start_cfg, start_dir)):
        if c.get("quantized"):
            raise InputError(f"{d}: an INT8 folder; merge the fp32 models, then quantise")
    if cfg.get("arch") != start_cfg.get("arch"):
        raise InputError(f"{fine_dir} and {start_dir}: different architectures")
    if out_dir.exists():
        raise InputError(f"{out_dir}: exists; choose a new folder")
    merged = merge_states(load_file(str(fine_dir / "model.safetensors")),
                          load_file(str(start_dir / "model.safetensors")), float(alpha))
    out_dir.mkdir(parents=True)
    save_file(merged, str(out_dir / "model.safetensors"))
    cfg.pop("calibration", None)
    cfg["merge"] = {"method": "linear (WiSE-FT)", "alpha": float(alpha), "fine_tuned": str(fine_dir),
                    "start": str(start_dir),
                    "start_model": f"{start_cfg.get('name')} v{start_cfg.get('version')}"}
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for extra in ("card.md", "training-log.md"):
        if (fine_dir / extra).is_file():
            shutil.copyfile(fine_dir / extra, out_dir / extra)
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fine_tuned")
    ap.add_argument("start")
    ap.add_argument("--alpha", type=float, required=True, help="weight of the fine-tuned model, 0..1")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(merge_folders(a.fine_tuned, a.start, a.alpha, a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
