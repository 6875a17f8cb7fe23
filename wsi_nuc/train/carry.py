"""A training run's checkpoint as one compact safetensors file that travels in git between machines.

A long run (the v0.6 teacher: hours on a CPU) outlives the machine it started on; its ``runs/`` folder does
not. ``export`` writes the checkpoint's tensors (model, weight average, optimiser moments) and its plain
values (step, CPU seconds, optimiser settings) into one safetensors file: no pickle, and the optimiser's
moments stored as bfloat16 (a third less to carry; they are running averages, and Adam divides one by the
root of the other, so 3 significant digits move the next steps by far less than a batch's noise). The model
and its weight average stay float32, bit for bit. ``restore`` writes the checkpoint back, and the same
``wsi-nuc train`` command resumes from it.

    python -m wsi_nuc.train.carry export runs/he-teacher-v06 workflows/models/state/he-teacher-v06.safetensors
    python -m wsi_nuc.train.carry restore workflows/models/state/he-teacher-v06.safetensors runs/he-teacher-v06
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

LOW_PRECISION = ("optim/state/",)      # tensors stored as bfloat16


def _flatten(obj, prefix: str, tensors: dict, plain: dict) -> None:
    if isinstance(obj, dict) and all(isinstance(k, (str, int)) for k in obj):
        for k, v in obj.items():
            _flatten(v, f"{prefix}{k}{'#i' if isinstance(k, int) else ''}/", tensors, plain)
    elif torch.is_tensor(obj):
        key = prefix[:-1]
        low = obj.is_floating_point() and obj.dim() > 0 and key.startswith(LOW_PRECISION)
        tensors[key] = (obj.to(torch.bfloat16) if low else obj).detach().cpu().contiguous()
        plain.setdefault("__dtype__", {})[key] = str(obj.dtype).removeprefix("torch.")
    else:
        plain[prefix[:-1]] = obj


def _insert(tree: dict, key: str, value) -> None:
    *parents, leaf = key.split("/")
    node = tree
    for p in parents:
        node = node.setdefault(int(p[:-2]) if p.endswith("#i") else p, {})
    node[int(leaf[:-2]) if leaf.endswith("#i") else leaf] = value


def export(run: Path, out: Path) -> dict:
    """``run/checkpoint.pt`` -> ``out`` (safetensors); returns the plain values written."""
    from safetensors.torch import save_file

    state = torch.load(Path(run) / "checkpoint.pt", weights_only=True, map_location="cpu")
    tensors, plain = {}, {}
    _flatten(state, "", tensors, plain)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"wsi_nuc.carry": json.dumps(plain)})
    tmp.replace(out)
    return {k: v for k, v in plain.items() if k in ("step", "cpu_s")}


def restore(src: Path, run: Path) -> dict:
    """``src`` (from :func:`export`) -> ``run/checkpoint.pt``; refuses to replace a checkpoint already there."""
    from safetensors import safe_open

    ckpt = Path(run) / "checkpoint.pt"
    if ckpt.exists():
        raise FileExistsError(f"{ckpt}: a checkpoint is already there; resume from it or move it away")
    with safe_open(str(src), framework="pt") as f:
        plain = json.loads(f.metadata()["wsi_nuc.carry"])
        dtypes = plain.pop("__dtype__")
        state: dict = {}
        for key in f.keys():
            _insert(state, key, f.get_tensor(key).to(getattr(torch, dtypes[key])))
    for key, value in plain.items():
        _insert(state, key, value)
    for group in state.get("optim", {}).get("param_groups", []):
        if isinstance(group.get("betas"), list):       # JSON has no tuples; torch's optimisers write one
            group["betas"] = tuple(group["betas"])
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(ckpt)
    return {"step": state.get("step"), "cpu_s": state.get("cpu_s")}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="RUN/checkpoint.pt -> FILE")
    e.add_argument("run", type=Path)
    e.add_argument("file", type=Path)
    r = sub.add_parser("restore", help="FILE -> RUN/checkpoint.pt")
    r.add_argument("file", type=Path)
    r.add_argument("run", type=Path)
    a = ap.parse_args(argv)
    try:
        done = export(a.run, a.file) if a.cmd == "export" else restore(a.file, a.run)
    except (FileNotFoundError, FileExistsError) as e:
        print(f"wsi_nuc.train.carry: {e}", file=sys.stderr)              # one line, exit status 2
        raise SystemExit(2) from None
    print(a.cmd, json.dumps(done))


if __name__ == "__main__":
    main()
