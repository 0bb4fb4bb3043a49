"""Tests of service/state (real Redis and real gRPC where their behaviour is tested)."""
