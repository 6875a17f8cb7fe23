"""Dask clients: an existing scheduler, or a LocalCluster of single-threaded worker processes.

Whether a slide runs on Dask at all is :func:`wsi_nuc.graph.in_process`'s call (a handful of tiles run in
the calling process, without this module: importing ``distributed`` alone takes about a second).
``--scheduler``: ``local`` (or unset, or ``auto``) here means a LocalCluster; anything else but
``in-process`` is the address of an existing scheduler.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from distributed.diagnostics.plugin import WorkerPlugin

from .errors import InputError, quiet_libraries
from .graph import AUTO, IN_PROCESS, LOCAL


# dask.config: no MALLOC_TRIM_THRESHOLD_ in the environment of the worker processes a nanny starts (None unsets
# a key of ``distributed.nanny.pre-spawn-environ``); one set in the user's own environment is still inherited
NO_MALLOC_TRIM = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 2))


def torch_threads(n_workers: int) -> int:
    """Torch threads per worker so that workers together use the machine's cores once."""
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


class TorchThreads(WorkerPlugin):
    """Worker plugin: each LocalCluster worker process gets its share of the cores for torch, and
    reader libraries' warnings are kept off the terminal."""

    name = "wsi-nuc-torch-threads"

    def __init__(self, n: int):
        self.n = int(n)

    def setup(self, worker):
        import signal
        import threading

        import torch

        quiet_libraries()
        if threading.current_thread() is threading.main_thread():   # also for workers a nanny restarts
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        torch.set_num_threads(self.n)


@contextmanager
def _ctrl_c_ignored():
    """SIGINT ignored while worker processes are started (they inherit it; the driver keeps Ctrl-C)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, dashboard: bool = False):
    """Yield a ``distributed.Client``: connected to ``scheduler``, or to a fresh LocalCluster."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker",
                 "distributed.core", "distributed.http.proxy"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A client closed while distributed's BatchedSend waits on a tornado Event with a deadline can leave that
    # wait's TimeoutError unread; asyncio then logs "Future exception was never retrieved" to stderr, three
    # lines before our one error line (seen on a full-disk run against an external scheduler).
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if scheduler == IN_PROCESS:
        raise InputError("--scheduler in-process: this command runs on a Dask cluster (use local, auto or an "
                         "address)")
    if scheduler and scheduler not in (LOCAL, AUTO):
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({e})") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or default_workers()
    # Dask's own sampling profiler wakes every worker every 10 ms (about 1-2 % of a worker's CPU in a py-spy
    # profile of a mosaic run at 0966f26) for a dashboard page this tool does not show by default.
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536; setting it turns off glibc's adaptive
    # mmap threshold, so every tensor above 128 KiB is mapped fresh and page-faulted in on each use: the
    # network of a 640² tile took 1.9x its time (542-574 against 293 ms, forced AVX2, measured for 048ebef).
    # Workers keep glibc's defaults, as a `wsi-nuc run` in one process does (NO_MALLOC_TRIM).
    with _ctrl_c_ignored(), dask.config.set({"distributed.worker.profile.enabled": bool(dashboard),
                                            **NO_MALLOC_TRIM}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    client = Client(cluster)
    client.register_plugin(TorchThreads(torch_threads(n)), name=TorchThreads.name)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
