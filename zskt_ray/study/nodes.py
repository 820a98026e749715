"""Work the driver sends to chosen nodes of the Ray cluster before and after the trials.

- **The teacher where the GPUs are** (:func:`train_teacher_remotely`): a missing teacher is trained
  by a Ray task with its own resources (``teacher.resources``: by default one GPU when the cluster
  has GPUs or the study's trials ask for a GPU share, else the CPUs of one trial), not in the
  driver. The task streams its progress lines and, at the end, the teacher file's bytes; the
  driver writes the file into its own teacher store (so no shared file system is needed), under
  the store's lock (:func:`~zskt_ray.teacher.ensure_teacher`). The node, host and device it
  trained on are in the file's metadata (``trained_on``) and in the log.
- **The data set on every node** (:func:`prepare_data`): before any trial, one
  :func:`~zskt_ray.data.prepare_dataset` task per alive node that can run a trial, pinned to it
  (``NodeAffinitySchedulingStrategy``), when the data root is node-local; one task when the study
  declares it shared (``data_shared``, default ``storage.shared``). The data root's file lock
  makes tasks that share a root wait for the first one's download. Trials then find the data set
  ready (and only a node that joins later, from an autoscaler, prepares it in its first trial).
- **Scratch folders** (:func:`clean_scratch`): a trial's temporary checkpoint and state folders
  live in the study's scratch folder of its node (:func:`~zskt_ray.paths.study_scratch_dir`); a
  worker killed mid-report leaves one behind. One task per alive node removes them when a run of
  the study starts and when it ends (no trial of the study runs then: the study's lock).

In a local Ray (one node) the same tasks run on this machine. The teacher, there, is trained by
the driver itself, before Ray starts (:mod:`.runner`).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .. import names
from ..config import TeacherConfig, from_dict, to_dict
from ..data import has_files, prepare_dataset
from ..paths import study_scratch_dir
from ..teacher import train_teacher

Log = Callable[[str], None]

# Seconds between "still waiting" lines while the driver waits for the teacher's task.
HEARTBEAT_S = 60.0


def here() -> dict[str, str]:
    """Where this Ray worker runs: node id and IP, host name."""
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),
        "hostname": socket.gethostname(),
    }


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes (``ray.nodes()`` entries), in a stable order."""
    return sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"])


def fits(node: dict[str, Any], cpus: float, gpus: float) -> bool:
    """True when ``node`` declares at least ``cpus`` CPUs and ``gpus`` GPUs."""
    have = node.get("Resources", {})
    return have.get("CPU", 0.0) >= cpus and have.get("GPU", 0.0) >= gpus


def _on_node(function: Callable[..., Any], node_id: str) -> Any:
    """``function`` as a Ray task that reserves nothing and runs on node ``node_id`` only."""
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return ray.remote(function).options(num_cpus=0, scheduling_strategy=strategy)


# ------------------------------------------------------------------ the teacher


@dataclasses.dataclass(frozen=True)
class TeacherResources:
    """What the teacher's task reserves."""

    cpus: float
    gpus: float

    def label(self) -> str:
        return f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}, {self.gpus:g} GPU" + (
            "s" if self.gpus != 1 else ""
        )


def teacher_resources(
    cpus: float | None, gpus: float | None, trial_cpus: float, trial_gpus: float
) -> TeacherResources:
    """``teacher.resources`` with its defaults: one GPU when the cluster has one or the study's
    trials ask for a GPU share (a cluster whose GPU nodes an autoscaler adds has none at first),
    else none; the CPUs of one trial."""
    if gpus is None:
        has_gpu = ray.cluster_resources().get("GPU", 0.0) >= 1
        gpus = 1.0 if has_gpu or trial_gpus > 0 else 0.0
    return TeacherResources(cpus if cpus is not None else trial_cpus, gpus)


def _train_here(cfg_values: dict[str, Any], threads: int) -> Iterator[tuple[str, Any]]:
    """The teacher's task (a Ray generator task): where it runs, progress lines, the file's bytes.

    Training runs in a thread so that its log lines can be yielded while it runs.
    """
    import torch

    from ..utils import resolve_device
    from .records import device_note

    cfg = from_dict(TeacherConfig, cfg_values)
    where = here()
    device = resolve_device(cfg.device)
    note = device_note(cfg.device, device)
    trained_on = {**where, "device": str(device), **({"device_note": note} if note else {})}
    yield "node", trained_on
    lines: queue.Queue[str | None] = queue.Queue()
    failed: list[BaseException] = []
    with tempfile.TemporaryDirectory(prefix="zskt-teacher-") as d:
        path = Path(d, "teacher.pt")

        def train() -> None:
            try:
                torch.set_num_threads(threads)
                # the file goes to the driver, not this node's temp folder
                say = lambda line: lines.put(line.replace(str(path), "the driver's store"))  # noqa: E731
                train_teacher(cfg, path, log=say, trained_on=trained_on)
            except BaseException as e:  # noqa: BLE001 - raised again by the task below
                failed.append(e)
            finally:
                lines.put(None)

        worker = threading.Thread(target=train, name="zskt-teacher", daemon=True)
        worker.start()
        while (line := lines.get()) is not None:
            yield "log", line
        worker.join()
        if failed:
            raise failed[0]
        yield "file", path.read_bytes()


