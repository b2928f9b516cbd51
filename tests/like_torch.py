"""Shared by tests/test_nonfinite.py and tests/test_empty_inputs.py: recgen against torch on
non-finite values and empty inputs. Comparison helpers, the case tables of the modules and ops,
and the torch references (torch.nn modules with the same state_dict, recgen.reference's torch-op
references, the original torch blocks for the fused ones)."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import recgen
from recgen import functional
from recgen.backend import backend
from recgen.ops import LAUNCH_COUNTS
from recgen.reference import conv as reference_conv
from recgen.reference.residual import residual_block as reference_block
from recgen.testing import TOLERANCES, max_rel_error, randomise_norms
from standin_blocks import BasicBlock, ResnetBlock

TOL = TOLERANCES[torch.float32]
BLOCK_TOL = 5 * TOL  # two convolutions and two norms, float32 on both sides
pytestmark = [
    # torch's CPU LSTM with proj_size falls back from oneDNN to its default kernel and says so.
    pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN"),
    # NaN / Inf arithmetic is the point here; under the interpreter numpy warns about it.
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op:UserWarning"),
]

# --------------------------------------------------------------------------- known discrepancies

UPSAMPLED_INF_WEIGHT = ("with upsampling, the data gradient adds the dacc rows of the output positions that "
                        "read one source pixel through one tap before multiplying by the weight: "
                        "(d1 + d2) * Inf is +-Inf where torch's d1 * Inf + d2 * Inf is NaN when d1 and d2 "
                        "differ in sign (a documented divergence: matching it would cost one product per "
                        "output position instead of one per tap)")


def xfail(reason):
    return pytest.mark.xfail(strict=True, reason=reason)


# --------------------------------------------------------------------------- helpers

def assert_matches(name, actual, expected, tol=TOL):
    """Same shape, dtype, NaN / +Inf / -Inf positions as torch, and close finite values."""
    assert (actual is None) == (expected is None), \
        f"{name}: recgen gives {'no' if actual is None else 'a'} tensor, torch {'none' if expected is None else 'one'}"
    if expected is None:
        return
    actual, expected = actual.detach().cpu(), expected.detach().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != torch's {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != torch's {expected.dtype}"
    for label, test in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        a, e = test(actual), test(expected)
        if not torch.equal(a, e):
            first = (a ^ e).nonzero()[0].tolist()
            raise AssertionError(f"{name}: {label} positions differ from torch (recgen {int(a.sum())}, "
                                 f"torch {int(e.sum())}; first difference at {first})")
    finite = torch.isfinite(expected)
    err = max_rel_error(actual[finite], expected[finite])
    assert err <= tol, f"{name} (finite part): max relative error {err:.3g} > {tol:g}"


def assert_all_match(rec, ref, tol=TOL):
    assert rec.keys() == ref.keys()
    for name in ref:
        assert_matches(name, rec[name], ref[name], tol)


def flatten(out):
    """The tensors of a module's output, in order (a PackedSequence gives its data)."""
    flat = []
    for o in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(o, PackedSequence):
            flat.append(o.data)
        elif isinstance(o, (tuple, list)):
            flat += flatten(o)
        else:
            flat.append(o)
    return flat


def backward_random(outs, seed=5):
    """Backpropagate the same fixed random upstream gradients into both sides."""
    gen = torch.Generator().manual_seed(seed)
    grads = [(torch.rand(o.shape, generator=gen) * 2 - 1).to(o.device, o.dtype) for o in outs]
    torch.autograd.backward(outs, grads)


def results(outs, leaves, module=None):
    """{name: tensor} of the outputs, the gradients of the leaves and of the module's parameters,
    and the module's buffers."""
    res = {f"output {k}": o for k, o in enumerate(outs)}
    res.update({f"d{n}": t.grad for n, t in leaves.items()})
    if module is not None:
        res.update({f"d{n}": p.grad for n, p in module.named_parameters()})
        res.update({n: b for n, b in module.named_buffers()})
    return res


def launched_since(before):
    return sum(LAUNCH_COUNTS.values()) - sum(before.values())


def outcome(fn):
    """(result, None) or (None, the exception fn raised)."""
    try:
        return fn(), None
    except Exception as exc:  # whichever type torch raises is what recgen must raise
        return None, exc


