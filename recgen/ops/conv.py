"""Fused convolution of residual blocks: the forward launcher.

Name chain: _conv2d_fwd_kernel -> conv2d_fwd -> torch.ops.recgen.fused_conv2d (autograd:
FusedConv2dFunction, recgen/ops/fused_conv.py) -> recgen.functional.fused_conv2d
-> recgen.nn.ResidualBlock.
conv2d_fwd has exactly the contract of recgen.reference.conv.fused_conv2d (same arguments, same
return values), restricted to what the kernel supports: odd K, stride 1 or 2, float32/float16/
bfloat16 data. Arguments are checked before anything is launched (check_conv2d_fwd, which the
op's fake implementation runs too, so torch.compile raises the same errors while tracing).
"""

from __future__ import annotations

import torch
import triton

from recgen.ops._launch import ACT_CODES, check_power_of_two, dot_flags, new_output, overriding
from recgen.backend import KERNEL_DTYPES
from recgen.ops.tiles import MIN_DOT, launch_chosen, padded, tile_candidates
from recgen.reference.conv import ACTIVATIONS, PADDING_MODES

DTYPES = KERNEL_DTYPES
STRIDES = (1, 2)

_forced: dict = {"blocks": None}


def conv_blocks(M: int, CI: int, CO: int) -> tuple:
    """(BLOCK_M, BLOCK_CI, BLOCK_CO, num_warps) for M output pixels per image.

    Rule: each block is the next power of two of its dimension, at least 16 (tl.dot), capped at
    BLOCK_M 128, BLOCK_CI 32, BLOCK_CO 64: a 128 x 64 float32 accumulator plus the 128 x 32 A and
    32 x 64 B tiles fit one Hopper SM's registers and shared memory with pipelining, and small
    channel counts are not padded further than tl.dot needs. 8 warps for the full 128 x 64 tile.
    """
    if _forced["blocks"] is not None:
        return _forced["blocks"]
    block_m, block_ci, block_co = padded(M, 128), padded(CI, 32), padded(CO, 64)
    num_warps = 8 if block_m * block_co >= 128 * 64 else 4
    return block_m, block_ci, block_co, num_warps


def forced_blocks(block_m: int, block_ci: int, block_co: int, num_warps: int = 4):
    """Force the tile sizes of every conv launch in a with block; used by tests and bench."""
    for name, b in (("block_m", block_m), ("block_ci", block_ci), ("block_co", block_co)):
        check_power_of_two(name, b, MIN_DOT)
    return overriding(_forced, blocks=(block_m, block_ci, block_co, num_warps))


def _check_vector(name, t, shape, x):
    """Raise unless t is None or a floating-point `shape` tensor on x's device."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"conv2d_fwd: {name} must be a tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise RuntimeError(f"conv2d_fwd: {name} must have shape {shape}, got {tuple(t.shape)}")
    if t.device != x.device:
        raise RuntimeError(f"conv2d_fwd: {name} must be on {x.device} like x, got {t.device}")
    if not t.is_floating_point():
        raise RuntimeError(f"conv2d_fwd: {name} must be floating point, got {t.dtype}")


def _float32(t):
    return None if t is None else t.detach().to(torch.float32).contiguous()


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"conv2d_fwd: unknown {name} {value!r}; expected one of {choices}")


def check_options(stride, padding_mode, in_act, out_act) -> None:
    """The ValueErrors of conv2d_fwd's non-tensor arguments (also checked by the public
    fused_conv2d before the op's schema coerces them, e.g. stride=True to 1)."""
    _check_choice("padding_mode", padding_mode, PADDING_MODES)
    _check_choice("in_act", in_act, ACTIVATIONS)
    _check_choice("out_act", out_act, ACTIVATIONS)
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"conv2d_fwd: stride must be one of {STRIDES}, got {stride!r}")