def train_teacher_remotely(
    cfg: TeacherConfig, path: Path, log: Log | None, *, resources: TeacherResources
) -> Path:
    """Train ``cfg`` as a Ray task that reserves ``resources`` and write the result to ``path``
    (atomically); the driver logs where it runs and its progress. A ``train`` for
    :func:`~zskt_ray.teacher.ensure_teacher`, which holds the store's lock around it."""
    say = log or (lambda _line: None)
    device = "cuda" if resources.gpus > 0 else "cpu"
    cfg = dataclasses.replace(cfg, device=device)
    if not any(fits(n, resources.cpus, resources.gpus) for n in alive_nodes()):
        say(
            f"teacher: no node has {resources.label()} free or declared now; waiting for one "
            "(an autoscaler adds it, or set teacher.resources)"
        )
    say(f"teacher {cfg.arch} on {cfg.dataset}: training it as a Ray task ({resources.label()})")
    task = ray.remote(_train_here).options(
        num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0
    )
    stream = task.remote(to_dict(cfg), max(1, int(resources.cpus)))
    t0 = time.monotonic()
    blob: bytes | None = None
    started = False
    try:
        while blob is None:
            ready, _ = ray.wait([stream], timeout=HEARTBEAT_S)
            if not ready:
                what = "still training" if started else "waiting for a node to start the task"
                say(f"teacher: {what} ({time.monotonic() - t0:.0f} s)")
                continue
            kind, value = ray.get(next(stream))
            started = True
            if kind == "node":
                note = f"; {value['device_note']}" if value.get("device_note") else ""
                say(
                    f"teacher: training on node {value['node_id']} ({value['node_ip']}, "
                    f"{value['hostname']}), device {value['device']}{note}"
                )
            elif kind == "log":
                say(value)
            else:
                blob = value
    except BaseException:
        ray.cancel(stream, force=True)
        raise
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(blob)
    os.replace(tmp, path)  # whole or absent
    say(f"teacher: written to {path} ({time.monotonic() - t0:.0f} s)")
    return path


# ------------------------------------------------------------------ the data set


def _prepare_here(name: str, root: str, download: bool) -> dict[str, Any]:
    t0 = time.monotonic()
    prepared = prepare_dataset(name, root, download=download)
    return {
        **here(),
        "downloaded": prepared.downloaded,
        "waited_s": prepared.waited_s,
        "seconds": time.monotonic() - t0,
    }


def prepare_data(
    name: str,
    root: str,
    download: bool,
    shared: bool,
    trial_cpus: float,
    trial_gpus: float,
    log: Log,
) -> list[dict[str, Any]]:
    """Make data set ``name`` readable under ``root`` on every node that can run a trial (one task
    per node; a single one when ``shared``); what each task did. Nothing for in-memory data
    sets."""
    if not has_files(name):
        return []
    nodes = [n for n in alive_nodes() if fits(n, trial_cpus, trial_gpus)]
    if not nodes:
        log(
            f"data: no node can run a trial yet; {name} is prepared by the first trial on each "
            "node that joins"
        )
        return []
    targets = nodes[:1] if shared else nodes
    refs = [_on_node(_prepare_here, n["NodeID"]).remote(name, root, download) for n in targets]
    done = ray.get(refs)
    for r in done:
        what = "downloaded" if r["downloaded"] else "ready"
        waited = r["waited_s"]
        waited = f", waited {waited:.0f} s for another preparation" if waited >= 0.5 else ""
        log(f"data: {name} under {root} {what} on node {r['node_id']} ({r['node_ip']}){waited}")
    scope = "a shared root, prepared once" if shared else f"{len(targets)} node(s)"
    log(f"data: {name} prepared before the trials ({scope}; data_shared: {str(shared).lower()})")
    return done


# ------------------------------------------------------------------ scratch folders


def _clean_here(name: str, study_dir: str) -> dict[str, Any]:
    folder = study_scratch_dir(name, study_dir)
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(names.SCRATCH_PREFIXES):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
    return {**here(), "folder": str(folder), "removed": removed}


def clean_scratch(name: str, study_dir: str, log: Log, timeout: float = 120.0) -> int:
    """Remove, on every alive node, the temporary folders trials of this study left in its
    scratch folder; the number removed. Best effort: a node that does not answer in ``timeout``
    seconds is left for the next run."""
    refs = [_on_node(_clean_here, n["NodeID"]).remote(name, study_dir) for n in alive_nodes()]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    total = 0
    for ref in ready:
        try:
            r = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a node that went away
            log(f"scratch: a node could not be cleaned ({type(e).__name__})")
            continue
        if r["removed"]:
            total += len(r["removed"])
            log(
                f"scratch: removed {len(r['removed'])} leftover folder(s) on node "
                f"{r['node_id']} ({r['folder']})"
            )
    return total
