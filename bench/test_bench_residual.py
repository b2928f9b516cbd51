"""Residual blocks (BatchNorm BasicBlock, InstanceNorm generator block; channels-last): every
provider, fwd and fwd+bwd, train and eval."""

import pytest
from conftest import cases, family_providers, run_case


@pytest.mark.parametrize("provider", family_providers("residual"))
@pytest.mark.parametrize("case", cases("residual"))
def test_residual(benchmark, case, pass_, provider):
    run_case(benchmark, case, pass_, provider)
