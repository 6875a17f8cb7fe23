"""Locks on output paths: one run at a time writes ``OUT/<slide stem>/`` (and one batch a cohort folder).

A lock is a small file, created atomically (written under a unique name, then ``os.link``-ed to the lock
name, which fails when the name exists; safe on NFS too), holding ``host pid start-time token``. It is
*stale* when its host is this host and its process is gone (or the pid now belongs to a process that
started at another time); a stale lock is taken over, anything else is respected: the caller fails at
once with one line, or waits (``--wait``). A lock is removed only by the run whose token it holds.

Test hook: ``WSI_NUC_TEST_HOLD=POINT:DIR`` holds a run at :func:`checkpoint` ``POINT`` (it writes
``DIR/held`` and waits for ``DIR/release``), so tests can race two runs deterministically.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import InputError

POLL_S = 0.5


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: str = "-"      # process start time (Linux /proc clock ticks), "-" where unknown
    token: str = ""

    def text(self) -> str:
        return f"{self.host} {self.pid} {self.start} {self.token}\n"


def _start_time(pid: int) -> str:
    """Start time of process ``pid`` in clock ticks after boot (Linux), "-" when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def me() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, _start_time(pid), uuid.uuid4().hex)


def read_owner(lock: Path) -> Owner | None:
    """The lock's owner; None when it is absent or not a lock this module wrote."""
    try:
        parts = lock.read_text(errors="replace").split()
        return Owner(parts[0], int(parts[1]), *parts[2:4])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def is_stale(owner: Owner) -> bool:
    """The owner is a process of this host that no longer runs (a pid reused by a later process counts)."""
    if owner.host != socket.gethostname():
        return False  # another machine's process: its liveness cannot be checked from here
    if not alive(owner.pid):
        return True
    now = _start_time(owner.pid)
    return owner.start != "-" and now != "-" and now != owner.start


def _try_create(lock: Path, owner: Owner) -> bool:
    tmp = lock.parent / f"{lock.name}.{owner.token}.tmp"
    tmp.write_text(owner.text())
    try:
        os.link(tmp, lock)
        return True
    except (FileExistsError, FileNotFoundError):   # taken; or our temporary name was cleaned meanwhile
        return False
    finally:
        tmp.unlink(missing_ok=True)


def _break_stale(lock: Path, stale: Owner) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile (then it is put back)."""
    aside = lock.parent / f"{lock.name}.{uuid.uuid4().hex}.stale"
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    if read_owner(aside) != stale:       # we moved a fresh lock: restore it (unless yet another exists)
        try:
            os.link(aside, lock)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


@contextmanager
def hold(lock: Path | str, subject: str, kind: str = "run", wait: bool = False,
         on_wait: Callable[[str], None] | None = None):
    """Hold ``lock`` for the ``with`` block. ``subject`` names what is locked in messages (a folder);
    ``kind`` the kind of run ("run", "batch"). Busy: InputError, or with ``wait`` poll until free."""
    lock = Path(lock)
    mine = me()
    told = False
    while True:
        if _try_create(lock, mine):
            break
        owner = None if lock.is_symlink() else read_owner(lock)     # wsi-nuc never makes a link
        if owner is None:
            if not (lock.exists() or lock.is_symlink()):
                continue  # released between our attempt and the read
            what = "a link (dangling)" if lock.is_symlink() and not lock.exists() else \
                "a link" if lock.is_symlink() else "not a wsi-nuc lock file"
            raise InputError(f"{subject}: {lock} is {what}, not a lock wsi-nuc wrote; delete it if no wsi-nuc "
                             f"run is using this output")
        if is_stale(owner):
            _break_stale(lock, owner)
            continue
        where = f"pid {owner.pid}" + ("" if owner.host == socket.gethostname() else f" on {owner.host}")
        if not wait:
            raise InputError(f"{subject}: another wsi-nuc {kind} is writing it ({where}); pass --wait to "
                             f"wait for it, or delete {lock} if that process is gone")
        if on_wait is not None and not told:
            on_wait(f"{subject}: waiting for another wsi-nuc {kind} ({where}) to finish")
            told = True
        time.sleep(POLL_S)
    try:
        yield mine
    finally:
        if read_owner(lock) == mine:
            lock.unlink(missing_ok=True)


def checkpoint(point: str) -> None:
    """Test hook (``WSI_NUC_TEST_HOLD=POINT:DIR``): at ``point``, write DIR/held, wait for DIR/release."""
    spec = os.environ.get("WSI_NUC_TEST_HOLD")
    if not spec or spec.partition(":")[0] != point:
        return
    folder = Path(spec.partition(":")[2])
    (folder / "held").write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
