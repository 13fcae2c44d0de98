"""Internal: worker processes and the coordinator's pool of them.

``main`` runs inside workers and imports only leaves and the context;
``pool`` runs in the coordinator. Not a public API.
"""
