"""Lesson cells as Ray tasks: a laptop, a cluster, Kubernetes or Slurm run the same grid as the local executor.

Each cell is one task reserving the CPUs it trains with (`threads`). A task decides for itself whether its cell is
new, half done or done, from the cell's files, so a retried task (Ray reruns a task whose worker died, up to
MAX_RETRIES times) resumes from the cell's last checkpoint instead of starting over.

Where the files go:
- shipped (the default): the driver puts each dataset into Ray's object store once; a task unpacks it on its node
  (cached per node), trains the cell in a node-local copy of the lesson directory (base models a lesson shares
  between cells are made there once per node) and returns the finished cell folder, which the driver writes into
  the lesson directory. Nothing needs to be shared; a cell whose node died starts again elsewhere.
- shared (`--shared-fs`): tasks read the data and write the cells where the driver would, so the lesson
  directory must be on a filesystem every node sees (on one machine it always is).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

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


def pack(directory: Path) -> bytes:
    """A folder's files as an uncompressed tar, paths relative to it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def unpack(blob: bytes, target: Path) -> None:
    """Put a packed folder at `target`, whole or not at all (tar's "data" filter refuses paths that would
    leave the folder, links out of it and device files)."""
    from gptlab.io import replace_dir, temp_dir_beside

    with temp_dir_beside(target) as tmp:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
            tar.extractall(tmp, filter="data")
        replace_dir(tmp, target)


def node_root(out: Path) -> Path:
    """This node's copy of a lesson directory (one per driver-side lesson directory, kept between tasks)."""
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "gptlab-ray" / key


def run_shipped_cell_task(args: tuple, relative: str, data_key: str, data_blob: bytes, root: str, threads: int,
                          state_of: Callable, execute: Callable) -> tuple[dict[str, Any], bytes]:
    """One cell on a node that shares nothing with the driver: the data unpacked once per node, the cell run in
    the node's copy of the lesson directory, the finished cell folder returned packed."""
    import torch

    torch.set_num_threads(threads)
    lesson, cell, _, _, _, keep = args
    data_dir = Path(root) / "data" / data_key
    if not (data_dir / "meta.json").is_file():
        try:
            unpack(data_blob, data_dir)
        except OSError:  # another task on this node unpacked it at the same moment
            if not (data_dir / "meta.json").is_file():
                raise
    directory = Path(root) / relative
    state, _ = state_of(cell, directory)
    if state == "done":
        summary = json.loads((directory / "summary.json").read_text())
    else:
        summary = execute(lesson, cell, directory, data_dir, state == "partial", keep)
    return summary, pack(directory)


def _point_at_local_data(directory: Path, data_dir: Path) -> None:
    """A shipped cell's run.json names the data folder it trained from on its node: name the driver's copy."""
    from gptlab.io import atomic_write_json

    path = directory / "run.json"
    if path.is_file():
        info = json.loads(path.read_text())
        atomic_write_json(path, {**info, "data": str(data_dir.resolve())})


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Ray connected for the block: to the cluster at `address`, or a local one started here (and stopped on the
    way out). A session already open (a caller's, or a test's cluster) is used as it is."""
    try:
        import ray
    except ImportError:
        raise GptlabError(f"--executor ray needs Ray, which is not installed here; {INSTALL}") from None
    if ray.is_initialized():
        yield
        return
    if address and ":" in address and "://" not in address:  # fail in seconds, not after Ray's long retries
        import socket

        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise GptlabError(f"could not reach a Ray cluster at {address!r} ({e}); start one with `ray start "
                              "--head`, or leave --address out for a local one") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if address else {"num_cpus": len(os.sched_getaffinity(0))}))
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise GptlabError(f"could not reach a Ray cluster at {address!r} ({str(e).splitlines()[0][:200]}); "
                          "start one with `ray start --head`, or leave --address out for a local one") from None
    try:
        yield
    finally:
        ray.shutdown()


def run_on_ray(todo: list, args_of: Callable, threads: int, address: str | None, finished: Callable, failures: list,
               state_of: Callable, execute: Callable, out: Path | None = None, shared: bool = True) -> None:
    """Run the `todo` cells as Ray tasks; `shared=False` ships data and cell files through Ray (see above)."""
    gpus = 1 if any(c.config.train.device == "cuda" for c in todo) else 0  # a cell on cuda holds one GPU
    with ray_session(address):
        import ray

        if shared:
            task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=MAX_RETRIES)(run_cell_task)
            cells = {task.remote(args_of(c), threads, state_of, execute): c for c in todo}
        else:
            task = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=MAX_RETRIES)(run_shipped_cell_task)
            blobs: dict[str, Any] = {}  # dataset key -> its packed folder in the object store, put once
            cells = {}
            for c in todo:
                args = args_of(c)
                key = c.condition.dataset.key
                if key not in blobs:
                    blobs[key] = ray.put(pack(args[3]))
                relative = str(Path(args[2]).relative_to(out))
                cells[task.remote(args, relative, key, blobs[key], str(node_root(out)), threads, state_of,
                                  execute)] = c
        pending = list(cells)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            c = cells[done[0]]
            try:
                result = ray.get(done[0])
                if not shared:  # the finished cell folder, written where the local executor would write it
                    result, blob = result
                    args = args_of(c)
                    unpack(blob, Path(args[2]))
                    _point_at_local_data(Path(args[2]), Path(args[3]))
                finished(c, result)
            except Exception as e:  # a cell's own one-line error comes back wrapped in Ray's task error
                cause = getattr(e, "cause", e)
                if not isinstance(cause, GptlabError):
                    raise
                failures.append((c.name, str(cause)))
                finished(c, None)
