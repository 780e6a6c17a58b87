"""Packaging: the folders install as fedsieve.*, never as bare top-level modules."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import zipfile

from conftest import REPO

SUBPACKAGES = ("server", "client", "shared", "simulations")


def test_no_bare_top_level_modules(tmp_path):
    code = ("import importlib.util as u, json; "
            f"print(json.dumps({{n: [u.find_spec(n) is not None, "
            f"u.find_spec('fedsieve.' + n) is not None] for n in {SUBPACKAGES!r}}}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert json.loads(out) == {n: [False, True] for n in SUBPACKAGES}


def test_wheel_holds_only_the_fedsieve_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("fedsieve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fedsieve", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "fedsieve/__init__.py" not in names  # implicit namespace package
    for sub in SUBPACKAGES:
        assert f"fedsieve/{sub}/__init__.py" in names
    # Every source module, sub-packages included (a package left out of pyproject's list
    # would install without them).
    sources = {f"fedsieve/{path.relative_to(REPO).as_posix()}" for sub in SUBPACKAGES
               for path in (REPO / sub).rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))[:5]


def test_pyproject_is_a_flower_app():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "fedsieve.server.app:app",
                          "clientapp": "fedsieve.client.app:app"}
    # Every run-config key is a RunSettings field and vice versa, with the default's type.
    from fedsieve.shared.config import RunSettings

    run_config = config["tool"]["flwr"]["app"]["config"]
    defaults = RunSettings().to_run_config()
    assert set(run_config) == set(defaults)
    assert RunSettings.from_run_config(run_config) == RunSettings()
    # Flower 1.41 moved connections out of pyproject (it would rewrite a federations table).
    assert "federations" not in config["tool"]["flwr"]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = "bash .ci/setup --dev && .venv/bin/pytest"
    assert command in readme and command in ci.splitlines()


def test_the_readme_integration_ends_with_the_command_that_runs_the_app():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Adding fedsieve to your Flower app")[1].split("\n## ")[0]
    blocks = section.split("```")[1::2]  # the code blocks, language tag first
    assert blocks[-1].split("\n", 1)[1].strip().startswith(
        'flwr run . local --federation-config "num-supernodes=10" --stream')
    assert section.rstrip().endswith("```")


def test_only_the_engine_module_touches_flowers_deprecated_run_simulation():
    # Flower 1.41 warns in every run_simulation call; fedsieve goes through
    # fedsieve.simulations.engine.run_apps, which falls back to it only on a Flower without
    # the engine function.
    sources = [p for folder in ("client", "server", "shared", "simulations", "benchmarks",
                                "tests") for p in (REPO / folder).rglob("*.py")]
    users = {p.relative_to(REPO).as_posix() for p in sources
             if "import run_" + "simulation" in p.read_text()}  # split: not this file
    assert users == {"simulations/engine.py"}
