"""The one error type users see (bad input or usage, exit code 2) and what reaches stderr.

Every message is printed as exactly one line: control characters (a newline in a file name, a carriage
return, an escape sequence) are written as Python escapes (``\\n``, ``\\r``, ``\\x1b``), so a hostile
file name can neither split the line nor drive the terminal.
"""
from __future__ import annotations

import re
import sys

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class InputError(Exception):
    """Bad input or usage. The message names the file and the cause, on one line."""


def one_line(text) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\t``, ``\\x1b``, ...): one printable line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def as_text(name) -> str:
    r"""A file name as text that any UTF-8 writer takes: bytes that are not UTF-8 (kept by Python as lone
    surrogates) become U+FFFD.

    >>> as_text(b"bad\xffname".decode("utf-8", "surrogateescape")) == "bad\ufffdname"
    True
    """
    return str(name).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def warn(message: str, stream=None) -> None:
    """One ``wsi-nuc: warning: ...`` line on stderr (a finished run still exits 0)."""
    stream = stream or sys.stderr
    stream.write(f"wsi-nuc: warning: {one_line(message)}\n")
    stream.flush()


def quiet_libraries() -> None:
    """Reader libraries' warnings are not the user's concern (a bad file is one InputError instead):
    tifffile/tiffslide log and warn about every odd tag. Called by the CLI and in every worker."""
    import logging
    import warnings

    for name in ("tifffile", "tiffslide", "imagecodecs"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for module in ("tifffile", "tiffslide", "imagecodecs", "PIL", "openslide", "zarr", "numcodecs"):
        warnings.filterwarnings("ignore", module=module)


def known_fields(cls, d: dict | None, what: str) -> dict:
    """``d`` (None: empty) when every key is a field of the dataclass ``cls``, else one InputError naming the key.

    For the ``from_dict`` of configuration dataclasses: a typo (``fg_treshold``) must not be silently ignored.
    """
    d = dict(d or {})
    fields = cls.__dataclass_fields__
    unknown = [k for k in d if k not in fields]
    if unknown:
        raise InputError(f"{what}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                         f"(known: {', '.join(fields)})")
    return d
