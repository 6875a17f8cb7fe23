"""Training batches drawn from ``(seed, step)`` alone, inline or prepared ahead by worker processes.

The batch of a step does not depend on what came before it, so a resumed run, an inline run and a
prefetching run see the same batches. With ``workers`` > 0, worker k prepares the steps ``step % workers ==
k``, two ahead each (a GPU needs several to be fed; a 2-core CPU one). Workers are forked on Linux, so they
share the loaded images without copying them, and run NumPy/SciPy only: cropping, augmentation and
targets; the main process turns their arrays into tensors.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal

import numpy as np

from .sources import make_batch


def batch_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step)])


def draw(sources, size: int, n: int, aug_cfg, seed: int, step: int):
    """The (images, targets) arrays of ``step``."""
    return make_batch(sources, size, n, aug_cfg, batch_rng(seed, step))


def _worker(sources, size, n, aug_cfg, seed, start, stop, every, q, parent: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)   # the trainer's handler is not ours: terminate() ends us
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C reaches the whole group: the trainer handles it
    try:
        for step in range(start, stop, every):
            item = (step, draw(sources, size, n, aug_cfg, seed, step))
            while True:   # a trainer killed without closing us (SIGKILL, SIGTERM): end with it
                try:
                    q.put(item, timeout=2)
                    break
                except queue.Full:
                    if os.getppid() != parent:
                        return
    except Exception as e:  # noqa: BLE001 - handed to the trainer, which raises it
        try:
            q.put((-1, f"{type(e).__name__}: {e}"), timeout=10)
        except queue.Full:
            pass


class Batches:
    """``get(step)`` -> (images, targets) arrays; ``workers`` > 0 prepares them in worker processes."""

    def __init__(self, sources, size: int, n: int, aug_cfg, seed: int, start: int, stop: int, workers: int):
        self.args = (sources, size, n, aug_cfg, seed)
        self.procs, self.queues, self._cpu = [], [], {}
        workers = max(0, min(int(workers), stop - start))
        if workers:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            for k in range(workers):
                q = ctx.Queue(maxsize=2)
                p = ctx.Process(target=_worker, args=(*self.args, start + k, stop, workers, q, os.getpid()),
                                daemon=True)
                p.start()
                self.procs.append(p)
                self.queues.append(q)
        self.start = start

    def get(self, step: int):
        if not self.procs:
            return draw(*self.args, step)
        k = (step - self.start) % len(self.procs)
        while True:
            try:
                got, item = self.queues[k].get(timeout=5)
            except queue.Empty:
                if not self.procs[k].is_alive():
                    raise RuntimeError(f"batch worker died (exit code {self.procs[k].exitcode})") from None
                continue
            if got == -1:
                raise RuntimeError(f"batch worker failed: {item}")
            if got != step:
                raise RuntimeError(f"batch worker out of step: got {got}, wanted {step}")
            return item

    def worker_cpu_s(self) -> float:
        """CPU seconds the workers have used so far (each one's last reading once it has ended)."""
        for p in self.procs:
            if p.is_alive():
                try:
                    import psutil

                    t = psutil.Process(p.pid).cpu_times()
                    self._cpu[p.pid] = float(t.user + t.system)
                except Exception:  # noqa: BLE001 - psutil missing or the worker just ended: keep the last
                    pass
        return sum(self._cpu.values())

    def close(self) -> None:
        self.worker_cpu_s()
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
