"""The README's usage examples run as written. A python block preceded by
`<!-- example: NAME -->` is executed in a fresh namespace; `<!-- example: NAME gpu -->` only
where CUDA is available."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
EXAMPLE = re.compile(r"<!-- example: (\S+)( gpu)? -->\n```python\n(.*?)```", re.S)


def examples():
    found = EXAMPLE.findall(README.read_text())
    assert found, "no examples found in README.md"
    return [pytest.param(code, id=name, marks=[pytest.mark.gpu] if gpu else []) for name, gpu, code in found]


@pytest.mark.parametrize("code", examples())
def test_readme_example_runs(code):
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


def test_all_documented_examples_are_collected():
    names = [name for name, _, _ in EXAMPLE.findall(README.read_text())]
    assert {"compile", "amp", "cuda-graph"} <= set(names)
    assert README.read_text().count("<!-- example:") == len(names)
