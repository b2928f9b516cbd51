"""Recurrent layers (lstm, gru, rnn_tanh; I = H, 1 layer): every provider, fwd and fwd+bwd."""

import pytest
from conftest import cases, family_providers, run_case


@pytest.mark.parametrize("provider", family_providers("recurrent"))
@pytest.mark.parametrize("case", cases("recurrent"))
def test_recurrent(benchmark, case, pass_, provider):
    run_case(benchmark, case, pass_, provider)
