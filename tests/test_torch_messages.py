"""torch.nn's exception type and words first, recgen's detail after: every bad input of the
tables in test_bad_input.py goes through torch.nn and through recgen's own checks (the kernels'
path, which validates before any launch), and the two must agree."""

import pytest
import torch
from torch import nn

import recgen
from test_bad_input import CELL_CASES, DIVERGENT_CASES, MODULE_CASES, I, H

# Where torch's words come from its CPU kernels rather than its module (oneDNN's or the matmul's
# dtype complaint, different on CUDA): the exception type must agree, recgen keeps its own words.
DEVICE_WORDED = {"lstm-h0-dtype", "gru-h0-dtype", "rnn-h0-dtype", "rnncell-input-dtype",
                 "grucell-input-dtype", "lstmcell-input-dtype", "grucell-hx-dtype"}


def _raised(call):
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the exception is the result under test
        return error
    raise AssertionError("no exception raised")


def _table():
    rows = [(c[0], c[1], c[2], c[3]) for c in MODULE_CASES]
    rows += [(c[0], c[1], {}, c[2]) for c in CELL_CASES + DIVERGENT_CASES]
    return [pytest.param(*row, id=row[0]) for row in rows]


@pytest.mark.parametrize("case,cls,kw,build", _table())
def test_recgen_raises_torchs_type_and_words_first(case, cls, kw, build):
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H, **kw)
    rec = getattr(recgen.nn, cls)(I, H, **kw)
    args = build()
    expected = _raised(lambda: ref(*args))
    recgen.set_backend("triton")  # recgen's own checks, as on the GPU
    got = _raised(lambda: rec(*args))
    assert isinstance(got, type(expected)), (type(got), type(expected), got)
    if case not in DEVICE_WORDED:
        words = str(expected).splitlines()[0]
        assert str(got).startswith(words), f"torch: {words!r}\nrecgen: {str(got)!r}"
