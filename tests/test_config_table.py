"""The launchers' tile choices against the committed sm_90 resource table (bench/config_resources.py,
which writes it, and whose --replay and --recompile modes these tests run).

- The rule, run through the launchers on the check and --quick grids with the committed Triton
  3.9 table answering for the compiler, makes exactly the table's launches: a changed tile rule
  or candidate list that the table does not cover fails here (then recompute the table).
- Every launch the table records on the check and --quick grids (every kernel, in the resident,
  streamed and persistent modes) is compiled again for sm_90 with this machine's Triton, and a
  spill the table does not record fails: a new spill from a kernel change or a Triton upgrade.
  (The whole bench grid: `python bench/config_resources.py --recompile TABLE`, after a kernel change.)

Both run in a subprocess without TRITON_INTERPRET (kernels must be JITFunctions to compile).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "bench" / "results" / "sm90-configs_2026-12-02" / "configs-triton3.9.0.json"


def _script(*args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "config_resources.py"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=1200)


def test_the_rule_makes_the_tables_launches():
    run = _script("--replay", TABLE, "--grid", "check", "--grid", "quick")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "the rule makes the table's launches" in run.stdout


def test_no_new_spill_in_the_chosen_tiles():
    run = _script("--recompile", TABLE, "--grid", "check", "--grid", "quick", "--workers", 2)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    compiled = int(run.stdout.split("recompiled ")[1].split()[0])
    assert compiled >= 17 and "no new spill" in run.stdout  # every kernel at least once
