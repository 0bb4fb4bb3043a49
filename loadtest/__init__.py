"""Load tests of the scoring service: Locust users (`locustfile.py`, run only inside a
Locust subprocess) and the runner that starts them and summarises exact latencies
(`run.py`: `run_load(LoadConfig(...))`, `python -m loadtest run | soak`).

Nothing here imports Locust or gevent into the caller's process: Locust monkey-patches
the standard library on import, which must not happen inside pytest or a benchmark.
"""
