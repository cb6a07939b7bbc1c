"""Step timing shared by the benchmarks.

Each peer runs in its own process, and the peers take turns in rounds of a few steps, so a busy (shared)
machine slows both alike and neither runtime disturbs the other. Measured on the 2-core CI machine:
after a JAX training step had run in the same process, PyTorch's step there was 10-35% slower than before
it, which made the ratio look better than it is.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import traceback


def measure(builders: dict, rounds: int, steps: int, warmup: int) -> dict:
    """Median seconds per step of each peer.

    builders: name -> (function, args); `function(*args)` runs in a fresh process and returns a callable that
    performs one step (blocking until it is done). Functions and args must be picklable.
    """
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no runtime state shared with this one
    workers = {}
    try:
        for name, (function, args) in builders.items():
            conn, child_conn = ctx.Pipe()
            process = ctx.Process(target=_serve, args=(child_conn, function, args, warmup), daemon=True)
            process.start()
            workers[name] = (process, conn)
        for name, (_, conn) in workers.items():
            _receive(name, conn)  # built and warmed up
        times = {name: [] for name in workers}
        for _ in range(rounds):
            for name, (_, conn) in workers.items():
                conn.send(steps)
                times[name].append(_receive(name, conn))
        return {name: statistics.median(t) for name, t in times.items()}
    finally:
        for process, conn in workers.values():
            try:
                conn.send(None)
            except OSError:
                pass
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


def _receive(name, conn):
    try:
        status, value = conn.recv()
    except EOFError:
        raise RuntimeError(f"benchmark peer {name!r} exited without a result (out of memory?)") from None
    if status == "error":
        raise RuntimeError(f"benchmark peer {name!r} failed:\n{value}")
    return value


def _serve(conn, function, args, warmup):
    """Worker: build the step, warm it up, then time `n` steps per request until told to stop."""
    try:
        run = function(*args)
        for _ in range(warmup):
            run()
        conn.send(("ok", None))
        while (steps := conn.recv()) is not None:
            start = time.perf_counter()
            for _ in range(steps):
                run()
            conn.send(("ok", (time.perf_counter() - start) / steps))
    except BaseException:  # report any failure to the parent instead of leaving it waiting
        conn.send(("error", traceback.format_exc()))
