"""The terms of a model's weights in a few words, for ``wsi-nuc models``, ``summary.json`` and qc.png.

Each model folder's ``config.json`` has the full ``licence`` text (its card says why); the code of wsi-nuc
is Apache-2.0. The shipped H&E weights inherit their training data's terms: MoNuSeg 2018 is CC BY-NC-SA
4.0 (non-commercial, share-alike), CoNSeP is for research use only.

>>> short_licence({"licence": "CC BY-NC-SA 4.0 (inherited from MoNuSeg 2018) and research use only (CoNSeP)"})
'CC BY-NC-SA 4.0 (MoNuSeg) + research use only (CoNSeP)'
>>> short_licence({"licence": "CC0 1.0 (DSB 2018 stage 1 / BBBC038v1); weights released under the same terms"})
'CC0 1.0'
>>> short_licence({})
'unknown (no licence in config.json)'
"""
from __future__ import annotations

CODE_LICENCE = "Apache-2.0"


def short_licence(cfg: dict) -> str:
    """The model's licence in a few words (from ``config.json`` ``licence``)."""
    text = str(cfg.get("licence") or cfg.get("license") or "").strip()
    if not text:
        return "unknown (no licence in config.json)"
    parts = []
    if "CC BY-NC-SA 4.0" in text:
        parts.append("CC BY-NC-SA 4.0" + (" (MoNuSeg)" if "MoNuSeg" in text else ""))
    if "research use only" in text.lower():
        parts.append("research use only" + (" (CoNSeP)" if "CoNSeP" in text else ""))
    if "CC0" in text and not parts:
        parts.append("CC0 1.0")
    return " + ".join(parts) if parts else text.split(";")[0].split(" (")[0]


def licence_record(cfg: dict) -> dict:
    """``summary.json``'s ``model.licence``: the short form, the full text and the code's licence."""
    return {"weights": short_licence(cfg), "weights_full": str(cfg.get("licence") or ""),
            "code": CODE_LICENCE}


def qc_footer(cfg: dict) -> str:
    """qc.png's last line."""
    name = cfg.get("name", "model")
    return (f"weights of {name}: {short_licence(cfg)} (see its card.md); wsi-nuc code: {CODE_LICENCE}; "
            f"research use, not for diagnosis")
