"""The one place where what a command raised becomes an exit code and at most one line on stderr.

* :class:`~wsi_nuc.errors.InputError`, and every other exception class that bad input can raise (an
  ``OSError`` naming a file, a file name that is not text, input nested too deep): ``wsi-nuc: error:
  <file>: <cause>``, exit 2. A full disk, a quota or a file-size limit names the output folder; a stdout
  that cannot be written names stdout.
* Ctrl-C: ``wsi-nuc: interrupted``, exit 130; SIGTERM: ``wsi-nuc: terminated``, exit 143; in both cases
  nothing more is printed while the run's threads and processes stop.
* Anything else is a bug: its traceback is shown (as with ``--debug`` for everything).

Both output streams write what they cannot encode (``LC_ALL=C``: "mm²") as escapes instead of failing.
"""
from __future__ import annotations

import errno
import os
import signal
import sys

from .errors import InputError, one_line

# OSErrors that say something about the named file (the user's), not about wsi-nuc
_FILE_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR,
                errno.EISDIR, errno.EROFS, errno.EEXIST, errno.ENOTEMPTY, errno.EIO, errno.ENXIO, errno.EINVAL}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that everything the run holds is released as on Ctrl-C."""


class StdoutError(OSError):
    """Writing to stdout failed (a full disk, a closed pipe): not the output folder's fault."""


class _WatchedStdout:
    """sys.stdout whose write failures are :class:`StdoutError`."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            raise StdoutError(e.errno, e.strerror) from e

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            raise StdoutError(e.errno, e.strerror) from e

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _on_sigterm(signum, frame):
    raise Terminated()


def prepare_streams(from_console: bool) -> None:
    """Unencodable characters written as escapes; SIGTERM handled like Ctrl-C (console runs only)."""
    for s in (sys.stdout, sys.stderr):
        try:
            s.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    if from_console:
        if not isinstance(sys.stdout, _WatchedStdout):
            sys.stdout = _WatchedStdout(sys.stdout)
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):   # not the main thread
            pass


def as_input_error(e: BaseException, out) -> InputError | None:
    """The one-line InputError for an exception that bad input (or a full disk) raised; None for a bug."""
    from .validate import is_no_space, no_space

    if isinstance(e, InputError):
        return e
    if is_no_space(e):
        return no_space(out or ".", e)
    if isinstance(e, RecursionError):
        return InputError(f"{out or '.'}: an input is nested too deeply to read ({one_line(e)})")
    if isinstance(e, UnicodeEncodeError) and "surrogate" in str(e):
        return InputError(f"a file name is not valid text in this locale ({one_line(e.object[e.start:e.end + 20])}); "
                          f"rename it")
    if isinstance(e, OSError) and e.filename is not None and e.errno in _FILE_ERRNOS:
        return InputError(f"{one_line(os.fsdecode(e.filename))}: {e.strerror or e}")
    return None


def stdout_error(e: BaseException) -> InputError:
    return InputError(f"stdout: cannot write ({getattr(e, 'strerror', None) or one_line(e)})")


def run(func, args, from_console: bool) -> int:
    """``func(args)`` with every outcome mapped as the module docstring says."""
    prepare_streams(from_console)
    debug = getattr(args, "debug", False)
    try:
        code = int(func(args) or 0)
    except KeyboardInterrupt as e:
        terminated = isinstance(e, Terminated)
        _stopped("terminated" if terminated else "interrupted", silence_after=from_console)
        return 143 if terminated else 130
    except Exception as e:
        if isinstance(e, StdoutError) or (isinstance(e, OSError) and e.filename is None
                                          and _stdout_failure(from_console) is not None):
            err = stdout_error(e)        # a full stdout is not the output folder's fault
            if from_console:
                _silence(1)
        else:
            err = as_input_error(e, getattr(args, "out", None))
        if debug or err is None:
            raise
        _error(err)
        if from_console:
            _silence(2)     # the one line said it: what library threads print while the process ends is noise
        return 2
    failure = _stdout_failure(from_console)
    if failure is not None:
        _error(stdout_error(failure))
        return 2
    return code


def _stdout_failure(from_console: bool) -> OSError | None:
    """Whether stdout cannot take what was printed to it (a full disk, a closed pipe); then, on the console,
    it is silenced so that the interpreter's exit does not fail on it again."""
    try:
        sys.stdout.flush()
        return None
    except OSError as e:
        if from_console:
            _silence(1)
        return e


def _error(e: InputError) -> None:
    print(f"wsi-nuc: error: {one_line(e)}", file=sys.stderr, flush=True)


def _silence(fd: int) -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
    except OSError:
        pass
    if fd == 1:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass


def _stopped(word: str, silence_after: bool) -> None:
    """Ctrl-C or SIGTERM: one line; what the cluster's threads say while they stop is not shown (worker
    processes ignore Ctrl-C: see ``wsi_nuc.cluster``)."""
    import logging

    logging.disable(logging.CRITICAL)
    print(f"wsi-nuc: {word}", file=sys.stderr, flush=True)
    if silence_after:
        _silence(2)     # interpreter shutdown (threads, atexit handlers) writes nothing more
