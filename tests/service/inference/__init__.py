"""Tests of service/inference (real Redis and real gRPC where their behaviour is tested)."""
