"""What a submission became (F4): ``Inserted``, ``Duplicate``, ``Upgraded``, ``Requeued``,
``Superseded``, ``Rejected``, a batch's ``BatchOutcome``, and their compact wire form.

Leaf module: imports only ``taskmill.records`` (the record base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

from taskmill.records import _RECORD, _ToDict

__all__ = ["BatchOutcome", "Duplicate", "Inserted", "Rejected", "Requeued", "SubmitOutcome", "Superseded",
           "Upgraded", "outcomes_from_wire"]


@dataclass(**_RECORD)
class SubmitOutcome(_ToDict):
    """Base of the submission outcomes (F4); ``id`` is the task id or ``None``."""

    @property
    def id(self) -> int | None:
        return None

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()


@dataclass(**_RECORD)
class _OfTask(SubmitOutcome):
    """An outcome about one task, named by ``task_id``."""

    task_id: int

    @property
    def id(self) -> int | None:
        return self.task_id


@dataclass(**_RECORD)
class Inserted(_OfTask):
    """A new task was inserted."""

    group_paused: bool = False


@dataclass(**_RECORD)
class Duplicate(SubmitOutcome):
    """The dedup key was active and nothing changed; ``existing_id`` names that task."""

    existing_id: int | None = None


@dataclass(**_RECORD)
class Upgraded(_OfTask):
    """A pending or paused duplicate took the new, more urgent priority."""


@dataclass(**_RECORD)
class Requeued(_OfTask):
    """A running duplicate will run once more after it finishes."""


@dataclass(**_RECORD)
class Superseded(SubmitOutcome):
    """The active duplicate was cancelled (history ``superseded``) and replaced."""

    new_id: int
    replaced_id: int

    @property
    def id(self) -> int | None:
        return self.new_id


@dataclass(**_RECORD)
class Rejected(SubmitOutcome):
    """The duplicate strategy was ``reject`` and the key was active."""

    existing_id: int | None = None


@dataclass(frozen=True, slots=True)
class BatchOutcome(_ToDict):
    """Per-item outcomes of ``submit_batch`` in input order, plus id views."""

    outcomes: tuple[SubmitOutcome, ...]

    def __len__(self) -> int:
        return len(self.outcomes)

    def __iter__(self) -> Iterator[SubmitOutcome]:
        return iter(self.outcomes)

    def __getitem__(self, i: int) -> SubmitOutcome:
        return self.outcomes[i]

    def _ids(self, cls: type) -> list[int]:
        return [o.id for o in self.outcomes if type(o) is cls and o.id is not None]

    @property
    def ids(self) -> list[int | None]:
        return [o.id for o in self.outcomes]

    @property
    def inserted(self) -> list[int]:
        return self._ids(Inserted)

    @property
    def upgraded(self) -> list[int]:
        return self._ids(Upgraded)

    @property
    def requeued(self) -> list[int]:
        return self._ids(Requeued)

    @property
    def superseded(self) -> list[int]:
        return self._ids(Superseded)

    @property
    def duplicates(self) -> list[int]:
        return [i for i, o in enumerate(self.outcomes) if type(o) is Duplicate]

    @property
    def rejected(self) -> list[int]:
        """Input indexes of the rejected items."""
        return [i for i, o in enumerate(self.outcomes) if type(o) is Rejected]


def outcomes_from_wire(items: Sequence[tuple]) -> tuple[SubmitOutcome, ...]:
    """Rebuild outcomes from the compact tuples the coordinator sends."""
    out: list[SubmitOutcome] = []
    for item in items:
        kind = item[0]
        if kind == "i":
            out.append(Inserted(task_id=item[1], group_paused=bool(item[2])))
        elif kind == "d":
            out.append(Duplicate(existing_id=item[1]))
        elif kind == "u":
            out.append(Upgraded(task_id=item[1]))
        elif kind == "q":
            out.append(Requeued(task_id=item[1]))
        elif kind == "s":
            out.append(Superseded(new_id=item[1], replaced_id=item[2]))
        else:
            out.append(Rejected(existing_id=item[1]))
    return tuple(out)
