"""Run a function on several CPU processes with the gloo backend (for tests).

Usage::

    def worker(rank, world_size, payload):   # must be a module-level function
        ...                                  # torch.distributed is initialised here
        return something_picklable

    results = run_distributed(worker, world_size=2, payload=...)
    # results[r] is what rank r returned

Exceptions raised in a worker are re-raised in the parent with the worker's traceback.
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, payload, out_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    result = {"ok": True}
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result["value"] = fn(rank, world_size, payload)
    except BaseException:  # report anything to the parent
        result = {"ok": False, "error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
        pickle.dump(result, fh)
    if dist.is_initialized():
        try:
            dist.barrier()
            dist.destroy_process_group()
        except Exception:  # teardown noise must not mask the result already written
            pass


def run_distributed(fn, world_size: int = 2, payload=None, timeout: float = 300.0):
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            _entry,
            args=(world_size, _free_port(), fn, payload, out_dir),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        exit_error = None
        try:
            while not ctx.join(timeout=timeout):
                pass
        except mp.ProcessExitedException as exc:
            # gloo occasionally aborts during teardown after the result was written;
            # the result files decide, the exit code only explains a missing file.
            exit_error = exc
        results = []
        for r in range(world_size):
            path = os.path.join(out_dir, f"rank{r}.pkl")
            if not os.path.exists(path):
                raise RuntimeError(f"rank {r} wrote no result (exit: {exit_error})")
            with open(path, "rb") as fh:
                res = pickle.load(fh)
            if not res["ok"]:
                raise RuntimeError(f"rank {r} failed:\n{res['error']}")
            results.append(res["value"])
        return results
