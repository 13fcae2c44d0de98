"""Internal: the coordinator's decisions, as plain code without I/O.

Everything about a task that can be decided without a socket, a pipe, a
thread, a clock read or the store lives here: the lifecycle and its rules
(graph, pauses, time, preemption, the cold tail), admission (the gate, fair
share, aging), the ready queues and timers, progress estimates and the records
built from memory. Callers pass the clocks in (``now`` monotonic, ``wall``
for stored timestamps) and carry out what the core records in its effects.

May import: itself, the leaf modules (records, errors, validation, metrics,
batch, admission's value types) and, for type hints only, the protocol. A test
(``tests/unit/test_exports.py``) keeps it free of I/O modules and of the shell.
"""
