"""Kernel-vs-reference comparison shared by the test suite and `recgen check`.

TOLERANCES is the one per-dtype table: the largest accepted error of any output or gradient,
relative to that tensor's largest reference magnitude (so one outlier-free scale per tensor).
The reference runs in float64 on the same (dtype-rounded) inputs.
"""

from __future__ import annotations

import contextlib

import torch

from recgen.backend import backend
from recgen.functional import run_direction
from recgen.reference import CELL_GATES, recurrent_direction

TOLERANCES = {
    torch.float32: 2e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}
# float32 layers with TF32 dots (torch's default for its RNNs and convolutions on CUDA, which
# recgen follows): 10 mantissa bits in the products, as float16.
TF32_TOLERANCE = 5e-3
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@contextlib.contextmanager
def full_float32():
    """No TF32 anywhere inside (torch's RNNs, convolutions and matmuls, and so recgen's kernels,
    which follow torch's flags: recgen.ops.common.launch.torch_allows_tf32): float32 comparisons are
    against full float32, and TOLERANCES[torch.float32] assumes it. Restores the flags after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    # The ops' own settings override their backend's and the global one. (With these set, torch
    # refuses to read the legacy cudnn.allow_tf32, so it is not touched where they exist.)
    settings = [(obj, "fp32_precision") for obj in (getattr(cudnn, "rnn", None), getattr(cudnn, "conv", None), matmul)
                if hasattr(obj, "fp32_precision")]
    if len(settings) < 3:  # a torch without fp32_precision: the legacy flags
        settings = [(cudnn, "allow_tf32"), (matmul, "allow_tf32")]
    saved = [getattr(obj, name) for obj, name in settings]
    for obj, name in settings:
        setattr(obj, name, "ieee" if name == "fp32_precision" else False)
    try:
        yield
    finally:
        for (obj, name), value in zip(settings, saved):
            setattr(obj, name, value)


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


def _errors_of(pairs: dict, tri_leaves: dict, ref_leaves: dict) -> dict:
    """Relative errors of output pairs and of the gradients of matching leaves."""
    errors = {name: max_rel_error(a, b) for name, (a, b) in pairs.items()}
    errors.update({f"d{k}": max_rel_error(tri_leaves[k].grad, ref_leaves[k].grad) for k in tri_leaves})
    return errors


def compare_fused_conv(x_shape, co, k, kwargs, present, dtype=torch.float32, device="cpu", seed=0):
    """recgen's fused_conv2d (Triton, with autograd) vs the float64 reference: errors of the
    outputs and of the gradients of x, weight and the optional tensors named in `present`
    (in_centre, in_scale, in_shift, out_scale, out_shift, residual)."""
    from recgen.functional import fused_conv2d
    from recgen.reference.conv import fused_conv2d as reference_fused_conv2d

    gen = torch.Generator().manual_seed(seed)
    N, CI, H, W = x_shape
    up, stride = 2 if kwargs.get("upsample") else 1, kwargs.get("stride", 1)
    OH, OW = (up * H - 1) // stride + 1, (up * W - 1) // stride + 1

    def rnd(*shape, low=-1.0, high=1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (high - low) + low).to(dtype)

    made = {"x": rnd(N, CI, H, W), "weight": rnd(co, CI, k, k) / k,
            "in_centre": rnd(N, CI), "in_scale": rnd(N, CI, low=0.5, high=1.5), "in_shift": rnd(N, CI),
            "out_scale": rnd(co, low=0.5, high=1.5), "out_shift": rnd(co), "residual": rnd(N, co, OH, OW)}
    inputs = {n: v for n, v in made.items() if n in ("x", "weight") or n in present}
    tri = {n: v.detach().clone().to(device) for n, v in inputs.items()}
    tri["x"] = tri["x"].contiguous(memory_format=torch.channels_last)
    tri = {n: v.requires_grad_() for n, v in tri.items()}
    ref = {n: v.to(torch.float64).requires_grad_() for n, v in inputs.items()}
    with backend("triton"):
        out_t = fused_conv2d(**tri, **kwargs)
    out_r = reference_fused_conv2d(**ref, **kwargs)
    out_t = out_t if isinstance(out_t, tuple) else (out_t,)
    out_r = out_r if isinstance(out_r, tuple) else (out_r,)
    grads = [torch.rand(o.shape, generator=gen, dtype=torch.float64) - 0.5 for o in out_r]
    torch.autograd.backward(out_t, [g.to(o.device, o.dtype) for g, o in zip(grads, out_t)])
    torch.autograd.backward(out_r, grads)
    names = ["out", "sum", "m2"]
    return _errors_of({names[i]: p for i, p in enumerate(zip(out_t, out_r))}, tri, ref)


def compare_dense(lead: tuple, I: int, O: int, activation: str = "none", negative_slope: float = 0.01,
                  bias: bool = True, residual: bool = False, dtype=torch.float32, device="cpu", seed=0) -> dict:
    """recgen's linear_act (Triton, with autograd) vs the float64 reference
    (recgen.reference.dense.linear_act) on the same dtype-rounded inputs: errors of the output
    and of the gradients of x (shape (*lead, I)), weight (O, I), bias and residual (*lead, O)."""
    from recgen.functional import linear_act
    from recgen.reference.dense import linear_act as reference_linear_act

    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return ((torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale).to(dtype)

    k = I ** -0.5  # nn.Linear's init range
    made = {"x": rnd(*lead, I, scale=2.0), "weight": rnd(O, I, scale=k), "bias": rnd(O, scale=k) if bias else None,
            "residual": rnd(*lead, O) if residual else None}
    inputs = {n: v for n, v in made.items() if v is not None}
    tri = {n: v.detach().clone().to(device).requires_grad_() for n, v in inputs.items()}
    ref = {n: v.to(torch.float64).requires_grad_() for n, v in inputs.items()}
    kwargs = dict(activation=activation, negative_slope=negative_slope)
    with backend("triton"):
        out_t = linear_act(tri["x"], tri["weight"], tri.get("bias"), residual=tri.get("residual"), **kwargs)
    out_r = reference_linear_act(ref["x"], ref["weight"], ref.get("bias"), residual=ref.get("residual"), **kwargs)
    grad = torch.rand(out_r.shape, generator=gen, dtype=torch.float64) - 0.5
    out_t.backward(grad.to(out_t.device, out_t.dtype))
    out_r.backward(grad)
    return _errors_of({"out": (out_t, out_r)}, tri, ref)


def randomise_norms(block: torch.nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so eval-mode folding is exercised."""
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) and m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def compare_block(block: torch.nn.Module, x: torch.Tensor, train: bool, dtype=torch.float32,
                  device="cpu", seed=0) -> dict:
    """A recgen residual block (on `device`, `dtype`) vs the reference block on a float64 copy:
    errors of the output, of every running statistic, and of the gradients of the input and of
    every parameter. Both start from the same state."""
    import copy

    from recgen.reference.residual import residual_block

    block = block.to(device, dtype).train(train)
    ref = copy.deepcopy(block).to(torch.float64)
    xr = x.detach().to(torch.float64).requires_grad_()
    xt = x.detach().to(device, dtype).requires_grad_()
    with backend("triton"):
        out = block(xt)
    expected = residual_block(xr, training=train, **ref._block_parts())
    grad = torch.rand(expected.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.5
    out.backward(grad.to(out.device, out.dtype))
    expected.backward(grad)
    errors = {"out": max_rel_error(out, expected), "dx": max_rel_error(xt.grad, xr.grad)}
    for (name, p), q in zip(block.named_parameters(), ref.parameters()):
        errors[f"d{name}"] = max_rel_error(p.grad, q.grad)
    for (name, b), c in zip(block.named_buffers(), ref.buffers()):
        errors[name] = max_rel_error(b.float(), c.float())
    return errors