def conv_out_size(S: int, K: int, stride: int, upsample: bool) -> int:
    L = 2 * S if upsample else S
    return (L + 2 * (K // 2) - K) // stride + 1


def check_conv2d_fwd(x, weight, stride, padding_mode, upsample, in_scale, in_shift, in_act,
                     out_scale, out_shift, residual, out_act):
    """Check conv2d_fwd's arguments (metadata only, so it runs on fake tensors too); returns
    (N, CI, H, W, CO, K, OH, OW)."""
    check_options(stride, padding_mode, in_act, out_act)
    if x.dim() != 4:
        raise RuntimeError(f"conv2d_fwd: x must be 4-D (N, CI, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] % 2 == 0:
        raise RuntimeError("conv2d_fwd: weight must be (CO, CI, K, K) with K odd, "
                           f"got shape {tuple(weight.shape)}")
    N, CI, H, W = x.shape
    CO, K = weight.shape[0], weight.shape[2]
    if weight.shape[1] != CI:
        raise RuntimeError(f"conv2d_fwd: weight must have CI={CI} input channels like x, "
                           f"got shape {tuple(weight.shape)}")
    if x.dtype not in DTYPES:
        raise RuntimeError(f"conv2d_fwd: x must be one of {DTYPES}, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise RuntimeError(f"conv2d_fwd: weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.device != x.device:
        raise RuntimeError(f"conv2d_fwd: weight must be on {x.device} like x, got {weight.device}")
    if padding_mode == "reflect":
        for dim, S in (("H", H), ("W", W)):
            L = 2 * S if upsample else S
            if K // 2 >= L:
                raise RuntimeError(f"conv2d_fwd: reflect padding {K // 2} (K={K}) must be smaller than "
                                   f"the {'upsampled ' if upsample else ''}input size {dim}={L}")
    OH, OW = conv_out_size(H, K, stride, upsample), conv_out_size(W, K, stride, upsample)
    _check_vector("in_scale", in_scale, (N, CI), x)
    _check_vector("in_shift", in_shift, (N, CI), x)
    _check_vector("out_scale", out_scale, (CO,), x)
    _check_vector("out_shift", out_shift, (CO,), x)
    if residual is not None:
        if tuple(residual.shape) != (N, CO, OH, OW):
            raise RuntimeError(f"conv2d_fwd: residual must have shape {(N, CO, OH, OW)}, "
                               f"got {tuple(residual.shape)}")
        if residual.device != x.device:
            raise RuntimeError(f"conv2d_fwd: residual must be on {x.device} like x, got {residual.device}")
        if residual.dtype not in DTYPES:
            raise RuntimeError(f"conv2d_fwd: residual must be one of {DTYPES}, got {residual.dtype}")
    return N, CI, H, W, CO, K, OH, OW


def conv2d_fwd(x, weight, *, stride=1, padding_mode="zeros", upsample=False,
               in_scale=None, in_shift=None, in_act="none", in_slope=0.01,
               out_scale=None, out_shift=None, residual=None, out_act="none", out_slope=0.01,
               stats=False):
    """Fused conv2d forward in one launch; same contract as recgen.reference.conv.fused_conv2d.

    x: (N, CI, H, W) float32/float16/bfloat16, any memory layout; weight: (CO, CI, K, K), K odd,
    same dtype and device; in_scale/in_shift: (N, CI) or None; out_scale/out_shift: (CO,) or None;
    residual: (N, CO, OH, OW) or None, any layout; stride 1 or 2.
    Returns out (N, CO, OH, OW) in x's dtype, channels_last, and with stats=True also
    (sum, sumsq) of z over the output pixels, each (N, CO) float32.
    Unknown padding_mode/activation names and unsupported strides raise ValueError (as the
    reference does for names); shapes, dtypes, devices and a reflect pad >= the (upsampled)
    input size raise RuntimeError (as torch does).

    Example: out, s, ss = conv2d_fwd(x, w, in_scale=a, in_shift=b, in_act="relu", stats=True)
    """
    from recgen.kernels.conv.fwd import _conv2d_fwd_kernel

    N, CI, H, W, CO, K, OH, OW = check_conv2d_fwd(x, weight, stride, padding_mode, upsample, in_scale,
                                                  in_shift, in_act, out_scale, out_shift, residual, out_act)
    in_scale, in_shift, out_scale, out_shift = map(_float32, (in_scale, in_shift, out_scale, out_shift))
    block_m, block_ci, block_co, num_warps = conv_blocks(OH * OW, CI, CO)
    candidates = tile_candidates("conv", num_warps, BLOCK_M=block_m, BLOCK_CI=block_ci, BLOCK_CO=block_co)
    if _forced["blocks"] is not None:  # tests: exactly these tiles
        candidates = candidates[:1]
    tiles = triton.cdiv(OH * OW, block_m)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    w_kkio = weight.permute(2, 3, 1, 0).contiguous()  # (K, K, CI, CO): rows of B are (tap, ci)
    # channels_last output: (N, OH, OW, CO) storage seen as (N, CO, OH, OW); NaN-poisoned in tests.
    out = new_output((N, OH, OW, CO), x.dtype, x.device).permute(0, 3, 1, 2)
    if stats:
        part_sum = new_output((N, tiles, CO), torch.float32, x.device)
        part_sumsq = new_output((N, tiles, CO), torch.float32, x.device)
    dummy = out  # never read: its HAS_* flag is off
    res = residual if residual is not None else out
    launch_chosen(
        "conv2d_fwd", _conv2d_fwd_kernel, candidates, (N * tiles, triton.cdiv(CO, block_co)),
        x_ptr=x_cl, w_ptr=w_kkio,
        in_scale_ptr=in_scale if in_scale is not None else dummy,
        in_shift_ptr=in_shift if in_shift is not None else dummy,
        out_scale_ptr=out_scale if out_scale is not None else dummy,
        out_shift_ptr=out_shift if out_shift is not None else dummy,
        res_ptr=res, out_ptr=out,
        sum_ptr=part_sum if stats else dummy, sumsq_ptr=part_sumsq if stats else dummy,
        CI=CI, H=H, W=W, CO=CO, OH=OH, OW=OW, TILES=tiles,
        stride_xn=x_cl.stride(0), stride_xc=x_cl.stride(1), stride_xh=x_cl.stride(2), stride_xw=x_cl.stride(3),
        stride_rn=res.stride(0), stride_rc=res.stride(1), stride_rh=res.stride(2), stride_rw=res.stride(3),
        stride_on=out.stride(0), stride_oc=out.stride(1), stride_oh=out.stride(2), stride_ow=out.stride(3),
        in_slope=float(in_slope), out_slope=float(out_slope),
        K=K, STRIDE=stride, UPSAMPLE=bool(upsample), REFLECT=padding_mode == "reflect",
        HAS_IN_SCALE=in_scale is not None, HAS_IN_SHIFT=in_shift is not None, IN_ACT=ACT_CODES[in_act],
        HAS_OUT_SCALE=out_scale is not None, HAS_OUT_SHIFT=out_shift is not None,
        HAS_RESIDUAL=residual is not None, OUT_ACT=ACT_CODES[out_act], STATS=bool(stats),
        **dot_flags(x.dtype, "conv"),
    )
    if not stats:
        return out
    return out, part_sum.sum(dim=1), part_sumsq.sum(dim=1)
