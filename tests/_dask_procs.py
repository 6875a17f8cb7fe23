"""A real `dask scheduler` and N single-threaded `dask worker` processes on 127.0.0.1, for the cohort and
reliability tests (shared so the two fixtures cannot drift)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_dask(d: Path, n_workers: int = 1):
    """Yield the scheduler address once ``n_workers`` workers are connected; stop them all on exit."""
    from distributed import Client

    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs, logs = [], []

    def start(args, name):
        logs.append(open(d / f"{name}.log", "w"))
        procs.append(subprocess.Popen([str(BIN / "dask"), *args], stdout=logs[-1], stderr=subprocess.STDOUT,
                                      env=env, cwd=d))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"], "scheduler")
        for i in range(n_workers):
            start(["worker", addr, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                   "--no-dashboard", "--memory-limit", "0", "--name", f"w{i}",
                   "--local-directory", str(d / f"w{i}")], f"worker{i}")
        with Client(addr, timeout="60s") as client:
            client.wait_for_workers(n_workers, timeout=90)
        yield addr
    finally:
        for p in procs[::-1]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs[::-1]:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
