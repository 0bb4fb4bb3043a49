"""The scoring service: model bundle reader, ONNX Runtime sessions, (later) gRPC, Redis.

Imports no torch, directly or through `queryrec` (a test enforces it): the serving image
installs the core package and the `serve` extra only.
"""
