"""The package's layout: the library (recgen, recgen.nn, recgen.functional, recgen.convert, ...)
does not import the application (recgen.app), and recgen.models remains as a deprecated alias of
recgen.app.models."""

import subprocess
import sys
import warnings

import recgen.app.models


def test_the_library_does_not_import_the_application():
    code = ("import sys\n"
            "import recgen, recgen.nn, recgen.functional, recgen.convert\n"
            "print(sorted(name for name in sys.modules if name == 'recgen.app' or name.startswith('recgen.app.')))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]", f"the library imported the application: {run.stdout.strip()}"


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
