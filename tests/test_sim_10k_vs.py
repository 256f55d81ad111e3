"""``benchmarks.sim_10k_vs``: both sides run side by side, are reported, and leave no
worktree behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import sim_10k_vs

ROOT = Path(__file__).resolve().parent.parent


def worktrees() -> list[str]:
    out = subprocess.run(["git", "worktree", "list", "--porcelain"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith("worktree ")]


def test_a_revision_git_cannot_check_out_is_a_clear_error_and_leaves_nothing() -> None:
    before = worktrees()
    with pytest.raises(SystemExit, match="git could not check out 'no-such-rev'"):
        sim_10k_vs.main(["no-such-rev", "--workflows", "10", "--trials", "1"])
    assert worktrees() == before


def test_a_side_that_fails_is_reported_with_its_output(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    (broken / "benchmarks").mkdir(parents=True)
    (broken / "orla_sdk").mkdir()
    (broken / "orla_sdk" / "__init__.py").write_text("raise ImportError('a broken checkout')")
    with pytest.raises(RuntimeError, match="a broken checkout"):
        sim_10k_vs.trial(broken, ROOT, 10, tmp_path / "trial")


def test_a_commit_and_this_checkout_run_side_by_side_and_are_reported(
        capsys: pytest.CaptureFixture[str]) -> None:
    before = worktrees()
    sim_10k_vs.main(["HEAD", "--workflows", "40", "--trials", "1"])
    report = capsys.readouterr().out
    assert "| 1 | " in report and "Median over trials: wall time" in report
    assert report.count("workflows ok per run: 40") == 2  # both sides, every run ok
    assert worktrees() == before


def test_a_trial_ends_when_each_side_has_finished_a_run(tmp_path: Path) -> None:
    base, here = sim_10k_vs.trial(ROOT, ROOT, 20, tmp_path)
    assert base and here
    assert all(run.ok == 20 and run.error is None and run.wall_s > 0 for run in base + here)
