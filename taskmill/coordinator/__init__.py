"""Internal: the coordinator process (``python -m taskmill.coordinator``).

It owns the store, the ready queues and the worker pool; the host talks to it
only through ``taskmill.protocol``. Not a public API.
"""
