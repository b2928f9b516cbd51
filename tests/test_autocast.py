"""Under torch.autocast the modules run in the autocast dtype, as torch.nn's RNNs do."""

import pytest
import torch

import recgen
from recgen.testing import TOLERANCES, max_rel_error


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_autocast_bf16_matches_torch(name, device):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(6, 9, num_layers=2).to(device)
    rec = getattr(recgen.nn, name)(6, 9, num_layers=2).to(device)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 6, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        try:
            y_ref, _ = ref(x)
        except RuntimeError as error:  # torch's own op, not recgen's: nothing to compare against
            if "primitive descriptor" not in str(error):
                raise
            pytest.skip(f"torch's bf16 {name} does not run on this CPU (oneDNN: {str(error)[:80]})")
        y_rec, _ = rec(x)
    assert y_rec.dtype == y_ref.dtype  # bf16, except GRU on the CPU where torch stays fp32
    # torch computes in bf16 internally even where it returns fp32: compare at bf16 precision.
    assert max_rel_error(y_rec, y_ref) <= TOLERANCES[torch.bfloat16]
    y_rec.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in rec.parameters())


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_follow_torch_autocast(name, device):
    torch.manual_seed(0)
    ref = getattr(torch.nn, name)(4, 5).to(device)
    rec = getattr(recgen.nn, name)(4, 5).to(device)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        out_ref, out_rec = ref(x), rec(x)
    out_ref = out_ref[0] if isinstance(out_ref, tuple) else out_ref
    out_rec = out_rec[0] if isinstance(out_rec, tuple) else out_rec
    assert out_rec.dtype == out_ref.dtype
    assert max_rel_error(out_rec, out_ref) <= TOLERANCES[torch.bfloat16]
