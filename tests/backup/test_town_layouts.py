"""Layouts a town takes on with use, each backed up and restored by the real scripts (issue 22).

Each test gives the plain fixture town one thing gastown v1.0.1 makes as a town is used — dogs and
cross-rig worktrees, a town root under git, a rig with a submodule, Dolt remotes, the mayor's sparse
checkout, an author, older stash entries — then loses the volume and restores it with every upstream
out of reach, and compares what a user sees (tests/fixtures/busy_town.py: tree_state).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.busy_town import dolt_remotes, tree_state
from tests.fixtures.sandbox import Sandbox, restore_after_loss
from tests.fixtures.town import RIGS, GasTown, _commit, _write, repo_state, run

# Submodules from local paths: git refuses the file transport for them unless told (CVE-2022-39253).
FILE_SUBMODULES = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.file.allow", "GIT_CONFIG_VALUE_0": "always"}


def test_dogs_and_cross_rig_worktrees_come_back_as_worktrees(sandbox: Sandbox) -> None:
    # `gt dog add` makes a worktree of each rig's .repo.git at deacon/dogs/<dog>/<rig>; `gt worktree`
    # one of another rig's mayor clone at <rig>/crew/<src>-<name>, with that crew member as author.
    town = sandbox.town
    root = town.root
    town.start_dolt()
    town.gt("dog", "add", "beta")
    town.gt("worktree", "webapp", "--no-cd", cwd=root / "backend" / "crew" / "alice")
    dog = root / "deacon" / "dogs" / "beta"
    _commit(town, dog / "backend", "DOG.md", "found it\n", "dog: report not pushed")
    _write(dog / "docs" / "scratch.txt", "dog scratch\n")
    cross = root / "webapp" / "crew" / "backend-alice"
    _write(cross / "CROSS.md", "cross-rig notes\n")
    trees = [dog / rig for rig in RIGS] + [cross]
    before = {str(t.relative_to(root)): tree_state(t) for t in trees}
    assert before["webapp/crew/backend-alice"]["author"] == "backend/crew/alice"
    repos = ("backend/.repo.git", "docs/.repo.git", "webapp/.repo.git", "webapp/mayor/rig")
    worktrees = {r: repo_state(root, root / r)["worktrees"] for r in repos}

    restore_after_loss(sandbox)

    assert {str(t.relative_to(root)): tree_state(t) for t in trees} == before
    assert all((t / ".git").is_file() for t in trees)  # worktrees, not clones
    assert {r: repo_state(root, root / r)["worktrees"] for r in repos} == worktrees
    assert json.loads((dog / ".dog.json").read_text())["name"] == "beta"
    assert "deacon/dogs/beta/backend" in {w[0] for w in worktrees["backend/.repo.git"]}


def test_a_town_under_git_comes_back_with_its_history_and_branch_protection(sandbox: Sandbox) -> None:
    # `gt git-init` (as `gt install --git`) makes the town root a repository with gastown's .gitignore
    # and its branch protection hook; `gt doctor` recommends it.
    town = sandbox.town
    root = town.root
    town.gt("git-init")
    # What an HQ tracks (gastown's .gitignore leaves out rigs, worktrees and runtime state).
    town.git("add", ".gitignore", "CLAUDE.md", "mayor/town.json", cwd=root)
    town.git("commit", "-q", "-m", "HQ: initial", cwd=root)
    _commit(town, root, "settings/notes.md", "# notes\n", "HQ: notes")
    _write(root / "CLAUDE.md", (root / "CLAUDE.md").read_text() + "\nedited, not committed\n")
    hook = root / ".git" / "hooks" / "post-checkout"
    assert "Gas Town branch protection" in hook.read_text()
    before = (tree_state(root), repo_state(root, root))

    restore_after_loss(sandbox)

    assert (tree_state(root), repo_state(root, root)) == before
    assert town.git("log", "--format=%s", cwd=root).splitlines()[:2] == ["HQ: notes", "HQ: initial"]
    assert "Gas Town branch protection" in hook.read_text()  # installed again by gastown (gt git-init)


def _repo_with_submodule(town: GasTown, base: Path) -> tuple[Path, Path]:
    lib = base / "lib"
    mod = base / "modular"
    for path in (lib, mod):
        path.mkdir(parents=True)
        town.git("init", "-q", "-b", "main", cwd=path)
        _write(path / "README.md", f"# {path.name}\n")
        town.git("add", "-A", cwd=path)
        town.git("commit", "-q", "-m", "initial", cwd=path)
    town.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", f"file://{lib}", "vendor/lib", cwd=mod)
    town.git("commit", "-q", "-m", "vendor lib", cwd=mod)
    return lib, mod


def test_submodules_come_back_with_their_unpushed_work(sandbox: Sandbox) -> None:
    # Gastown initialises submodules in every clone and worktree (`git submodule update --init
    # --recursive`); a polecat's work inside one is its own repository's.
    town = sandbox.town
    root = town.root
    lib, mod = _repo_with_submodule(town, sandbox.tmp / "upstream")
    town.start_dolt()
    env = {**town.env, **FILE_SUBMODULES}
    run(["gt", "rig", "add", "modular", f"file://{mod}"], cwd=root, env=env)
    run(["gt", "polecat", "add", "modular", "slit"], cwd=root, env=env)
    polecat = root / "modular" / "polecats" / "slit" / "modular"
    sub = polecat / "vendor" / "lib"
    town.git("checkout", "-q", "-b", "slit-fix", cwd=sub)
    _commit(town, sub, "fix.py", "FIXED = True\n", "lib: fixed by slit, not pushed")
    _write(sub / "README.md", "# lib, edited\n")
    trees = [root / "modular" / "mayor" / "rig", root / "modular" / "mayor" / "rig" / "vendor" / "lib", polecat, sub]
    before = {str(t.relative_to(root)): tree_state(t) for t in trees}
    assert before["modular/polecats/slit/modular"]["submodules"].startswith("+")  # moved on, not pushed

    restore_after_loss(sandbox, unreachable=(lib, mod))

    assert {str(t.relative_to(root)): tree_state(t) for t in trees} == before
    assert (sub / ".git").is_file()  # its repository where git keeps a submodule's
    assert town.git("log", "-1", "--format=%s", cwd=sub).strip() == "lib: fixed by slit, not pushed"
    assert (sub / "README.md").read_text() == "# lib, edited\n"


def test_dolt_remotes_sparse_checkouts_authors_and_stashes_come_back(sandbox: Sandbox) -> None:
    # A restored Dolt backup has no remotes (gastown's dolt_remotes patrol would stop pushing); the
    # mayor's sparse checkout (`gt rig add --sparse-checkout`) and an author live in git settings; the
    # stash's older entries only in refs/stash's reflog.
    town = sandbox.town
    root = town.root
    run(
        ["dolt", "remote", "add", "origin", f"file://{sandbox.tmp / 'dolt-remote'}"],
        cwd=root / ".dolt-data" / "backend",
        env=town.env,
    )
    mayor = root / "webapp" / "mayor" / "rig"
    town.git("status", "--porcelain", cwd=mayor)  # the copied template's index is stale until refreshed
    town.git("sparse-checkout", "init", "--cone", cwd=mayor)
    town.git("sparse-checkout", "set", "src", cwd=mayor)
    town.git("config", "user.name", "Webapp Mayor", cwd=mayor)
    town.git("config", "user.email", "mayor@webapp.test", cwd=mayor)
    alice = root / "backend" / "crew" / "alice"
    for n in (1, 2, 3):
        _write(alice / "src" / "app.py", f"print('idea {n}')\n")
        town.git("stash", "push", "-q", "-m", f"idea {n}", cwd=alice)

    def state() -> dict[str, object]:
        return {
            "dolt remotes": dolt_remotes(root, town.env),
            "mayor": tree_state(mayor),
            "mayor files": sorted(str(p.relative_to(mayor)) for p in mayor.rglob("*") if ".git" not in p.parts),
            "alice": tree_state(alice),
        }

    before = state()
    assert "origin" in before["dolt remotes"]["backend"] and len(before["alice"]["stash"].splitlines()) == 3
    assert "assets" not in before["mayor files"] and "src/app.py" in before["mayor files"]

    restore_after_loss(sandbox)

    assert state() == before
