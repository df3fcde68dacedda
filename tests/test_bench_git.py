"""Every bench result names the commit it measured (bench/run.py git_head, read from .git
without a git command): in a checkout, in a `git worktree` (whose .git is a file), and once the
branch's ref is packed."""
from __future__ import annotations

import subprocess

from bench import run


def test_results_name_their_commit_in_a_checkout_and_a_worktree(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    (repo / "f").write_text("x")
    git("add", "f")
    git("-c", "user.name=lb", "-c", "user.email=lb@example.invalid", "commit", "-qm", "one")
    head = git("rev-parse", "--short=10", "HEAD")
    monkeypatch.setattr(run, "REPO", repo)
    assert run.git_head() == head
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "wt"))
    monkeypatch.setattr(run, "REPO", tmp_path / "wt")
    assert run.git_head() == head
    git("pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "side").exists()
    assert run.git_head() == head
