"""What users install is what is tested: the wheel built from this checkout, installed into a
fresh folder, imports every package of the source tree from there (not from the checkout) and
runs the command line, whatever install the rest of the suite uses."""

import configparser
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def source_packages() -> set:
    """Every package of the source tree: each folder of recgen/ with an __init__.py, and kernels/
    with each of its folders with an __init__.py (installed as recgen.kernels, recgen.kernels.<folder>)."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "recgen").rglob("__init__.py")}
    kernels = {".".join(("recgen",) + p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "kernels").rglob("__init__.py")}
    return found | kernels


def test_setup_cfg_lists_every_package_of_the_source_tree():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    assert listed == source_packages()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(target folder, environment) of the wheel built from the checkout, installed alone."""
    work = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheels = list((work / "dist").glob("recgen-*.whl"))
    assert len(wheels) == 1, wheels
    target = work / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                              str(target), str(wheels[0])], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]
    # The target first on the path; no interpreter, so recgen runs as a CPU user meets it.
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RECGEN_BACKEND")}
    env["PYTHONPATH"] = str(target)
    return target, env, work


def _run(args, env, cwd, timeout=300):
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_wheel_imports_every_package_from_the_install(installed):
    target, env, work = installed
    names = sorted(source_packages())
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    print(name, importlib.import_module(name).__file__)\n")
    run = _run([sys.executable, "-c", code], env, work)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.split("\n")[:-1]
    assert len(lines) == len(names)
    for line in lines:
        name, path = line.split(" ", 1)
        assert pathlib.Path(path).is_relative_to(target), f"{name} imported from {path}, not the wheel"
    assert not (target / "kernels").exists(), "kernels/ must install as recgen.kernels only"


def test_wheel_command_line_and_one_epoch_training(installed):
    target, env, work = installed
    script = target / "bin" / "recgen"
    for args in ([str(script), "--help"], [sys.executable, "-m", "recgen", "--help"],
                 [sys.executable, "-m", "recgen", "--version"]):
        run = _run(args, env, work)
        assert run.returncode == 0, (args, run.stderr[-2000:])
        assert "recgen" in run.stdout
    out = work / "run"
    run = _run([str(script), "train", "--model", "row-lstm", "--epochs", "1", "--out", str(out),
                "--no-progress"], env, work, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (out / "checkpoint.pt").is_file() and (out / "samples_epoch001.png").is_file()
