"""Dependencies and parent/child tasks: the lifecycle's graph rules (F13, F14).

A ``Lifecycle`` mixin: it keeps the edges and the family links and decides
what happens when a task on either end moves. Plain code, no I/O.

Dependencies point only at tasks that existed when the dependent was
submitted (an unknown id is refused), so a cycle cannot form. When a
prerequisite completes its edge goes; the dependent becomes pending once it
has none left. When a prerequisite ends any other way, each dependent applies
its policy: ``cancel`` ends it and everything downstream as
``dependency_failed``; ``fail`` ends it so, and its own dependents apply their
own policies; ``ignore`` drops the edge. A superseded prerequisite hands its
dependents to the task that replaced it.

A parent that returns while it has active children waits (``waiting``) with
its return value as the memo; once they are all done its ``finalize`` step
runs as a second phase (whatever the children ended as: the step decides), or,
without one, it fails if a child failed and completes with the memo otherwise. With ``fail_fast`` the first failing child cancels
its siblings and fails the parent. A parent that ends any other way takes its
children with it (across domains).
"""

from __future__ import annotations

from taskmill.coordinator.core.entry import Entry
from taskmill.coordinator.core.table import TaskTable
from taskmill.records import HistoryStatus, TaskStatus

__all__ = ["CHILD_FAILURES", "Relations"]

_BLOCKED = TaskStatus.BLOCKED.value
_WAITING = TaskStatus.WAITING.value
_RUNNING = TaskStatus.RUNNING.value
#: Outcomes of a child that count as its failure for its parent.
CHILD_FAILURES = frozenset({HistoryStatus.FAILED, HistoryStatus.DEAD_LETTER, HistoryStatus.DEPENDENCY_FAILED,
                            HistoryStatus.EXPIRED})


