"""Tests of the top floor: the CLI, the demo and the bench."""
