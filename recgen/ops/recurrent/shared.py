"""Helpers shared by the recurrence launchers of every cell."""

from __future__ import annotations

import torch

from recgen.ops.common.tiling import BATCH_ROWS


def ping_pong_state(first: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The kernels' (D, 2, B, W) state scratch, float32 unless `dtype` says otherwise: slot 0
    holds `first` (h0, or dh_n in a backward), each step reads one slot and writes the other;
    slot T % 2 ends with the result."""
    D, B, W = first.shape
    state = torch.empty((D, 2, B, W), device=first.device, dtype=dtype)
    state[:, 0].copy_(first)
    return state


def lengths_arg(lengths, like: torch.Tensor) -> torch.Tensor:
    """The kernels take int32 lengths on the data's device; a dummy pointer when there are none."""
    if lengths is None:
        return torch.empty(1, dtype=torch.int32, device=like.device)
    return lengths.to(device=like.device, dtype=torch.int32)


def h_prev_sequence(y: torch.Tensor, h0: torch.Tensor, lengths, reverse: bool) -> torch.Tensor:
    """The state each step started from, h_{t-1} in the direction of travel, as (T, B, P).

    Used for the recurrent weight gradient dW_hh = sum_t dgates_t^T h_{t-1}. Padding positions
    get arbitrary values: their gate gradients are zero.
    """
    h0 = h0.to(y.dtype).unsqueeze(0)
    if not reverse:
        return torch.cat([h0, y[:-1]], dim=0)[:y.shape[0]]  # [:T] keeps T=0 empty
    shifted = torch.cat([y[1:], h0], dim=0)
    if lengths is None:
        return shifted
    T = y.shape[0]
    t = torch.arange(T, device=y.device).unsqueeze(1)
    first = (t == (lengths.to(y.device).long() - 1).unsqueeze(0)).unsqueeze(-1)
    return torch.where(first, h0, shifted)


def zeros_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    """Autograd passes None for outputs that did not reach the loss."""
    return torch.zeros_like(like) if grad is None else grad


def summed_bias(b_ih, b_hh):
    """b_ih + b_hh folded into the input projection; either may be None."""
    if b_ih is None or b_hh is None:
        return b_hh if b_ih is None else b_ih
    return b_ih + b_hh


# ---- layers with D directions in one launch ----------------------------------------------
# Per-direction tensors are stacked on a leading D axis; the input projection of all
# directions is one matmul whose last dimension holds the D gate blocks side by side, and the
# output (T, B, D*P) is written by the kernels in place, as torch.nn lays it out.



def layer_grid(batch: int, directions: int) -> tuple:
    """One program per tile of BATCH_ROWS batch rows and per direction."""
    return ((batch + BATCH_ROWS - 1) // BATCH_ROWS, directions)


def projected_inputs(x, w_ih, b_ih, b_hh, fold_hidden_bias: bool):
    """x (T, B, I) -> xw (T, B, D*G*H) for the D directions' (w_ih, b_ih, b_hh) lists: one matmul.
    fold_hidden_bias adds b_hh too (LSTM, RNN); GRU keeps b_hh for inside the kernel."""
    biases = [summed_bias(bi, bh) if fold_hidden_bias else bi for bi, bh in zip(b_ih, b_hh)]
    bias = None if biases[0] is None else torch.cat(biases)
    weight = w_ih[0] if len(w_ih) == 1 else torch.cat(w_ih)
    return torch.nn.functional.linear(x, weight, bias)


def stacked(tensors):
    """(D, ...) from a list of D per-direction tensors, or None when they are None."""
    if tensors[0] is None:
        return None
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def direction_major(t: torch.Tensor, directions: int) -> torch.Tensor:
    """(T, B, D*X) -> (D, T, B, X) contiguous, as the backward kernels read output gradients."""
    T, B, DX = t.shape
    return t.view(T, B, directions, DX // directions).permute(2, 0, 1, 3).contiguous()


def directions_side_by_side(t: torch.Tensor) -> torch.Tensor:
    """(D, T, B, X) -> (T, B, D*X): the gradient of the input projection, all directions."""
    D, T, B, X = t.shape
    return t[0] if D == 1 else t.permute(1, 2, 0, 3).reshape(T, B, D * X)


def h_prev_directions(y, h0, lengths, first_reverse: bool) -> torch.Tensor:
    """(D, T, B, P): the state each step of each direction started from (see h_prev_sequence)."""
    D, P = h0.shape[0], h0.shape[2]
    return torch.stack([h_prev_sequence(y[..., d * P:(d + 1) * P], h0[d], lengths,
                                        bool((int(first_reverse) + d) % 2)) for d in range(D)])


def bmm_t(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over (T, B) of a^T b for (D, T, B, X) and (D, T, B, Y) -> (D, X, Y): weight gradients
    as one matrix product per direction over all steps."""
    D, T, B, X = a.shape
    return torch.bmm(a.reshape(D, T * B, X).transpose(1, 2), b.reshape(D, T * B, b.shape[-1]).to(a.dtype))


def recomputed_grads(cell: str, grads: tuple, inputs: tuple, needs: tuple, lengths, first_reverse: bool) -> tuple:
    """A layer op's backward when it runs with create_graph=True (double backward: gradient
    penalties, Hessian-vector products): the forward is recomputed from the op's inputs through
    the reference step loop under autograd (float32, or float64 inputs in float64), so the
    gradients it returns are themselves differentiable; the kernels' backward stays the path
    without create_graph. grads: (dy, dh_n[, dc_n]) of the op's outputs, None where none came;
    inputs: (xw, h0, c0, w_hh, b_hh, w_hr), None where absent (b_hh is the GRU's in-kernel bias;
    xw holds the other biases); needs: whether each needs a gradient. Returns one gradient per
    input, None where not needed."""
    from recgen.reference import recurrent_direction

    # One view per argument: a tensor passed twice (h0 as c0) gets each argument's share.
    inputs = tuple(None if t is None else t.view_as(t) for t in inputs)
    xw, h0, c0, w_hh, b_hh, w_hr = inputs
    D = w_hh.shape[0]
    width = xw.shape[-1] // D
    compute = torch.promote_types(xw.dtype, torch.float32)
    at = lambda t, d: None if t is None else t[d].to(compute)  # noqa: E731
    ys, hs, cs = [], [], []
    for d in range(D):
        y, h, c = recurrent_direction(cell, xw[..., d * width:(d + 1) * width].to(compute), at(h0, d), at(c0, d),
                                      None, at(w_hh, d), None, at(b_hh, d), at(w_hr, d), lengths,
                                      bool((int(first_reverse) + d) % 2))
        ys.append(y)
        hs.append(h)
        cs.append(c)
    outputs = (torch.cat(ys, dim=-1), torch.stack(hs), torch.stack(cs) if c0 is not None else None)
    pairs = [(out, g.to(out.dtype)) for out, g in zip(outputs, grads) if g is not None and out is not None]
    wanted = [t for t, need in zip(inputs, needs) if need and t is not None]
    found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                     allow_unused=True) if pairs and wanted else ())
    return tuple(next(found, None) if need and t is not None else None for t, need in zip(inputs, needs))
