"""The worker count follows the container's CPU quota (cgroup v2 and v1), on fake trees."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from service.settings import ServiceSettings
from service.transport import workers
from service.transport.workers import cgroup_cpu_quota, cpu_allowance, worker_count

CORES = 8


@pytest.fixture(autouse=True)
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "available_cores", lambda: CORES)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(
    tmp_path: Path, cpu_max: str | None, parent_max: str | None = None
) -> tuple[Path, Path]:
    """(proc, cgroup root) of a cgroup v2 host whose process is in /kubepods/pod1/c1."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "self" / "cgroup", "0::/kubepods/pod1/c1\n")
    write(root / "cpu.max", "max 100000\n")  # never read at the real root; harmless
    if cpu_max is not None:
        write(root / "kubepods" / "pod1" / "c1" / "cpu.max", cpu_max)
    if parent_max is not None:
        write(root / "kubepods" / "pod1" / "cpu.max", parent_max)
    return proc, root


def v1_tree(tmp_path: Path, quota: str | None, period: str = "100000\n") -> tuple[Path, Path]:
    """(proc, cgroup root) of a cgroup v1 host: the cpu controller mounted at
    <root>/cpu,cpuacct, the process in /docker/abc."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    mount = root / "cpu,cpuacct"
    write(
        proc / "self" / "cgroup",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n3:cpuset:/docker/abc\n0::/\n",
    )
    write(
        proc / "self" / "mountinfo",
        f"30 25 0:26 / {root / 'memory'} rw,nosuid - cgroup cgroup rw,memory\n"
        f"31 25 0:27 / {mount} rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n",
    )
    if quota is not None:
        write(mount / "docker" / "abc" / "cpu.cfs_quota_us", quota)
        write(mount / "docker" / "abc" / "cpu.cfs_period_us", period)
    return proc, root


def test_v2_quota_limits_the_workers(tmp_path: Path) -> None:
    proc, root = v2_tree(tmp_path, "200000 100000\n")
    assert cgroup_cpu_quota(proc, root) == 2.0
    assert cpu_allowance(proc, root) == (2, "quota")


def test_v2_max_is_no_limit(tmp_path: Path) -> None:
    proc, root = v2_tree(tmp_path, "max 100000\n")
    assert cgroup_cpu_quota(proc, root) is None
    assert cpu_allowance(proc, root) == (CORES, "affinity")


def test_v2_a_parents_limit_applies_and_the_tightest_wins(tmp_path: Path) -> None:
    proc, root = v2_tree(tmp_path, "max 100000\n", parent_max="300000 100000\n")
    assert cpu_allowance(proc, root) == (3, "quota")
    proc, root = v2_tree(tmp_path / "b", "100000 100000\n", parent_max="300000 100000\n")
    assert cpu_allowance(proc, root) == (1, "quota")


def test_v1_quota_limits_the_workers(tmp_path: Path) -> None:
    proc, root = v1_tree(tmp_path, "300000\n")
    assert cgroup_cpu_quota(proc, root) == 3.0
    assert cpu_allowance(proc, root) == (3, "quota")


def test_v1_minus_one_is_no_limit(tmp_path: Path) -> None:
    proc, root = v1_tree(tmp_path, "-1\n")
    assert cgroup_cpu_quota(proc, root) is None
    assert cpu_allowance(proc, root) == (CORES, "affinity")


def test_missing_files_fall_back_to_the_cores(tmp_path: Path) -> None:
    assert cpu_allowance(tmp_path / "none", tmp_path / "none") == (CORES, "affinity")
    proc, root = v2_tree(tmp_path / "v2", None)
    assert cpu_allowance(proc, root) == (CORES, "affinity")
    proc, root = v1_tree(tmp_path / "v1", None)
    assert cpu_allowance(proc, root) == (CORES, "affinity")
    proc, root = v2_tree(tmp_path / "bad", "garbage\n")
    assert cpu_allowance(proc, root) == (CORES, "affinity")


def test_a_fractional_quota_rounds_up(tmp_path: Path) -> None:
    proc, root = v2_tree(tmp_path, "150000 100000\n")
    assert cgroup_cpu_quota(proc, root) == 1.5
    assert cpu_allowance(proc, root) == (2, "quota")
    proc, root = v1_tree(tmp_path / "small", "20000\n")  # a fifth of a CPU: still one
    assert cpu_allowance(proc, root) == (1, "quota")


def test_a_quota_above_the_cores_leaves_the_cores(tmp_path: Path) -> None:
    proc, root = v2_tree(tmp_path, "1600000 100000\n")
    assert cpu_allowance(proc, root) == (CORES, "affinity")


def test_the_chosen_count_is_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proc, root = v2_tree(tmp_path, "200000 100000\n")
    monkeypatch.setattr(workers, "PROC", proc)
    monkeypatch.setattr(workers, "CGROUP_ROOT", root)
    settings = ServiceSettings.model_validate({"workers": None})
    with caplog.at_level(logging.INFO):
        assert worker_count(settings) == 2
    lines = [r for r in caplog.records if getattr(r, "event", None) == "worker_count"]
    assert len(lines) == 1
    line = lines[0]
    assert (line.workers, line.source, line.cores, line.cpu_quota) == (2, "quota", CORES, 2.0)  # type: ignore[attr-defined]
    caplog.clear()
    assert worker_count(settings.model_copy(update={"workers": 3})) == 3
    assert not [r for r in caplog.records if getattr(r, "event", None) == "worker_count"]
