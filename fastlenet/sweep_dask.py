"""Sweeps on a Dask cluster: each setting is one task (fastlenet.sweep_task) sent to a
scheduler (``tcp://host:port``) or to a LocalCluster of single-threaded worker processes
started here (``local:N``). Needs the ``dask`` extra; imported only for ``--cluster``.

Faults are Dask's to handle: a task whose worker dies is run again on another worker (up
to ``distributed.scheduler.allowed-failures`` times; the nanny restarts the dead worker)
and resumes from the last checkpoint it stored; a task that raises, e.g. having lost the
scheduler, is retried ``RETRIES`` times. fastlenet only submits, listens and writes files.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

from .atomic_write import write_file
from .checkpoint import load_checkpoint
from .errors import ConfigError, FastLeNetError
from .sweep_setting import THREAD_VARIABLES, Setting, run_files, run_result
from .version import __version__

DASK_HINT = 'pip install -e ".[dask]"'
RETRIES = 2
_POLL_SECONDS = 0.2
_ADDRESS = re.compile(r"(tcp|tls|ws|wss)://([^\s/:\[\]]+|\[[0-9A-Fa-f:.]+\])(:\d+)?")


class ClusterError(FastLeNetError):
    """The Dask cluster cannot be reached, has no workers, or was lost."""


def check_address(cluster: str) -> int | None:
    """N for ``local:N``, None for a scheduler address; ConfigError for anything else."""
    local = re.fullmatch(r"local:(\d+)", cluster)
    if local and int(local.group(1)) >= 1:
        return int(local.group(1))
    if not local and _ADDRESS.fullmatch(cluster):
        return None
    raise ConfigError(f"--cluster takes a Dask scheduler's address, tcp://HOST:PORT, or "
                      f"local:N for N worker processes on this machine; got {cluster!r}")


@contextmanager
def connect(cluster: str, timeout: float, log):
    """A ``distributed.Client`` of the cluster ``cluster`` names (see :func:`check_address`)
    with at least one worker, closed (with the LocalCluster it started) on leaving.
    ClusterError, one line, when no scheduler answers or no worker joins in ``timeout``."""
    n_local = check_address(cluster)
    try:
        import distributed
    except ImportError as exc:  # the extra is not installed: one line naming it
        raise ConfigError(f"--cluster needs Dask ({exc}); install it with: {DASK_HINT}") from None
    # a lost worker or scheduler is reported by the sweep, in one line
    quiet = [logging.getLogger(name) for name in ("distributed", "distributed.client")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    local = client = None
    try:
        if n_local is not None:
            try:
                local = distributed.LocalCluster(
                    n_workers=n_local, threads_per_worker=1, processes=True,
                    dashboard_address=":0", silence_logs=logging.CRITICAL,
                    env={name: "1" for name in THREAD_VARIABLES})
            except Exception as exc:
                raise ClusterError(f"cannot start {n_local} Dask worker processes here "
                                   f"({_reason(exc)})") from None
            where = f"a LocalCluster of {n_local} worker processes here, one thread each"
        else:
            where = cluster
        try:
            client = distributed.Client(local or cluster, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach a Dask scheduler at {cluster} within {timeout:g} s "
                               f"({_reason(exc)}); start one with 'dask scheduler' and check the "
                               "address, or wait longer with --cluster-timeout") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise ClusterError(f"the Dask scheduler at {cluster} has no workers after "
                               f"{timeout:g} s; start some with 'dask worker {cluster}', or wait "
                               "longer with --cluster-timeout") from None
        threads = sum(client.nthreads().values())
        log(f"Dask cluster: {where}; {threads} setting{'s' * (threads != 1)} at a time")
        if "dashboard" in client.scheduler_info().get("services", {}):
            log(f"Dask dashboard: {client.dashboard_link}")
        yield client
    finally:
        for opened in (client, local):
            if opened is not None:
                with suppress(Exception):
                    opened.close()
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def run_on_cluster(client, todo: list[Setting], events, timeout: float) -> None:
    """Train every setting of ``todo`` as one Dask task each; write each setting's files
    into its run folder as they arrive; report starts and ends to ``events``
    (``started(index, where)``, ``finished(index, row_fields)``)."""
    from distributed import Event, Queue, Variable, as_completed

    from .sweep_task import train_setting

    token = uuid.uuid4().hex[:10]
    queue = Queue(f"fastlenet-sweep-{token}", client=client)
    stop = Event(f"fastlenet-sweep-{token}-stop", client=client)
    by_index = {setting.index: setting for setting in todo}
    stores, futures, written = {}, {}, {}
    for setting in todo:
        store = stores[setting.index] = Variable(f"fastlenet-sweep-{token}-{setting.index}",
                                                 client=client)
        snapshot = _snapshot(setting)
        written[setting.index] = snapshot["epoch"]
        store.set(snapshot)
        names = {"store": store.name, "queue": queue.name, "stop": stop.name}
        future = client.submit(train_setting, setting.index, _portable(setting.values), names,
                               __version__, key=f"{setting.run_dir.name}-{token}", pure=False,
                               retries=RETRIES)
        futures[future] = setting.index
    finished = set()
    try:
        ready = as_completed(futures)
        no_workers_since = None
        while len(finished) < len(todo):
            # messages first: a task's start is told even when it ended within this poll
            for message in queue.get(batch=True):
                index = message["index"]
                if index in finished:
                    continue
                if message["event"] == "started":
                    events.started(index, f"{message['worker']}" + (
                        f", from the checkpoint of epoch {message['epoch']}" if message["epoch"] else ""))
                elif message["epoch"] > written[index]:
                    snapshot = stores[index].get(timeout=timeout)
                    if snapshot["epoch"] > written[index]:
                        _write_files(by_index[index].run_dir, snapshot["files"])
                        written[index] = snapshot["epoch"]
            for future in ready.next_batch(block=False):
                if future.status == "cancelled":  # not by this sweep: the client lost the scheduler
                    raise ClusterError("lost the Dask scheduler (the client's tasks were cancelled)")
                index = futures[future]
                finished.add(index)
                events.finished(index, _outcome(future, by_index[index]))
            if client.nthreads():
                no_workers_since = None
            elif no_workers_since is None:
                no_workers_since = time.monotonic()
            elif time.monotonic() - no_workers_since > timeout:
                raise ClusterError(f"the Dask cluster has had no workers for {timeout:g} s")
            time.sleep(_POLL_SECONDS)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"lost the Dask scheduler ({type(exc).__name__})") from None
    finally:
        with suppress(Exception):
            if len(finished) < len(todo):
                stop.set()  # tasks still running stop after their next epoch
            client.cancel(list(futures))
            for store in stores.values():
                store.delete()
            queue.close()


def _snapshot(setting: Setting) -> dict:
    """What a setting's task starts from: its run folder's files when they hold a
    checkpoint (a resumed sweep), else nothing."""
    if not setting.resumes:
        return {"epoch": 0, "files": {}}
    return {"epoch": load_checkpoint(setting.run_dir).meta["epoch"],
            "files": run_files(setting.run_dir)}


def _portable(values: dict) -> dict:
    """The setting's options with its data folder made absolute, as workers on this
    machine (or ones that mount the same path) find it."""
    if values.get("data_dir") is None:
        return values
    return {**values, "data_dir": str(Path(values["data_dir"]).expanduser().resolve())}


def _write_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """The files of a run folder from a worker, each written atomically; checkpoints
    first, so a history never runs ahead of the checkpoint it belongs to."""
    for name in sorted(files, key=lambda n: not n.endswith(".npz")):
        write_file(run_dir / name, files[name])


def _outcome(future, setting: Setting) -> dict:
    """The row fields of a finished task: from the run folder it sent back, or why it
    failed when Dask gave up on it."""
    if future.status == "finished":
        result = future.result()
        _write_files(setting.run_dir, result["files"])
        return run_result(setting.run_dir, result["returncode"], result["wall_seconds"])
    exc = future.exception()
    if type(exc).__name__ == "KilledWorker":
        reason = ("its worker died each time Dask ran it (KilledWorker); see the workers' "
                  "logs, e.g. for a lack of memory")
    else:
        reason = f"{type(exc).__name__}: {_reason(exc)}"
    return {"status": f"failed: {reason}"}
