"""Every code block of the README runs as written.

- a python block preceded by `<!-- example: NAME -->` is executed in a fresh namespace
  (`<!-- example: NAME gpu -->` only where CUDA is available);
- a bash block preceded by `<!-- example: NAME shell -->` has each command line run in a fresh
  folder, as a CPU user runs it (no TRITON_INTERPRET: recgen's `auto` backend picks torch's op);
- the one other block is the two fresh-machine commands (`# main job`, `# tests`), which CI's
  `.ci/run` and the fresh-venv check run; no other block is allowed.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE = re.compile(r"<!-- example: (\S+)( gpu| shell)? -->\n```(python|bash)\n(.*?)```", re.S)
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def examples(kind):
    found = [(name, mode.strip(), code) for name, mode, lang, code in EXAMPLE.findall(README.read_text())
             if (lang == "bash") == (kind == "shell")]
    assert found, f"no {kind} examples found in README.md"
    return [pytest.param(code, id=name, marks=[pytest.mark.gpu] if mode == "gpu" else [])
            for name, mode, code in found]


@pytest.mark.parametrize("code", examples("python"))
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


@pytest.mark.parametrize("code", examples("shell"))
def test_readme_shell_example_runs(code, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "RECGEN_BACKEND")}
    bindir = pathlib.Path(sys.executable).parent  # the `recgen` console script of this install
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    for line in code.strip().splitlines():
        command = shlex.split(line, comments=True)
        run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, (line, run.stdout[-2000:], run.stderr[-3000:])


def test_every_readme_code_block_is_run():
    text = README.read_text()
    blocks = BLOCK.findall(text)
    marked = EXAMPLE.findall(text)
    install = [code for lang, code in blocks if "# main job" in code and "# tests" in code]
    assert len(install) == 1
    assert len(blocks) == len(marked) + 1, "a README code block is neither an example nor the install block"
    assert {"usage", "residual", "compile", "amp", "cuda-graph", "train"} <= {m[0] for m in marked}
    assert text.count("<!-- example:") == len(marked)
