"""The network, its heads, and model folders (load/save). Names load lazily: the ``run`` driver reads
model folders without importing torch."""
from importlib import import_module

_WHERE = {"HEADS": ".net", "NetConfig": ".net", "UNet": ".net", "build_net": ".net", "load_model": ".io", "save_model": ".io",
          "resolve_model_dir": ".io", "shipped_models": ".io"}

__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
