"""Recovery as plain code: a lifecycle writes a real store, a fresh one recovers from it.

No processes: ``Lifecycle`` and ``Store`` only. Covers the cold tail of a deep queue
(``coordinator/cold.py``: what is loaded at start, the order chunks come in, tasks
loaded early by key or id, counts) and a stored row whose edges say it must wait.
"""

from __future__ import annotations

import time
from typing import Any

from taskmill import protocol
from taskmill.coordinator.core.lifecycle import Lifecycle
from taskmill.store import Store


def item(key: str, priority: int = 128, depends_on: list[int] | None = None, domain: str = "a") -> protocol.SubmitItem:
    return protocol.SubmitItem(
        f"{domain}::t", domain, f"{domain}:{key}", key, priority, "{}", 1, None, None, 1.0, 0, 0, 0, 0, 0, None, None,
        "skip", None, "submission", None, depends_on, "cancel", None, True, None)


def written(tmp_path: Any, items: list[protocol.SubmitItem]) -> tuple[Store, list[int]]:
    store = Store(str(tmp_path / "store.duckdb"))
    lc = Lifecycle()
    out = lc.submit(items, time.monotonic(), time.time())
    store.apply(lc.fx.take_writes()[0])
    return store, [o[1] for o in out]


def recovered(store: Store, hot: int | None) -> Lifecycle:
    rec = store.recover(hot=hot)
    lc = Lifecycle()
    lc.recover(rec.next_id, rec.tasks, rec.edges, rec.scopes, time.time(), time.monotonic(), {}, rec.cold, rec.max_id)
    lc.check()
    return lc


def drain(lc: Lifecycle, store: Store) -> list[int]:
    """Pick every task in order, as the loop does (a domain whose head may be cold loads a chunk)."""
    order = []
    while True:
        for d in lc.cold_needed():
            tail = lc.cold[d]
            lc.warm(d, store.cold_rows(d, tail.after, lc.cold_max_id, 3), 3, time.monotonic(), time.time())
        e = lc.pick(time.monotonic(), time.time())
        if e is None:
            return order
        lc.started(e, object(), time.monotonic(), time.time())
        lc.run_ended(e)
        lc.completed(e, None, None, time.monotonic(), time.time())  # type: ignore[arg-type]
        store.apply(lc.fx.take_writes()[0])
        order.append(e.id)


def test_a_deep_queue_loads_its_head_and_the_rest_in_exact_order(tmp_path: Any) -> None:
    prios = [128, 64, 192, 64, 128, 0, 255, 128, 64, 192, 128, 0]
    store, ids = written(tmp_path, [item(f"k{i}", p) for i, p in enumerate(prios)]
                         + [item("b0", domain="b"), item("b1", domain="b")])
    full = sorted(range(len(prios)), key=lambda i: (prios[i], ids[i]))
    lc = recovered(store, hot=4)
    assert len([t for t in lc.tasks.values() if t.domain == "a"]) == 4
    assert lc.cold_count("a") == len(prios) - 4 and lc.cold_count("b") == 0  # "b" is shallow: loaded whole
    assert not lc.idle
    order = drain(lc, store)
    assert [i for i in order if i in ids[: len(prios)]] == [ids[i] for i in full]
    assert lc.cold == {} and lc.idle
    lc.check()


def test_tasks_named_by_key_or_id_are_loaded_early_and_counted_once(tmp_path: Any) -> None:
    store, ids = written(tmp_path, [item(f"k{i}") for i in range(10)])
    lc = recovered(store, hot=2)
    assert lc.cold_count() == 8
    lc.promote(store.plain_rows([ids[7]], ["a:k9"], lc.cold_max_id), time.monotonic(), time.time())
    lc.check()
    assert ids[7] in lc.tasks and ids[9] in lc.tasks and lc.cold_count() == 6
    # a duplicate of a promoted key is a duplicate of that task; a dependency on a cold id is now known
    (dup,) = lc.submit([item("k9")], time.monotonic(), time.time())
    assert dup == ("d", ids[9])
    order = drain(lc, store)
    assert order == ids, "the promoted tasks keep their place in the order"
    assert lc.cold == {}


