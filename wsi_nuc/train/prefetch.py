"""Training batches drawn from ``(seed, step)`` alone, inline or prepared ahead by a worker process.

The batch of a step does not depend on what came before it, so a resumed run, an inline run and a
prefetching run see the same batches. The worker (forked on Linux, so it shares the loaded images without
copying them) runs NumPy/SciPy only: cropping, augmentation and targets; the main process turns its arrays
into tensors.
"""
from __future__ import annotations

import multiprocessing as mp
import queue

import numpy as np

from .sources import make_batch


def batch_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step)])


def draw(sources, size: int, n: int, aug_cfg, seed: int, step: int):
    """The (images, targets) arrays of ``step``."""
    return make_batch(sources, size, n, aug_cfg, batch_rng(seed, step))


def _worker(sources, size, n, aug_cfg, seed, start, stop, q) -> None:
    try:
        for step in range(start, stop):
            q.put((step, draw(sources, size, n, aug_cfg, seed, step)))
    except BaseException as e:  # noqa: BLE001 - handed to the trainer, which raises it
        q.put((-1, f"{type(e).__name__}: {e}"))


class Batches:
    """``get(step)`` -> (images, targets) arrays; ``ahead`` > 0 prepares them in a worker process."""

    def __init__(self, sources, size: int, n: int, aug_cfg, seed: int, start: int, stop: int, ahead: int):
        self.args = (sources, size, n, aug_cfg, seed)
        self.proc = None
        if ahead > 0 and start < stop:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self.q = ctx.Queue(maxsize=ahead)
            self.proc = ctx.Process(target=_worker, args=(*self.args, start, stop, self.q), daemon=True)
            self.proc.start()

    def get(self, step: int):
        if self.proc is None:
            return draw(*self.args, step)
        while True:
            try:
                got, item = self.q.get(timeout=5)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"batch worker died (exit code {self.proc.exitcode})") from None
                continue
            if got == -1:
                raise RuntimeError(f"batch worker failed: {item}")
            if got != step:
                raise RuntimeError(f"batch worker out of step: got {got}, wanted {step}")
            return item

    def worker_cpu_s(self) -> float:
        """CPU seconds the worker has used so far (its last reading once it has ended)."""
        if self.proc is not None and self.proc.is_alive():
            try:
                import psutil

                t = psutil.Process(self.proc.pid).cpu_times()
                self._cpu = float(t.user + t.system)
            except Exception:  # noqa: BLE001 - psutil missing or the worker just ended: keep the last
                pass
        return getattr(self, "_cpu", 0.0)

    def close(self) -> None:
        self.worker_cpu_s()
        if self.proc is not None and self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