def assert_empty_case_like_torch(run_torch, run_recgen):
    """torch first; then recgen raises the same exception type, or matches torch's results."""
    ref, exc = outcome(run_torch)
    if exc is not None:
        with pytest.raises(type(exc)):
            run_recgen()
        return
    assert_all_match(run_recgen(), ref)


def set_element(t, index, value):
    with torch.no_grad():
        t.view(-1)[index] = value
    assert t.view(-1)[index].isnan() if value != value else t.view(-1)[index] == value


VALUES = {"nan": float("nan"), "inf": float("inf"), "neg-inf": float("-inf")}


def cases(table):
    """pytest params of (..., site, value) from rows (..., site, value id, known cause)."""
    def name(v):
        return {True: "train", False: "eval"}[v] if isinstance(v, bool) else str(v)

    return [pytest.param(*row[:-2], VALUES[row[-2]], id="-".join(name(v) for v in row[:-1]),
                         marks=[xfail(row[-1])] if row[-1] else []) for row in table]


# --------------------------------------------------------------------------- recurrent modules

I, H, T, B = 3, 5, 3, 3
RNN_CONFIGS = {
    "lstm-proj-bi": ("LSTM", dict(bidirectional=True, proj_size=3)),
    "lstm-L2-bf": ("LSTM", dict(num_layers=2, batch_first=True)),
    "gru-L2-bi": ("GRU", dict(num_layers=2, bidirectional=True)),
    "rnn-tanh-L2-bf": ("RNN", dict(num_layers=2, batch_first=True)),
    "rnn-relu-bi": ("RNN", dict(nonlinearity="relu", bidirectional=True)),
}


def run_rnn(module, x, hx, device):
    leaves = {"input": x.clone().to(device).requires_grad_()}
    states = [h.clone().to(device).requires_grad_() for h in hx]
    leaves.update(zip(("h0", "c0"), states))
    out = module(leaves["input"], tuple(states) if len(states) == 2 else states[0])
    outs = flatten(out)
    backward_random(outs)
    return results(outs, leaves, module)


CELL_CONFIGS = {
    "rnncell-tanh": ("RNNCell", {}),
    "rnncell-relu": ("RNNCell", {"nonlinearity": "relu"}),
    "grucell": ("GRUCell", {}),
    "lstmcell": ("LSTMCell", {}),
}


# --------------------------------------------------------------------------- fused_conv2d / affine_act

N, CI, CO, HH, WW = 2, 3, 4, 5, 6
# id -> (fused_conv2d keyword arguments, optional tensors present)
CONV_CONFIGS = {
    "plain": (dict(), ()),
    "relu-epilogue": (dict(out_act="relu"), ("out_scale", "out_shift", "residual")),
    "leaky-epilogue-s2-reflect": (dict(out_act="leaky_relu", out_slope=0.2, stride=2, padding_mode="reflect"),
                                  ("out_shift", "residual")),
    "relu-prologue": (dict(in_act="relu"), ("in_scale", "in_shift")),
    "leaky-prologue-stats": (dict(in_act="leaky_relu", in_slope=0.1, stats=True), ("in_scale", "in_shift", "out_shift")),
    "upsample": (dict(upsample=True), ("in_scale",)),
}


def conv_tensors(kwargs, present, n=N, ci=CI, co=CO, h=HH, w=WW, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, low=-1.0, high=1.0):
        return torch.rand(*shape, generator=gen) * (high - low) + low

    up, stride = 2 if kwargs.get("upsample") else 1, kwargs.get("stride", 1)
    oh, ow = (up * h - 1) // stride + 1, (up * w - 1) // stride + 1
    made = {"x": rnd(n, ci, h, w), "weight": rnd(co, ci, k, k) / k,
            "in_scale": rnd(n, ci, low=0.5, high=1.5), "in_shift": rnd(n, ci),
            "out_scale": rnd(co, low=0.5, high=1.5), "out_shift": rnd(co), "residual": rnd(n, co, oh, ow)}
    return {name: t for name, t in made.items() if name in ("x", "weight") or name in present}


def conv_results(fn, tensors, kwargs, device):
    leaves = {n: t.clone().to(device) for n, t in tensors.items()}
    leaves["x"] = leaves["x"].contiguous(memory_format=torch.channels_last)
    leaves = {n: t.requires_grad_() for n, t in leaves.items()}
    outs = flatten(fn(**leaves, **kwargs))
    backward_random(outs)
    return results(outs, leaves)


def recgen_conv(**kw):
    with backend("triton"):
        return functional.fused_conv2d(**kw)


