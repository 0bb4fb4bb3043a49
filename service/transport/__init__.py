"""Serving's transport: the gRPC server and its calls, the admin HTTP API, health,
authentication, the worker processes and `queryrec serve`'s entry point."""
