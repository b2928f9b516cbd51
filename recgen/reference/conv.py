"""Reference for the fused convolution ops of residual blocks, in plain torch ops (float64-capable).

Tensors are logical NCHW (their memory may be channels_last). Padding is always "same" for the
odd kernel size K: PAD = K // 2, applied after the optional 2x nearest upsampling.

fused_conv2d computes
    a   = act_in((x - in_centre[n, ci]) * in_scale[n, ci] + in_shift[n, ci])   (prologue; missing terms skipped)
    acc = conv2d(pad(upsample(a)), weight, stride)                   (no bias: use out_shift)
    z   = acc * out_scale[co] + out_shift[co] + residual             (epilogue; missing terms skipped)
    out = act_out(z)
and, with stats=True, per (image, channel) the sum of z and its M2, the sum of squared
deviations from its mean (z as stored, rounded to x's dtype), over the output pixels,
in float64 (what a following BatchNorm/InstanceNorm needs, without E[z^2] - E[z]^2
cancellation): (N, CO).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "leaky_relu")
PADDING_MODES = ("zeros", "reflect")


def activation(x: torch.Tensor, act: str, slope: float = 0.01) -> torch.Tensor:
    if act == "none":
        return x
    if act == "relu":
        return F.relu(x)
    if act == "leaky_relu":
        return F.leaky_relu(x, slope)
    raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}")


def fused_conv2d(x, weight, *, stride=1, padding_mode="zeros", upsample=False,
                 in_scale=None, in_shift=None, in_act="none", in_slope=0.01,
                 out_scale=None, out_shift=None, residual=None, out_act="none", out_slope=0.01,
                 stats=False, in_centre=None):
    """x: (N, CI, H, W); weight: (CO, CI, K, K), K odd; in_centre/in_scale/in_shift: (N, CI) or None;
    out_scale/out_shift: (CO,) or None; residual: (N, CO, OH, OW) or None.
    Returns out (N, CO, OH, OW) and, if stats, (sum, m2) each (N, CO) float64."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"unknown padding_mode {padding_mode!r}; expected one of {PADDING_MODES}")
    K = weight.shape[-1]
    a = x
    if in_centre is not None:
        a = a - in_centre[:, :, None, None]
    if in_scale is not None:
        a = a * in_scale[:, :, None, None]
    if in_shift is not None:
        a = a + in_shift[:, :, None, None]
    # The prologue runs in float32 or wider; the conv consumes it in the weight's dtype, as the
    # kernel's tensor-core dot does.
    a = activation(a, in_act, in_slope).to(weight.dtype)
    if upsample:
        a = F.interpolate(a, scale_factor=2, mode="nearest")
    pad = K // 2
    if pad:
        mode = "constant" if padding_mode == "zeros" else "reflect"
        a = F.pad(a, (pad, pad, pad, pad), mode=mode)
    z = F.conv2d(a, weight, stride=stride)
    if out_scale is not None:
        z = z * out_scale[None, :, None, None]
    if out_shift is not None:
        z = z + out_shift[None, :, None, None]
    if residual is not None:
        z = z + residual
    out = activation(z, out_act, out_slope).to(x.dtype)
    if not stats:
        return out
    # Statistics of z as stored, in x's dtype (the kernel rounds the same way): its sum and its
    # sum of squared deviations from its mean (two passes: no cancellation).
    zs = z.to(x.dtype).to(torch.float64)
    z_sum = zs.sum(dim=(2, 3))
    mean = z_sum / (zs.shape[2] * zs.shape[3])
    return out, z_sum, (zs - mean[:, :, None, None]).square().sum(dim=(2, 3))


def affine_act(y, scale=None, shift=None, residual=None, act="none", slope=0.01, centre=None):
    """out = act((y - centre[n, c]) * scale[n, c] + shift[n, c] + residual): the elementwise pass
    that applies a batch/instance normalisation once its statistics are known (the centre, e.g.
    the mean, subtracted first, so that no large y * scale and shift have to cancel).
    y: (N, C, H, W); centre, scale, shift: (N, C). The output keeps y's dtype: centre/scale/shift
    are statistics (often float32) and do not promote it."""
    z = y
    if centre is not None:
        z = z - centre[:, :, None, None]
    if scale is not None:
        z = z * scale[:, :, None, None]
    if shift is not None:
        z = z + shift[:, :, None, None]
    if residual is not None:
        z = z + residual
    return activation(z, act, slope).to(y.dtype)
