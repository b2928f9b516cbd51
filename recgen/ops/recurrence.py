"""Helpers shared by the recurrence launchers of every cell."""

from __future__ import annotations

import torch



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


def grid_for(batch: int, cfg) -> tuple:
    """One program per tile of cfg.block_b batch rows."""
    return ((batch + cfg.block_b - 1) // cfg.block_b,)


def summed_bias(b_ih, b_hh):
    """b_ih + b_hh folded into the input projection; either may be None."""
    if b_ih is None or b_hh is None:
        return b_hh if b_ih is None else b_ih
    return b_ih + b_hh