class Relations(TaskTable):
    """Edges and family links of the lifecycle (mixed into ``Lifecycle``)."""

    def _init_relations(self) -> None:
        self.prereqs: dict[int, set[int]] = {}  # dependent -> prerequisites not yet completed
        self.dependents: dict[int, set[int]] = {}  # prerequisite -> dependents waiting on it
        self.children: dict[int, set[int]] = {}  # parent -> active children

    # ------------------------------------------------------------------ building

    def _link(self, e: Entry, prereqs: list[int]) -> None:
        """``e`` waits on ``prereqs`` (active tasks): edges in memory and in the batch."""
        if not prereqs:
            return
        self.prereqs[e.id] = set(prereqs)
        for p in prereqs:
            self.dependents.setdefault(p, set()).add(e.id)
            self.fx.add_dep((e.id, p))
        e.blockers = len(prereqs)

    def _adopt(self, child: Entry) -> None:
        """``child`` joins its parent's family (the parent is active)."""
        parent = self.tasks.get(child.parent_id) if child.parent_id is not None else None
        if parent is None:
            return
        self.children.setdefault(parent.id, set()).add(child.id)
        parent.extra().spawned += 1

    def _unlink(self, e: Entry) -> None:
        """``e`` left the table: drop the edges it waited on (its own dependents are handled by the caller)."""
        for p in self.prereqs.pop(e.id, ()):
            deps = self.dependents.get(p)
            if deps is not None:
                deps.discard(e.id)
                if not deps:
                    del self.dependents[p]
        e.blockers = 0

    # ------------------------------------------------------------------ a prerequisite moved

    def _prerequisite_done(self, e: Entry, now: float, wall: float, *, stays: bool = False) -> None:
        """``e`` completed (a run of it): its dependents lose that edge and may start."""
        waiting = self.dependents.pop(e.id, None)
        if stays and waiting:
            self.fx.release_deps(e.id)
        for d in sorted(waiting or ()):
            dep = self.tasks.get(d)
            pre = self.prereqs.get(d)
            if dep is None or pre is None:
                continue
            pre.discard(e.id)
            dep.blockers = len(pre)
            if not pre:
                del self.prereqs[d]
                self._unblock(dep, now)

    def _prerequisite_failed(self, e: Entry, status: HistoryStatus, now: float, wall: float,
                             forced: bool = False) -> None:
        """``e`` ended without completing: each dependent applies its policy (``forced``: all cascade)."""
        for d in sorted(self.dependents.pop(e.id, ())):
            dep = self.tasks.get(d)
            pre = self.prereqs.get(d)
            if dep is None or pre is None:
                continue
            policy = "cancel" if forced else (dep.x.on_dep_failure if dep.x is not None else "cancel")
            if policy == "ignore":
                pre.discard(e.id)
                dep.blockers = len(pre)
                if not pre:
                    del self.prereqs[d]
                    self._unblock(dep, now)
                continue
            why = f"dependency task {e.id} ended as {status.value}"
            self._end(dep, HistoryStatus.DEPENDENCY_FAILED, why, now, wall, cascade_dependents=policy == "cancel",
                      cause=e.id)

    def _prerequisite_replaced(self, old: Entry, new: Entry) -> None:
        """``old`` was superseded by ``new``: its dependents wait on ``new`` instead."""
        waiting = self.dependents.pop(old.id, None)
        if not waiting:
            return
        self.dependents.setdefault(new.id, set()).update(waiting)
        for d in waiting:
            pre = self.prereqs.get(d)
            if pre is not None:
                pre.discard(old.id)
                pre.add(new.id)
        self.fx.move_deps((old.id, new.id))

    def _unblock(self, e: Entry, now: float) -> None:
        if e.status == _BLOCKED:
            if self.fx.listening:
                self._emit_about("TaskUnblocked", e, e.id)
            self._settle(e, now)  # pending, or paused if a scope holds it

    # ------------------------------------------------------------------ parents and children

    def _child_left(self, child: Entry, status: HistoryStatus, error: str | None, now: float, wall: float) -> None:
        """``child`` reached history: tell its parent."""
        pid = child.parent_id
        if pid is None:
            return
        kids = self.children.get(pid)
        if kids is not None:
            kids.discard(child.id)
            if not kids:
                del self.children[pid]
        parent = self.tasks.get(pid)
        if parent is None or parent.cancelled:
            return
        if status in CHILD_FAILURES:
            x = parent.extra()
            x.child_failures += 1
            if x.first_failure is None:
                x.first_failure = f"child task {child.id} ended as {status.value}: {(error or '')[:500]}"
            if x.fail_fast:
                self._fail_parent(parent, x.first_failure, now, wall)
                return
        if parent.status == _WAITING and pid not in self.children:
            self._resolve_parent(parent, now, wall)

    def _fail_parent(self, parent: Entry, why: str, now: float, wall: float) -> None:
        """First failing child with fail_fast: siblings cancelled, the parent failed."""
        for sib in sorted(self.children.get(parent.id, ())):
            s = self.tasks.get(sib)
            if s is not None:
                self._end(s, HistoryStatus.CANCELLED, f"cancelled: sibling failed ({why[:200]})", now, wall)
        self._end(parent, HistoryStatus.FAILED, why, now, wall)

    def _resolve_parent(self, parent: Entry, now: float, wall: float) -> None:
        """All children of a returned parent are done: finalize it if it has a finalize step
        (which then decides its outcome, children that failed or not), else fail it if a
        child failed, else complete it with its memo."""
        x = parent.extra()
        if x.child_failures and parent.task_type not in self.finalizers:
            self._end(parent, HistoryStatus.FAILED, f"{x.child_failures} child task(s) failed; first: {x.first_failure}",
                      now, wall)
            return
        if parent.task_type in self.finalizers:
            x.phase = "finalize"
            self.fx.update(parent.id, phase="finalize")
            self._settle(parent, now)  # pending (or paused) until a worker runs its finalize
            return
        self._leave(parent, HistoryStatus.COMPLETED, now, wall, result=x.memo)

    def _cancel_children(self, parent: Entry, status: HistoryStatus, why: str, now: float, wall: float) -> None:
        """A parent that ends takes its active children (and theirs) with it, across domains."""
        for cid in sorted(self.children.pop(parent.id, ())):
            c = self.tasks.get(cid)
            if c is not None:
                self._end(c, status, why, now, wall)

    def _active_children(self, task_id: int) -> bool:
        return bool(self.children.get(task_id))
