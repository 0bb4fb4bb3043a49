"""Tests of service/transport (real Redis and real gRPC where their behaviour is tested)."""
