"""dvc.yaml is correct by construction: every stage depends on exactly the code it runs.

A stage runs `python -m gymtrl.stages.<name>`; the code it runs is that module and every gymtrl module it
imports, directly or not, at any depth (imports inside functions count; `if TYPE_CHECKING:` blocks do
not, they never run). A missing dep means `dvc repro` keeps a stale result after an edit; a needless one
means reruns for nothing.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

SRC = ROOT / "src"
DVC = str(Path(sys.executable).parent / "dvc")
# Code a module runs without importing it: NeMo Gym starts the calculator resources server (a copy of
# this folder) in Gym's own venv.
RUNS_WITHOUT_IMPORT = {"gymtrl.nemo_gym": "src/gymtrl/env/gym_server"}


def module_file(module: str) -> Path:
    p = SRC.joinpath(*module.split("."))
    return p / "__init__.py" if (p / "__init__.py").exists() else p.with_suffix(".py")


def imported_modules(module: str) -> set[str]:
    """gymtrl modules that `module`'s code imports, where the import can run."""
    path = module_file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                continue
            if isinstance(child, ast.ImportFrom):
                parts = package.split(".")
                base = child.module or ""
                if child.level:
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([child.module] if child.module else []))
                if base.split(".")[0] == "gymtrl":
                    found.add(base)
                    # `from .stages import filter` imports a module, not a name
                    found.update(f"{base}.{a.name}" for a in child.names if module_file(f"{base}.{a.name}").exists())
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "gymtrl")
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def code_of(module: str) -> set[str]:
    """Every source file that runs when `python -m <module>` runs: the closure of its imports, with the
    `__init__.py` of every package on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += imported_modules(m)
    return {str(module_file(m).relative_to(ROOT)) for m in seen} | {
        RUNS_WITHOUT_IMPORT[m] for m in seen if m in RUNS_WITHOUT_IMPORT}


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_module(stage: dict) -> str:
    m = re.fullmatch(r"python -m (gymtrl\.stages\.\w+)", stage["cmd"])
    assert m, f"a stage runs its own module: `python -m gymtrl.stages.<name>`, not {stage['cmd']!r}"
    return m.group(1)


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.startswith("src/")}


def test_code_run_without_import_is_where_the_module_says():
    from gymtrl import nemo_gym

    assert nemo_gym.SERVER_FILES == ROOT / RUNS_WITHOUT_IMPORT["gymtrl.nemo_gym"]
    assert (nemo_gym.SERVER_FILES / "app.py").exists()


def test_the_walker_sees_relative_deep_and_function_local_imports():
    assert "gymtrl.chat" in imported_modules("gymtrl.rollouts")  # from .chat import ...
    assert "gymtrl.env.model_agent" in imported_modules("gymtrl.play")  # inside a function
    assert "gymtrl.stages.filter" in imported_modules("gymtrl.tools.inspect_rollouts")  # from ..stages.filter
    assert "gymtrl.rollouts" not in imported_modules("gymtrl.stages.common")  # TYPE_CHECKING only
    assert "src/gymtrl/templates.py" in code_of("gymtrl.stages.train")  # train -> models -> templates


def test_every_stage_module_is_a_stage_and_every_stage_runs_one():
    modules = {stage_module(s) for s in stages().values()}
    on_disk = {f"gymtrl.stages.{p.stem}" for p in (SRC / "gymtrl" / "stages").glob("*.py")
               if p.stem not in ("__init__", "common")}
    assert modules == on_disk
    assert all(stage_module(s).endswith("." + name) for name, s in stages().items())


@pytest.mark.parametrize("name", list(stages()))
def test_deps_are_exactly_the_code_the_stage_runs(name):
    stage = stages()[name]
    code, listed = code_of(stage_module(stage)), code_deps(stage)
    assert not code - listed, f"dvc.yaml: stage {name} runs but does not depend on {sorted(code - listed)}"
    assert not listed - code, f"dvc.yaml: stage {name} depends on code it never runs: {sorted(listed - code)}"


def resolve(text: str, params: dict) -> str:
    """dvc.yaml's `${a.b}` interpolation, for the plain string values used here."""
    def value(m: re.Match) -> str:
        v = params
        for key in m.group(1).split("."):
            v = v[key]
        return str(v)

    return re.sub(r"\$\{([\w.]+)\}", value, text)


def test_editing_any_module_a_stage_runs_makes_dvc_rerun_it(tmp_path):
    """DVC's own verdict: with a lock recording the current code, edit every module once; `dvc status`
    must then name, for each stage, exactly the code that stage runs."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(SRC, repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # Stand-ins for every output and data dep, so that DVC can record a lock without running anything.
    for stage in stages().values():
        for entry in [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", []), *stage["deps"]]:
            path = repo / resolve(next(iter(entry)) if isinstance(entry, dict) else entry, params)
            if not path.exists():
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n")
                else:
                    (path / "stand-in").parent.mkdir(parents=True, exist_ok=True)
                    (path / "stand-in").write_text("x\n")
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    for cmd in (["git", "init", "-q"], [DVC, "commit", "-f", "-q"]):
        done = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr
    assert json.loads(subprocess.run([DVC, "status", "--json"], cwd=repo, check=True, capture_output=True,
                                     env=env).stdout) == {}
    for path in (repo / "src").rglob("*.py"):
        path.write_text(path.read_text() + "\n# edited\n")
    status = json.loads(subprocess.run([DVC, "status", "--json"], cwd=repo, check=True, capture_output=True,
                                       env=env).stdout)
    for name, stage in stages().items():
        changed = {path for item in status.get(name, []) if isinstance(item, dict)
                   for path, why in item.get("changed deps", {}).items() if why == "modified"}
        assert changed == code_of(stage_module(stage)), name
