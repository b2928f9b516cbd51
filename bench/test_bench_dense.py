"""Dense layers (the seed's stack P -> 64 (relu) -> 64 (tanh) -> P at P = 784 and 64, one 4096x4096
relu layer): the fused recgen.nn.Linear against torch.nn eager, torch._addmm_activation (forward
only while it has no autograd), torch.compile and the reference; fwd and fwd+bwd."""

import pytest
from conftest import cases, family_providers, run_case


@pytest.mark.parametrize("provider", family_providers("dense"))
@pytest.mark.parametrize("case", cases("dense"))
def test_dense(benchmark, case, pass_, provider):
    run_case(benchmark, case, pass_, provider)
