"""Reference residual block: the block's own torch modules and plain torch ops, no fusion.

    out = act_out(skip(up(x)) + residual_scale * norm2(conv2(drop(act(norm1(conv1(up(x))))))))

`up` is a 2x nearest upsampling when requested; skip is the identity or a 1x1 conv + norm.
Norm modules are called as they are, so BatchNorm's running statistics update exactly as torch
does. Float64-capable.
"""

from __future__ import annotations

import torch.nn.functional as F

from recgen.reference.conv import activation as apply_activation


def conv_same(x, weight, bias, stride, padding_mode):
    """Odd-kernel "same" convolution with zero or reflection padding."""
    pad = weight.shape[-1] // 2
    if pad:
        x = F.pad(x, (pad,) * 4, mode="constant" if padding_mode == "zeros" else "reflect")
    return F.conv2d(x, weight, bias, stride=stride)


def residual_block(x, conv1, norm1, conv2, norm2, skip_conv, skip_norm, *, training, stride=1,
                   padding_mode="zeros", upsample=False, activation="relu", negative_slope=0.01,
                   out_activation=True, residual_scale=1.0, dropout=0.0):
    """Same arguments as recgen.functional.residual.residual_block (conv* carry .weight and .bias)."""
    if upsample:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    ident = lambda t: t  # noqa: E731
    norm1, norm2, skip_norm = (n if n is not None else ident for n in (norm1, norm2, skip_norm))
    h = conv_same(x, conv1.weight, conv1.bias, stride, padding_mode)
    h = apply_activation(norm1(h), activation, negative_slope)
    if dropout > 0:
        h = F.dropout(h, dropout, training)
    h = norm2(conv_same(h, conv2.weight, conv2.bias, 1, padding_mode))
    skip = x if skip_conv is None else skip_norm(conv_same(x, skip_conv.weight, skip_conv.bias, stride, "zeros"))
    out = skip + residual_scale * h
    return apply_activation(out, activation, negative_slope) if out_activation else out
