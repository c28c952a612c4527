"""erase.threads: torch's CPU threads follow the cores this process gets, not the machine's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from erase.threads import available_cores, cgroup_quota, choose_threads


def test_share_of_the_cores_less_other_jobs():
    assert choose_threads(8) == 8
    assert choose_threads(8, local_processes=2) == 4  # accelerate launch --num_processes 2
    assert choose_threads(2, load=2.3) == 1  # another 2-thread job: never oversubscribe
    assert choose_threads(16, load=3.9) == 13
    assert choose_threads(2, local_processes=4) == 1  # at least one
    assert choose_threads(4, load=-1.0) == 4


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    assert cgroup_quota(v1) == 3.0
    assert cgroup_quota(tmp_path / "missing") is None


def test_quota_caps_the_affinity(tmp_path):
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one thread
    assert available_cores(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cores(tmp_path) == len(os.sched_getaffinity(0))


def _threads_of_a_command(env: dict[str, str]) -> str:
    code = ("import torch, erase.cli as c; torch.set_num_threads(97); "
            "c.main(['zoo', 'list']); print('THREADS', torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("ERASE_THREADS", "OMP_NUM_THREADS")} | env
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("THREADS")[-1].strip()


@pytest.mark.parametrize("env, expected", [({"ERASE_THREADS": "3"}, "3"), ({"OMP_NUM_THREADS": "1"}, "97")])
def test_the_command_sets_threads_unless_the_user_chose(env, expected):
    """ERASE_THREADS is obeyed; OMP_NUM_THREADS means the user chose, so erase leaves torch alone."""
    assert _threads_of_a_command(env) == expected


def test_the_command_sizes_threads_by_itself():
    n = int(_threads_of_a_command({}))
    assert 1 <= n <= available_cores()  # the machine's load decides within that range
