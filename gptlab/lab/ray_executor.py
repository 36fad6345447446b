"""Lesson cells as Ray tasks: a laptop, a cluster, Kubernetes or Slurm run the same grid as the local executor.

Each cell is one task reserving the CPUs it trains with (`threads`). A task decides for itself whether its cell is
new, half done or done, from the cell's files, so a retried task (Ray reruns a task whose worker died, up to
MAX_RETRIES times) resumes from the cell's last checkpoint instead of starting over. The cell files are written
where the driver would write them: the lesson directory must be on a filesystem the workers share (on one
machine it always is).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from gptlab.errors import GptlabError

MAX_RETRIES = 3
INSTALL = "pip install 'ray==2.60.0' (the README's install commands include it)"


def run_cell_task(args: tuple, threads: int, state_of: Callable, execute: Callable) -> dict[str, Any]:
    """One cell on a Ray worker (the body of the remote task); `state_of` and `execute` are the runner's
    cell_state and execute_cell."""
    import torch

    torch.set_num_threads(threads)
    lesson, cell, directory, data_dir, _, keep = args
    state, _ = state_of(cell, directory)
    if state == "done":  # finished by an earlier attempt whose result never reached the driver
        return json.loads((directory / "summary.json").read_text())
    return execute(lesson, cell, directory, data_dir, state == "partial", keep)


def run_on_ray(todo: list, args_of: Callable, threads: int, address: str | None, finished: Callable, failures: list,
               state_of: Callable, execute: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise GptlabError(f"--executor ray needs Ray, which is not installed here; {INSTALL}") from None
    if address and ":" in address and "://" not in address:  # fail in seconds, not after Ray's long retries
        import socket

        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise GptlabError(f"could not reach a Ray cluster at {address!r} ({e}); start one with `ray start "
                              "--head`, or leave --address out for a local one") from None
    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     **({} if address else {"num_cpus": len(os.sched_getaffinity(0))}))
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise GptlabError(f"could not reach a Ray cluster at {address!r} ({str(e).splitlines()[0][:200]}); "
                              "start one with `ray start --head`, or leave --address out for a local one") from None
    try:
        task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(run_cell_task)
        cells = {task.remote(args_of(c), threads, state_of, execute): c for c in todo}
        pending = list(cells)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            c = cells[done[0]]
            try:
                finished(c, ray.get(done[0]))
            except Exception as e:  # a cell's own one-line error comes back wrapped in Ray's task error
                cause = getattr(e, "cause", e)
                if not isinstance(cause, GptlabError):
                    raise
                failures.append((c.name, str(cause)))
                finished(c, None)
    finally:
        if started_here:
            ray.shutdown()
