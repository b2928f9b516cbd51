"""Kernel-vs-reference comparison shared by the test suite and `recgen check`.

TOLERANCES is the one per-dtype table: the largest accepted error of any output or gradient,
relative to that tensor's largest reference magnitude (so one outlier-free scale per tensor).
The reference runs in float64 on the same (dtype-rounded) inputs.
"""

from __future__ import annotations

import torch

from recgen.backend import backend
from recgen.functional import run_direction
from recgen.reference import CELL_GATES, recurrent_direction

TOLERANCES = {
    torch.float32: 2e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|; NaN anywhere in `actual` gives inf."""
    actual = actual.detach().to(torch.float64).cpu()
    expected = expected.detach().to(torch.float64).cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all() and torch.isfinite(expected).all():
        return float("inf")
    scale = expected.abs().max().item() if expected.numel() else 0.0
    return (actual - expected).abs().max().item() / max(scale, 1e-6) if expected.numel() else 0.0


def random_direction_inputs(cell, T, B, I, H, proj=0, bias=True, dtype=torch.float32,
                            device="cpu", generator=None):
    """Fresh inputs and weights for one layer and direction, scaled like torch's init."""
    G, P = CELL_GATES[cell], proj or H
    k = H ** -0.5

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1) * scale).to(
            device=device, dtype=dtype)

    return {
        "x": rnd(T, B, I), "h0": rnd(B, P), "c0": rnd(B, H) if cell == "lstm" else None,
        "w_ih": rnd(G * H, I, scale=k), "w_hh": rnd(G * H, P, scale=k),
        "b_ih": rnd(G * H, scale=k) if bias else None, "b_hh": rnd(G * H, scale=k) if bias else None,
        "w_hr": rnd(P, H, scale=k) if proj else None,
    }


def compare_direction(cell, inputs, lengths=None, reverse=False, grad_seed=0):
    """Run the Triton op and the float64 reference on the same inputs; return
    {name: max relative error} for every output and every input gradient."""
    names = [n for n, v in inputs.items() if v is not None]
    tri = {n: inputs[n].detach().clone().requires_grad_() for n in names}
    ref = {n: inputs[n].detach().to(torch.float64).requires_grad_() for n in names}
    order = ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    with backend("triton"):
        out_t = run_direction(cell, *[tri.get(n) for n in order], lengths=lengths, reverse=reverse)
    out_r = recurrent_direction(cell, *[ref.get(n) for n in order], lengths=lengths, reverse=reverse)
    gen = torch.Generator().manual_seed(grad_seed)
    errors, pairs = {}, []
    for label, a, b in zip(("y", "h_n", "c_n"), out_t, out_r):
        if b is None:
            continue
        errors[label] = max_rel_error(a, b)
        g = torch.rand(b.shape, generator=gen, dtype=torch.float64) * 2 - 1
        pairs.append((a, b, g))
    torch.autograd.backward([a for a, _, _ in pairs], [g.to(a.device, a.dtype) for a, _, g in pairs])
    torch.autograd.backward([b for _, b, _ in pairs], [g for _, _, g in pairs])
    for n in names:
        errors[f"d{n}"] = max_rel_error(tri[n].grad, ref[n].grad)
    return errors
