"""Repository hygiene: one source of truth for the pins, every imported third-party package declared, every stage
package importable."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data_synthesis", "reward_model", "rl_policy", "benchmarks", "shared")
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[\[=<>~ ]", line)[0].lower())
    return names


def imported_modules(source: Path) -> list[tuple[str, int]]:
    """(module, line) of every absolute import statement in `source`, at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def test_torch_is_pinned_first_and_environment_yml_reads_the_same_files():
    first = next(
        line
        for line in (REPO / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert first == "torch==2.13.0"
    environment = (REPO / "environment.yml").read_text()
    assert "-r requirements.txt" in environment and "-r requirements-dev.txt" in environment
    assert "python=3.11" in environment
    assert "grep -m1 '^torch==' requirements.txt" in (REPO / "Makefile").read_text()


def test_every_imported_third_party_package_is_declared():
    declared = requirement_names(REPO / "requirements.txt")
    dev = requirement_names(REPO / "requirements-dev.txt")
    local = set(PACKAGES) | {"tests", "bench"} | {path.stem for path in (REPO / "tests").glob("*.py")}  # test helpers
    for folder, allowed in [(p, declared) for p in PACKAGES] + [("bench", declared), ("tests", declared | dev)]:
        for source in (REPO / folder).rglob("*.py"):
            for module, _ in imported_modules(source):
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local:
                    continue
                assert DISTRIBUTIONS.get(top, top).lower() in allowed, f"{source}: {top} is not declared"


@pytest.mark.parametrize("package", PACKAGES)
def test_stage_packages_import_and_say_what_they_are(package):
    module = importlib.import_module(package)
    assert module.__doc__ and len(module.__doc__) > 40


def test_dtype_names_map_to_torch_dtypes_and_bad_names_are_named():
    import torch

    from shared.dtypes import torch_dtype

    assert [torch_dtype(name) for name in ("float32", "bfloat16", "float16")] == [
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ]
    with pytest.raises(ValueError, match="PolicySpec.dtype must be one of float32, bfloat16, float16, got 'fp8'"):
        torch_dtype("fp8", "PolicySpec.dtype")


# Which stage packages each package may import (docs/DESIGN.md, "The stages"): shared is below every stage,
# data_synthesis below the learners, the policy knows rewards only through the `Reward` protocol and configs'
# class_path, and benchmarks sit on top. Loading a pipeline component by the class name in its model_index.json
# is data, not an import, and is not seen here.
ALLOWED_STAGE_IMPORTS = {
    "shared": {"shared"},
    "data_synthesis": {"data_synthesis", "shared"},
    "reward_model": {"reward_model", "data_synthesis", "shared"},
    "rl_policy": {"rl_policy", "data_synthesis", "shared"},
    "benchmarks": set(PACKAGES),
}


def stage_imports(source: Path) -> set[tuple[str, int]]:
    """(imported stage package, line) of every static import of a stage package in `source`, at any depth."""
    return {
        (module.split(".")[0], line) for module, line in imported_modules(source) if module.split(".")[0] in PACKAGES
    }


@pytest.mark.parametrize("package", sorted(ALLOWED_STAGE_IMPORTS))
def test_stage_packages_import_only_what_the_layering_allows(package):
    broken = [
        f"{source.relative_to(REPO)}:{line} imports {imported}"
        for source in sorted((REPO / package).rglob("*.py"))
        for imported, line in sorted(stage_imports(source))
        if imported not in ALLOWED_STAGE_IMPORTS[package]
    ]
    assert not broken, "imports that break the layering:\n" + "\n".join(broken)


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "module.py"
    lines = ["import torch", "", "def f():", "    from reward_model.scorer import Scorer", "    import benchmarks"]
    source.write_text("\n".join(lines) + "\n")
    assert stage_imports(source) == {("reward_model", 4), ("benchmarks", 5)}


MAX_FILE_BYTES = 16 * 1024 * 1024  # the repository's limit per committed file (checkpoints included)


def test_every_committed_file_is_under_the_size_limit():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = [REPO / name for name in listed.decode().split("\0") if name]
    too_big = [
        (str(p.relative_to(REPO)), p.stat().st_size) for p in paths if p.is_file() and p.stat().st_size > MAX_FILE_BYTES
    ]
    assert not too_big, f"files over {MAX_FILE_BYTES} bytes: {too_big}"
