"""bench/device_env.sh: the device scripts' import check, and the install of carried wheels when a module is missing."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _device_env(cwd: Path, *modules: str, site: Path | None = None) -> subprocess.CompletedProcess:
    script = f"python={sys.executable}; source {ROOT / 'bench/device_env.sh'}; device_env {' '.join(modules)}; "
    script += 'status=$?; echo "PYTHONPATH=${PYTHONPATH:-}"; exit $status'
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    if site is not None:
        env["DEVICE_SITE"] = str(site)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _wheel(folder: Path, module: str) -> None:
    """A minimal pure-Python wheel holding one module that defines VALUE = 7."""
    folder.mkdir(parents=True)
    dist = f"{module}-1.0.dist-info"
    files = {
        f"{module}.py": "VALUE = 7\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{module}-1.0-py3-none-any.whl", "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{dist}/RECORD", record)


def test_present_modules_install_nothing(tmp_path):
    _wheel(tmp_path / ".whl", "spatialscore_carried")
    result = _device_env(tmp_path, "json", "zipfile", site=tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installing" not in result.stdout
    assert not (tmp_path / "site").exists()


def test_a_missing_module_without_wheels_is_named_in_one_line(tmp_path):
    result = _device_env(tmp_path, "json", "spatialscore_absent_module")
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("==")]
    assert lines == [
        f"== cannot import: spatialscore_absent_module (under {sys.executable}). "
        "Run 'bash bench/device_wheels.sh' here and carry .whl in the call"
    ]


def test_carried_wheels_are_installed_when_a_module_is_missing(tmp_path):
    _wheel(tmp_path / ".whl", "spatialscore_carried")
    site = tmp_path / "site"
    result = _device_env(tmp_path, "json", "spatialscore_carried", site=site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"installing the wheels of .whl/ into {site}" in result.stdout
    assert (site / "spatialscore_carried.py").read_text() == "VALUE = 7\n"
    assert result.stdout.splitlines()[-1] == f"PYTHONPATH={site}"


def test_wheels_that_do_not_provide_the_module_still_fail(tmp_path):
    _wheel(tmp_path / ".whl", "spatialscore_carried")
    result = _device_env(tmp_path, "spatialscore_other", site=tmp_path / "site")
    assert result.returncode == 1
    assert "== cannot import: spatialscore_other" in result.stdout
