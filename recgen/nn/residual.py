"""Residual convolution blocks running recgen's fused conv kernels (recgen/functional/residual.py).

ResidualBlock is recgen's generic block; FusedBasicBlock and FusedResnetBlock are what
recgen.convert turns torchvision's BasicBlock and the CycleGAN/pix2pix ResnetBlock into: they
keep the original submodules (so Parameters, buffers and state_dict keys are unchanged) and
replace only forward.

Under torch.autocast the blocks do what the torch modules they replace do (conv2d in the
autocast dtype, norms with float32 statistics, the residual add promoting to the wider of the
conv output and the identity skip: details in recgen/functional/residual.py), so output dtypes, float32
parameter gradients and float32 running statistics are torch's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recgen.functional.residual import residual_block, torch_memory_format
from recgen.backend import implementation, record
from recgen.nn._checks import AUTOCAST_ELIGIBLE, autocast_off, input_autocast_dtype
from recgen.reference import residual as reference

NORMS = ("batch", "instance", None)
ACTIVATIONS = ("relu", "leaky_relu")
PADDING_MODES = ("zeros", "reflect")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _make_norm(kind, channels, eps, momentum, affine, factory):
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum, affine=affine, **factory)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, eps=eps, momentum=momentum, affine=affine, **factory)
    return None


def check_block_input(x, in_channels, weight, pad, padding_mode, upsample, name, autocast=None):
    """torch's errors for what the convolutions would reject, raised before any launch.
    `autocast`: the dtype autocast casts input and weights to (then their dtypes may differ)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a Tensor, got {type(x).__name__}")
    if x.dim() != 4:  # ValueError, as the blocks' BatchNorm2d raises for it
        raise ValueError(f"{name}: expected a 4-D input (N, C, H, W), got {x.dim()}-D input of "
                         f"shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise RuntimeError(f"{name}: expected input of shape (N, {in_channels}, H, W) to have "
                           f"{in_channels} channels, but got {x.shape[1]} channels instead")
    cast = autocast is not None and weight.dtype in AUTOCAST_ELIGIBLE
    if x.dtype != weight.dtype and not cast:
        raise RuntimeError(f"{name}: input dtype {x.dtype} does not match the weight dtype {weight.dtype}")
    if x.device != weight.device:
        raise RuntimeError(f"{name}: input is on {x.device} but the weights are on {weight.device}")
    size = [s * (2 if upsample else 1) for s in x.shape[2:]]
    if padding_mode == "reflect" and pad and min(size) <= pad:
        raise RuntimeError(f"{name}: reflection padding {pad} must be less than the (upsampled) "
                           f"input size, got spatial size {tuple(size)}")