def test_a_stored_pending_row_with_live_edges_is_recovered_blocked(tmp_path: Any) -> None:
    store, ids = written(tmp_path, [item("p")])
    lc = Lifecycle()
    rec = store.recover()
    lc.recover(rec.next_id, rec.tasks, rec.edges, rec.scopes, time.time(), time.monotonic())
    (out,) = lc.submit([item("d", depends_on=[ids[0]])], time.monotonic(), time.time())
    store.apply(lc.fx.take_writes()[0])
    store.con.execute("UPDATE tasks SET status = 'pending' WHERE id = ?", [out[1]])  # edges say otherwise
    lc2 = recovered(store, hot=None)
    assert lc2.tasks[out[1]].status == "blocked"
    assert drain(lc2, store) == [ids[0], out[1]]


def test_a_task_loaded_early_and_ended_is_not_loaded_again_before_the_store_shows_it(tmp_path: Any) -> None:
    store, ids = written(tmp_path, [item(f"k{i}") for i in range(8)])
    lc = recovered(store, hot=2)
    lc.promote(store.plain_rows([ids[3]], [], lc.cold_max_id), time.monotonic(), time.time())
    assert lc.cancel(ids[3], None, time.monotonic(), time.time())
    pending_write = lc.fx.take_writes()[0]  # its history row is not in the store yet
    tail = lc.cold["a"]
    lc.warm("a", store.cold_rows("a", tail.after, lc.cold_max_id, 10), 10, time.monotonic(), time.time())
    assert ids[3] not in lc.tasks, "an ended task came back from the store"
    store.apply(pending_write)
    assert drain(lc, store) == [i for i in ids if i != ids[3]]
    lc.check()


def test_a_cold_row_that_cannot_be_read_is_set_aside_and_the_rest_load(tmp_path: Any) -> None:
    store, ids = written(tmp_path, [item(f"k{i}") for i in range(8)])
    store.con.execute("UPDATE tasks SET retry_policy = '{\"kind\": \"bogus\"}' WHERE id = ?", [ids[5]])
    lc = recovered(store, hot=2)
    order = drain(lc, store)
    assert order == [i for i in ids if i != ids[5]]
    assert [tid for tid, _ in lc.fx.quarantine] == [ids[5]] and "cannot be interpreted" in lc.fx.quarantine[0][1]
    assert lc.cold == {} and lc.cold_count() == 0


def test_a_cold_chunk_brings_short_payloads_and_leaves_long_ones_for_the_run(tmp_path: Any) -> None:
    long_text = '{"blob": "' + "x" * 5000 + '"}'
    items = [item(f"k{i}") for i in range(6)]
    items[4] = items[4]._replace(payload=long_text)
    items[5] = items[5]._replace(payload='{"n": 5}')
    store, ids = written(tmp_path, items)
    lc = recovered(store, hot=2)
    lc.warm("a", store.cold_rows("a", lc.cold["a"].after, lc.cold_max_id, 10), 10, time.monotonic(), time.time())
    assert lc.tasks[ids[5]].payload == '{"n": 5}' and lc.tasks[ids[3]].payload == "{}"
    assert lc.tasks[ids[4]].payload is None and ids[4] in lc.payload_missing  # read when it is about to run
    lc.fill_payloads(store.fetch_payloads([ids[4]]))
    assert lc.tasks[ids[4]].payload == long_text
    lc.check()


def test_a_run_is_queued_only_ahead_of_every_task_still_in_the_store(tmp_path: Any) -> None:
    """A run queued on a busy worker (``queue_next``) must come before every cold task, or the
    queue would skip ahead of the store's order; once the next chunk is loaded it may be queued."""
    store, ids = written(tmp_path, [item(f"k{i}") for i in range(8)])
    lc = recovered(store, 2)  # ids[0], ids[1] in memory; the rest in the store
    now, wall = time.monotonic(), time.time()
    late = lc.submit([item("late")], now, wall)[0][1]  # ready, but after every stored task
    first = lc.pick(now, wall)
    assert first is not None and first.id == ids[0]
    lc.fill_payloads(store.fetch_payloads(lc.payload_chunk(first)))  # as the loop does before a run
    lc.started(first, object(), now, wall)
    queued = lc.queue_next(first)
    assert queued is not None and queued.id == ids[1]  # loaded, and before the tail's first task
    lc.run_ended(first)
    lc.started(queued, object(), now, wall)  # the worker takes it
    lc.completed(first, None, None, now, wall)  # type: ignore[arg-type]
    lc.check()
    assert lc.ready.best().id == late  # type: ignore[union-attr]
    assert lc.queue_next(queued) is None  # the next in order is still in the store
    lc.warm("a", store.cold_rows("a", lc.cold["a"].after, lc.cold_max_id, 3), 3, now, wall)
    nxt = lc.queue_next(queued)
    assert nxt is not None and nxt.id == ids[2]
    lc.check()
