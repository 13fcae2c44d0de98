"""A real coordinator stepped in the test process, with a real store file.

``coordinator``: real fork server and workers, for tests that must reach inside
the loop (its injectable wall clock, its timer heap) while tasks still run in
real forked processes. ``stub_coordinator``: the same loop with the stub
backend (runs execute in-process) and a monotonic clock the test moves, for
tests of the loop's own decisions without processes. Everything is torn down
at the end: workers, fork server, resource tracker, segment, store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle
from polling import poll_until

from taskmill import protocol
from taskmill.config import CoordinatorConfig
from taskmill.coordinator.backends.local import LocalProcessBackend
from taskmill.coordinator.backends.stub import StubBackend
from taskmill.coordinator.loop import Coordinator
from taskmill.coordinator.routes import Kind, route
from taskmill.coordinator.wire import check_items
from taskmill.payload import canonical_json, dedup_key
from taskmill.records import RetryPolicy, TaskHistoryRecord
from taskmill.shm import SharedState
from taskmill.store import Store
from taskmill.workers.pool import WorkerPool


def item(task_type: str, payload: dict[str, Any], *, timeout: float | None = None, max_retries: int = 3,
         retry: RetryPolicy | None = None, key: str | None = None) -> tuple:
    """A resolved submission as the host would send it."""
    text = canonical_json(payload)
    return tuple(protocol.SubmitItem(
        task_type=task_type, domain=task_type.split("::")[0], key=dedup_key(task_type, key or text), label=task_type,
        priority=128, payload=text, max_retries=max_retries,
        retry=None if retry is None else json.dumps(retry.to_dict()), timeout=timeout, cpus=1.0, memory=0,
        io_read=0, io_write=0, io_rx=0, io_tx=0, group=None, tags=None, duplicate="skip"))


class Harness:
    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord

    def submit(self, *items: tuple) -> list[int]:
        c = self.coord
        out = c.lc.submit(check_items(list(items)), c.mono(), c.clock())
        c.commit()
        return [o[1] for o in out]

    def step_until(self, cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Step the loop until ``cond()`` is truthy."""
        return poll_until(cond, timeout, what=what, between=self.coord.step)

    def history(self, task_id: int) -> TaskHistoryRecord | None:
        self.coord.commit()
        return self.coord.store.history_row(task_id)

    def finished(self, task_id: int, timeout: float = 30.0) -> TaskHistoryRecord:
        self.step_until(lambda: task_id not in self.coord.lc.tasks, timeout, f"task {task_id} to finish")
        row = self.history(task_id)
        assert row is not None
        return row


@contextmanager
def coordinator(tmp_path: Any, tasks: dict[str, Callable[..., Any]], *, clock: Callable[[], float] = time.time,
                workers: int = 2) -> Iterator[Harness]:
    """A started coordinator whose loop the test steps (``Harness.step_until``)."""
    registry = tmp_path / "registry.pkl"
    registry.write_bytes(cloudpickle.dumps({"tasks": tasks, "domain_state": {}, "global_state": {}}))
    shm = SharedState(workers)
    config = CoordinatorConfig(store_path=str(tmp_path / "store.duckdb"), max_concurrency=workers, poll_interval=0.05)
    backend = LocalProcessBackend(config, shm, str(registry))  # fork server before DuckDB, as in the real process
    store = Store(str(tmp_path / "store.duckdb"))
    coord = Coordinator(config, store=store, shm=shm, backend=backend, clock=clock)
    try:
        coord.start_workers()
        coord.recover()
        yield Harness(coord)
    finally:
        _shut_down(coord, backend, store, shm)
        WorkerPool.stop_resource_tracker()
        os.environ.pop("TASKMILL_REGISTRY", None)


class FakeClock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class StubHarness(Harness):
    def __init__(self, coord: Coordinator, backend: StubBackend, mono: FakeClock) -> None:
        super().__init__(coord)
        self.backend = backend
        self.mono = mono

    def advance(self, seconds: float) -> None:
        self.mono.now += seconds

    def call(self, name: str, *args: Any) -> Any:
        """A call as a client makes it (``routes``), its change committed before it returns."""
        c = self.coord
        r = route(name, args)
        c.runs.take_back()
        value = r.fn(c.control, *args)
        if r.kind is Kind.CHANGE:
            c.commit()
        return value


@contextmanager
def stub_coordinator(tmp_path: Any, tasks: dict[str, Callable[..., Any]], *, workers: int = 2,
                     config: CoordinatorConfig | None = None) -> Iterator[StubHarness]:
    """A started coordinator with the stub backend (no worker process) and a fake monotonic clock."""
    config = config or CoordinatorConfig(store_path=str(tmp_path / "store.duckdb"), max_concurrency=workers,
                                         poll_interval=0.01)
    shm = SharedState(workers)
    backend = StubBackend.with_functions(config, tasks)
    store = Store(str(tmp_path / "store.duckdb"))
    mono = FakeClock()
    coord = Coordinator(config, store=store, shm=shm, backend=backend, mono=mono)
    try:
        coord.start_workers()
        coord.recover()
        yield StubHarness(coord, backend, mono)
    finally:
        _shut_down(coord, backend, store, shm)


def _shut_down(coord: Coordinator, backend: Any, store: Store, shm: SharedState) -> None:
    """Step the loop through its shutdown (bounded), then release everything it held."""
    try:
        if not coord.exited:
            coord._begin_shutdown(None)
            deadline = time.monotonic() + 30
            while not coord.exited and time.monotonic() < deadline:
                coord.step()
    finally:
        backend.close()
        coord.readers.close()
        coord.writer.close()
        store.close()
        shm.close()
