"""The package's layout: the library (recgen, recgen.nn, recgen.functional, recgen.convert, ...)
imports neither the application (recgen.app) nor the tooling (recgen.tools: the benchmark, its
report, the performance model, the ahead-of-time compile and the tile capture), not even lazily,
and recgen.models remains as a deprecated alias of recgen.app.models."""

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import recgen.app.models

ROOT = Path(__file__).resolve().parents[1]
# What may import the tooling: the tooling itself, the application, and the command line, which
# reaches recgen.tools lazily for `recgen bench`.
NOT_LIBRARY = ("recgen/tools/", "recgen/app/", "recgen/cli.py")


def test_the_library_does_not_import_the_application():
    code = ("import sys\n"
            "import recgen, recgen.nn, recgen.functional, recgen.convert\n"
            "print(sorted(name for name in sys.modules if name == 'recgen.app' or name.startswith('recgen.app.')\n"
            "             or name == 'recgen.tools' or name.startswith('recgen.tools.')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]", f"the library imported the application or the tooling: {run.stdout.strip()}"


def _module_name(relative: str) -> str:
    """The dotted name of a source file: kernels/ is installed as recgen.kernels (setup.cfg)."""
    parts = relative.removesuffix(".py").split("/")
    if parts[0] == "kernels":
        parts.insert(0, "recgen")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def tools_imports(source: str, module: str, is_package: bool = False) -> list:
    """The imports of recgen.tools in `source`, the text of `module`, anywhere in it (at the top,
    inside functions, relative, or through importlib.import_module / __import__ with a literal
    name), as (line, imported name)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []

    def check(line: int, name: str) -> None:
        if name == "recgen.tools" or name.startswith("recgen.tools."):
            found.append((line, name))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # from recgen.tools import x, and from recgen import tools
                check(node.lineno, f"{base}.{alias.name}")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if called in ("import_module", "__import__"):
                check(node.lineno, node.args[0].value)
    return found


def _library_sources() -> list:
    files = sorted((ROOT / "recgen").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    relative = [str(f.relative_to(ROOT)) for f in files]
    return [r for r in dict.fromkeys(relative) if not r.startswith(NOT_LIBRARY)]


def test_no_library_module_imports_the_tooling():
    sources = _library_sources()
    assert "recgen/ops/common/tiling.py" in sources and "recgen/ops/common/launch.py" in sources
    offending = [f"{path}:{line}: {name}" for path in sources
                 for line, name in tools_imports((ROOT / path).read_text(), _module_name(path),
                                                 path.endswith("__init__.py"))]
    assert not offending, "library modules import the tooling (recgen.tools):\n" + "\n".join(offending)


@pytest.mark.parametrize("source, module", [
    ("import recgen.tools.capture", "recgen.ops.common.tiling"),
    ("from recgen.tools.aot_compile import launch_resources", "recgen.ops.common.tiling"),
    ("from recgen.tools import capture", "recgen.ops.common.tiling"),
    ("from recgen import tools", "recgen.ops.common.tiling"),
    ("def f():\n    from recgen.tools.capture import capture\n", "recgen.ops.common.launch"),
    ("from ...tools import perf_model", "recgen.ops.common.tiling"),
    ("from .. import tools", "recgen.ops"),  # in recgen/ops/__init__.py
    ("import importlib\nimportlib.import_module('recgen.tools.aot_compile')", "recgen.ops.common.launch"),
], ids=["import", "from-module", "from-package", "from-recgen", "lazy", "relative", "relative-package",
        "import_module"])
def test_the_import_rule_sees_every_form_of_import(source, module):
    assert tools_imports(source, module, is_package=module == "recgen.ops")


def test_the_import_rule_passes_the_library_own_imports():
    source = ("from recgen.ops.common.tiling import capturing\nfrom recgen import backend\n"
              "from . import tiling\nimport recgen.toolsmith\n")
    assert tools_imports(source, "recgen.ops.common.launch") == []


def test_the_application_package_itself_imports_nothing():
    code = ("import sys\n"
            "import recgen\n"
            "before = set(sys.modules)\n"
            "import recgen.app\n"
            "print(sorted(set(sys.modules) - before))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "['recgen.app']", run.stdout[-3000:]


def test_recgen_models_is_a_deprecated_alias_of_recgen_app_models(monkeypatch):
    monkeypatch.delitem(sys.modules, "recgen.models", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import recgen.models as alias
    moved = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert [str(w.message) for w in moved] == ["recgen.models moved to recgen.app.models"]
    assert moved[0].filename == __file__, "stacklevel=2: the warning points at the importing line"
    assert alias.__all__ == recgen.app.models.__all__
    for name in recgen.app.models.__all__:
        assert getattr(alias, name) is getattr(recgen.app.models, name), name
    assert alias.GenerativeModel is recgen.app.models.GenerativeModel
