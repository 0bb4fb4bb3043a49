"""Tests of the comparison baselines (queryrec/models/baselines)."""