AFFINE_ACTS = {"none": ("none", 0.01), "relu": ("relu", 0.01), "leaky": ("leaky_relu", 0.2),
               "leaky-negative-slope": ("leaky_relu", -0.5)}


def affine_results(fn, tensors, act, slope, device):
    leaves = {n: t.clone().to(device).requires_grad_() for n, t in tensors.items()}
    out = fn(**leaves, act=act, slope=slope)
    backward_random([out])
    return results([out], leaves)


def reference_affine(y, scale=None, shift=None, residual=None, **kw):
    """The reference takes (N, C) vectors; recgen also takes (1, C) and (C,): expand them."""
    scale, shift = (None if v is None else v.expand(y.shape[0], y.shape[1]) for v in (scale, shift))
    return reference_conv.affine_act(y, scale, shift, residual, **kw)


def recgen_affine(**kw):
    with backend("triton"):
        return functional.affine_act(**kw)


# --------------------------------------------------------------------------- residual blocks

class ReferenceResidualBlock(nn.Module):
    """recgen.nn.ResidualBlock's torch reference: its own modules and plain torch ops."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return reference_block(x, training=self.training, **self.block._block_parts())


def make_block(key):
    """(torch reference module, recgen module, (name of conv1's weight, flat index to poison)),
    on the CPU, in the same state.

    ResidualBlock's reference pads with F.pad before conv2d, so a NaN/Inf weight meets the zero
    padding (0 * Inf = NaN at the border), as in recgen: a border tap (index 7) is poisoned.
    torch's CPU nn.Conv2d(padding=1) is not consistent about that (for these 3-channel inputs it
    skips the padded taps and gives finite border values, for a 1-channel input it gives NaN),
    so the original torch blocks get the centre tap (index 4), which never reads padding."""
    torch.manual_seed(4)
    if key.startswith("rb-"):
        kwargs = dict(BLOCK_KWARGS[key])
        block = recgen.nn.ResidualBlock(kwargs.pop("cin", 3), **kwargs)
        randomise_norms(block)
        return ReferenceResidualBlock(copy.deepcopy(block)), block, ("conv1.weight", 7)
    if key == "basic":
        original = BasicBlock(3, 3)
    elif key == "basic-down":
        original = BasicBlock(3, 4, 2, nn.Sequential(nn.Conv2d(3, 4, 1, 2, bias=False), nn.BatchNorm2d(4)))
    elif key == "resnet-in-reflect":
        original = ResnetBlock(3)
    else:
        original = ResnetBlock(3, "zero", nn.BatchNorm2d)
    randomise_norms(original)
    fused = recgen.convert(copy.deepcopy(original))
    expected_cls = recgen.nn.FusedBasicBlock if key.startswith("basic") else recgen.nn.FusedResnetBlock
    assert type(fused) is expected_cls
    weight = {"basic": "conv1.weight", "basic-down": "conv1.weight", "resnet-in-reflect": "conv_block.1.weight",
              "resnet-bn-zero": "conv_block.0.weight"}[key]  # conv1: after the ReflectionPad2d, if any
    assert isinstance(dict(original.named_modules())[weight[:-len(".weight")]], nn.Conv2d)
    return original, fused, (weight, 4)


BLOCK_KWARGS = {
    "rb-bn-relu": dict(norm="batch"),
    "rb-bn-leaky": dict(norm="batch", activation="leaky_relu"),
    "rb-in-leaky-s2-proj": dict(norm="instance", activation="leaky_relu", out_channels=4, stride=2),
    "rb-none-leaky-up-reflect": dict(norm=None, activation="leaky_relu", upsample=True, padding_mode="reflect",
                                     out_channels=4),
    "rb-in-relu": dict(norm="instance"),
    "rb-in-noaffine-relu": dict(norm="instance", affine=False),
    "rb-none-relu": dict(norm=None),
    "rb-bn-proj": dict(norm="batch", out_channels=4, stride=2),
    "rb-zero-channels": dict(norm=None, cin=0),
}


def block_results(module, x, train, device):
    module = module.to(device).train(train)
    xl = x.clone().to(device).requires_grad_()
    out = module(xl)
    backward_random([out])
    res = results([out], {"input": xl}, module)
    if isinstance(module, ReferenceResidualBlock):  # named as in the recgen block: drop "block."
        res = {k.replace("block.", "", 1) if k.startswith(("dblock.", "block.")) else k: v
               for k, v in res.items()}
    return res
