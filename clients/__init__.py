"""Clients of the scoring service: the replay of a test split (and, later, load tests).

A client talks to the server through the gRPC API only (the stubs in `service.api`) and
may use the offline core (`queryrec`) to know what the answers should be; it imports
nothing else of `service/` (an import-linter contract in pyproject.toml).
"""