def _degenerate(x: torch.Tensor, parts: dict) -> bool:
    """Shapes torch's modules treat specially: empty tensors, zero channels, InstanceNorm over a
    single pixel. They take the reference path, torch's own ops, so the result or the error is
    exactly torch's (an empty output, or conv's RuntimeError, or instance_norm's ValueError)."""
    if x.numel() == 0 or parts["conv1"].weight.numel() == 0:
        return True
    size = [s * (2 if parts["upsample"] else 1) for s in x.shape[2:]]
    pixels = ((size[0] - 1) // parts["stride"] + 1) * ((size[1] - 1) // parts["stride"] + 1)
    instance = any(isinstance(n, nn.InstanceNorm2d) for n in (parts["norm1"], parts["norm2"]))
    return instance and pixels == 1


class _FusedForward:
    """forward shared by every block: validate, then the fused pipeline (Triton) or the
    reference modules path, as the backend decides."""

    def _block_parts(self) -> dict:
        raise NotImplementedError

    def _torch_forward(self, x):
        """The block as its torch modules compute it (the `torch` implementation)."""
        raise NotImplementedError

    def forward(self, x):
        # Checked on every path (a few microseconds against a block's milliseconds): torch's
        # own layers would raise the same types, with vaguer words (a float64 input to a float32
        # block, which `auto` hands to torch's op, says "expected scalar type Double").
        parts = self._block_parts()
        conv1 = parts["conv1"]
        pad = conv1.weight.shape[-1] // 2
        cast = input_autocast_dtype(x)
        check_block_input(x, conv1.weight.shape[1], conv1.weight, pad, parts["padding_mode"],
                          parts["upsample"], type(self).__name__, autocast=cast)
        impl = implementation(x)
        if impl == "torch":
            record(impl, self)
            return self._torch_forward(x)
        if impl == "reference":
            record(impl, self)
            return reference.residual_block(x, training=self.training, **parts)
        if _degenerate(x, parts):
            record("torch", self)
            return self._torch_forward(x)
        record(impl, self)
        parts["dropout_format"] = torch_memory_format(x, parts["norm1"])  # torch's masks
        x = x.contiguous(memory_format=torch.channels_last)
        if cast is None:
            return residual_block(x, training=self.training, **parts)
        # The pipeline casts explicitly, as torch's modules are cast under autocast; recgen's
        # own torch ops (statistics math, casts) must not be re-cast by it.
        with autocast_off(x.device.type):
            return residual_block(x, training=self.training, compute_dtype=cast, **parts)


class ResidualBlock(_FusedForward, nn.Module):
    """act(skip(x) + residual_scale * norm2(conv2(act(norm1(conv1(x)))))), fused.

    in_channels -> out_channels (default in_channels); stride 2 downsamples, upsample=True
    doubles H and W first (nearest, never materialised); a 1x1 conv (+ norm) projects the skip
    whenever the shape changes. bias defaults to `norm is None`. out_activation=False drops the
    final activation (as the CycleGAN generator's blocks do).

    >>> block = recgen.nn.ResidualBlock(64, 128, stride=2, norm='batch')
    >>> y = block(torch.randn(8, 64, 32, 32).to(memory_format=torch.channels_last))
    """

    def __init__(self, in_channels, out_channels=None, stride=1, norm="batch", activation="relu",
                 negative_slope=0.2, padding_mode="zeros", upsample=False, residual_scale=1.0,
                 bias=None, kernel_size=3, out_activation=True, dropout=0.0, eps=1e-5,
                 momentum=0.1, affine=True, device=None, dtype=None):
        super().__init__()
        _choice("norm", norm, NORMS)
        _choice("activation", activation, ACTIVATIONS)
        _choice("padding_mode", padding_mode, PADDING_MODES)
        _choice("stride", stride, (1, 2))
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        out_channels = out_channels or in_channels
        bias = norm is None if bias is None else bias
        factory = dict(device=device, dtype=dtype)
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=bias,
                               padding_mode=padding_mode, **factory)
        self.norm1 = _make_norm(norm, out_channels, eps, momentum, affine, factory)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, 1, pad, bias=bias,
                               padding_mode=padding_mode, **factory)
        self.norm2 = _make_norm(norm, out_channels, eps, momentum, affine, factory)
        if in_channels != out_channels or stride != 1 or upsample:
            self.skip_conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=bias, **factory)
            self.skip_norm = _make_norm(norm, out_channels, eps, momentum, affine, factory)
        else:
            self.skip_conv = self.skip_norm = None
        self.stride, self.padding_mode, self.upsample = stride, padding_mode, upsample
        self.activation, self.negative_slope = activation, negative_slope
        self.residual_scale, self.out_activation, self.dropout = residual_scale, out_activation, dropout

    def _act(self, t):
        return F.relu(t) if self.activation == "relu" else F.leaky_relu(t, self.negative_slope)

    def _torch_forward(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(x)
        h = self._act(h if self.norm1 is None else self.norm1(h))
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        h = h if self.norm2 is None else self.norm2(h)
        skip = x
        if self.skip_conv is not None:
            skip = self.skip_conv(x)
            skip = skip if self.skip_norm is None else self.skip_norm(skip)
        out = skip + self.residual_scale * h
        return self._act(out) if self.out_activation else out

    def _block_parts(self):
        return dict(conv1=self.conv1, norm1=self.norm1, conv2=self.conv2, norm2=self.norm2,
                    skip_conv=self.skip_conv, skip_norm=self.skip_norm, stride=self.stride,
                    padding_mode=self.padding_mode, upsample=self.upsample,
                    activation=self.activation, negative_slope=self.negative_slope,
                    out_activation=self.out_activation, residual_scale=self.residual_scale,
                    dropout=self.dropout)


class FusedBasicBlock(_FusedForward, nn.Module):
    """torchvision's BasicBlock (conv1, bn1, relu, conv2, bn2, optional downsample) on recgen's
    kernels; made by recgen.convert, which keeps every submodule in place."""

    def _torch_forward(self, x):  # torchvision's BasicBlock.forward
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)

    def _block_parts(self):
        down = self.downsample
        return dict(conv1=self.conv1, norm1=self.bn1, conv2=self.conv2, norm2=self.bn2,
                    skip_conv=None if down is None else down[0],
                    skip_norm=None if down is None else down[1], stride=self.conv1.stride[0],
                    padding_mode="zeros", upsample=False, activation="relu", out_activation=True)


class FusedResnetBlock(_FusedForward, nn.Module):
    """The CycleGAN/pix2pix generator's ResnetBlock (x + conv_block(x)) on recgen's kernels;
    made by recgen.convert, which keeps `conv_block` and its indices (state_dict keys)."""

    def _torch_forward(self, x):  # the ResnetBlock's forward
        return x + self.conv_block(x)

    def _block_parts(self):
        layers = list(self.conv_block)
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        norms = [m for m in layers if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
        drop = [m for m in layers if isinstance(m, nn.Dropout)]
        reflect = any(isinstance(m, nn.ReflectionPad2d) for m in layers)
        return dict(conv1=convs[0], norm1=norms[0], conv2=convs[1], norm2=norms[1], skip_conv=None,
                    skip_norm=None, stride=1, padding_mode="reflect" if reflect else "zeros",
                    upsample=False, activation="relu", out_activation=False,
                    dropout=drop[0].p if drop and self.training else 0.0)
