"""recgen against torch on non-finite values (NaN, +Inf, -Inf) and on empty inputs.

Non-finite: one element of an input, of a weight or of an initial state is set to NaN, +Inf or
-Inf. The torch reference runs on the CPU in float32 (the ground truth): torch.nn modules holding
the same state_dict for the recurrent modules and cells, the torch-op references of
recgen.reference for fused_conv2d / affine_act and ResidualBlock, and the original torch blocks
for FusedBasicBlock / FusedResnetBlock. recgen runs its kernels on `device`. Every output,
gradient (input, states, every parameter) and running statistic must have exactly torch's NaN,
+Inf and -Inf positions, and close finite values.

Empty: torch runs first. recgen must then raise the same exception type, or return outputs and
gradients of the same shapes (and values) as torch.

Known recgen discrepancies are marked xfail(strict=True) with their cause; see the reasons below.
"""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

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


def _cases(table):
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
# (config, where the value goes: input / h0 / c0 or a parameter, value id, known cause or None).
# torch puts NaN into the relu of rnn-relu-bi directly, or as Inf - Inf on the way.
RNN_CASES = [
    *[(key, site, v, None)
      for key in RNN_CONFIGS for site in ("input", "h0") for v in ("nan", "inf", "neg-inf")],
    ("lstm-proj-bi", "c0", "nan", None), ("lstm-proj-bi", "c0", "inf", None),
    ("lstm-proj-bi", "weight_hh_l0", "nan", None), ("lstm-proj-bi", "weight_hh_l0", "neg-inf", None),
    ("lstm-proj-bi", "weight_hr_l0_reverse", "nan", None), ("lstm-proj-bi", "weight_hr_l0_reverse", "inf", None),
    ("lstm-L2-bf", "c0", "neg-inf", None), ("lstm-L2-bf", "weight_ih_l1", "nan", None),
    ("lstm-L2-bf", "weight_ih_l1", "inf", None),
    ("gru-L2-bi", "weight_hh_l1_reverse", "nan", None), ("gru-L2-bi", "weight_hh_l1_reverse", "neg-inf", None),
    ("gru-L2-bi", "bias_hh_l0", "nan", None),
    ("rnn-tanh-L2-bf", "weight_hh_l0", "nan", None), ("rnn-tanh-L2-bf", "weight_hh_l0", "inf", None),
    ("rnn-relu-bi", "weight_ih_l0", "nan", None), ("rnn-relu-bi", "weight_ih_l0", "inf", None),
    ("rnn-relu-bi", "weight_ih_l0", "neg-inf", None),
]
PARAM_INDEX = {"bias_hh_l0": 12}  # GRU: b_hn, inside r * (W_hn h + b_hn); others: flat index 4


def _run_rnn(module, x, hx, device):
    leaves = {"input": x.clone().to(device).requires_grad_()}
    states = [h.clone().to(device).requires_grad_() for h in hx]
    leaves.update(zip(("h0", "c0"), states))
    out = module(leaves["input"], tuple(states) if len(states) == 2 else states[0])
    outs = flatten(out)
    backward_random(outs)
    return results(outs, leaves, module)


@pytest.mark.parametrize("key,site,value", _cases(RNN_CASES))
def test_recurrent_nonfinite_matches_torch(key, site, value, device):
    cls, kw = RNN_CONFIGS[key]
    torch.manual_seed(0)
    ref = getattr(nn, cls)(I, H, **kw)
    rec = getattr(recgen.nn, cls)(I, H, **kw)
    L, D = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    P = kw.get("proj_size") or H
    x = torch.randn(T, B, I)
    hx = [torch.randn(L * D, B, P)] + ([torch.randn(L * D, B, H)] if cls == "LSTM" else [])
    if site == "input":
        set_element(x[1, 1], 0, value)  # time step 1 of batch row 1
    elif site in ("h0", "c0"):
        set_element(hx[0 if site == "h0" else 1][0, 1], 2, value)
    else:
        set_element(getattr(ref, site), PARAM_INDEX.get(site, 4), value)
    if kw.get("batch_first"):
        x = x.transpose(0, 1).contiguous()
    rec.load_state_dict(ref.state_dict())
    expected = _run_rnn(ref, x, hx, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = _run_rnn(rec.to(device), x, hx, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)


CELL_CONFIGS = {
    "rnncell-tanh": ("RNNCell", {}),
    "rnncell-relu": ("RNNCell", {"nonlinearity": "relu"}),
    "grucell": ("GRUCell", {}),
    "lstmcell": ("LSTMCell", {}),
}
CELL_CASES = [(key, site, v, None)
              for key, (cls, _) in CELL_CONFIGS.items()
              for site in ["input", "h0"] + (["c0"] if cls == "LSTMCell" else []) + ["weight_hh"]
              for v in VALUES]


@pytest.mark.parametrize("key,site,value", _cases(CELL_CASES))
def test_cell_nonfinite_matches_torch(key, site, value, device):
    cls, kw = CELL_CONFIGS[key]
    torch.manual_seed(1)
    ref = getattr(nn, cls)(I, H, **kw)
    rec = getattr(recgen.nn, cls)(I, H, **kw)
    x = torch.randn(B, I)
    hx = [torch.randn(B, H) for _ in range(2 if cls == "LSTMCell" else 1)]
    if site == "input":
        set_element(x[1], 0, value)
    elif site in ("h0", "c0"):
        set_element(hx[0 if site == "h0" else 1][1], 2, value)
    else:
        set_element(ref.weight_hh, 4, value)
    rec.load_state_dict(ref.state_dict())
    expected = _run_rnn(ref, x, hx, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = _run_rnn(rec.to(device), x, hx, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)


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
# (config, poisoned tensor, value id, known cause or None). Inf reaches a relu as Inf - Inf = NaN.
CONV_CASES = [
    ("plain", "x", "nan", None), ("plain", "x", "inf", None), ("plain", "x", "neg-inf", None),
    ("plain", "weight", "nan", None), ("plain", "weight", "inf", None),
    ("plain", "weight", "neg-inf", None),
    ("relu-epilogue", "x", "nan", None), ("relu-epilogue", "x", "inf", None),
    ("relu-epilogue", "weight", "inf", None),
    ("relu-epilogue", "residual", "nan", None), ("relu-epilogue", "residual", "neg-inf", None),
    ("leaky-epilogue-s2-reflect", "x", "nan", None), ("leaky-epilogue-s2-reflect", "x", "neg-inf", None),
    ("leaky-epilogue-s2-reflect", "weight", "inf", None),
    ("leaky-epilogue-s2-reflect", "out_shift", "nan", None),
    ("relu-prologue", "x", "nan", None), ("relu-prologue", "x", "inf", None),
    ("relu-prologue", "weight", "nan", None), ("relu-prologue", "in_shift", "nan", None),
    ("relu-prologue", "in_shift", "neg-inf", None),
    ("leaky-prologue-stats", "x", "nan", None), ("leaky-prologue-stats", "x", "inf", None),
    ("leaky-prologue-stats", "weight", "neg-inf", None), ("leaky-prologue-stats", "in_scale", "nan", None),
    ("upsample", "x", "nan", None), ("upsample", "weight", "inf", UPSAMPLED_INF_WEIGHT),
    ("upsample", "in_scale", "neg-inf", None),
]


def _conv_tensors(kwargs, present, n=N, ci=CI, co=CO, h=HH, w=WW, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, low=-1.0, high=1.0):
        return torch.rand(*shape, generator=gen) * (high - low) + low

    up, stride = 2 if kwargs.get("upsample") else 1, kwargs.get("stride", 1)
    oh, ow = (up * h - 1) // stride + 1, (up * w - 1) // stride + 1
    made = {"x": rnd(n, ci, h, w), "weight": rnd(co, ci, k, k) / k,
            "in_scale": rnd(n, ci, low=0.5, high=1.5), "in_shift": rnd(n, ci),
            "out_scale": rnd(co, low=0.5, high=1.5), "out_shift": rnd(co), "residual": rnd(n, co, oh, ow)}
    return {name: t for name, t in made.items() if name in ("x", "weight") or name in present}


def _conv_results(fn, tensors, kwargs, device):
    leaves = {n: t.clone().to(device) for n, t in tensors.items()}
    leaves["x"] = leaves["x"].contiguous(memory_format=torch.channels_last)
    leaves = {n: t.requires_grad_() for n, t in leaves.items()}
    outs = flatten(fn(**leaves, **kwargs))
    backward_random(outs)
    return results(outs, leaves)


def _recgen_conv(**kw):
    with backend("triton"):
        return functional.fused_conv2d(**kw)


@pytest.mark.parametrize("key,site,value", _cases(CONV_CASES))
def test_fused_conv2d_nonfinite_matches_torch(key, site, value, device):
    kwargs, present = CONV_CONFIGS[key]
    tensors = _conv_tensors(kwargs, present)
    set_element(tensors[site], min(5, tensors[site].numel() - 1), value)
    expected = _conv_results(reference_conv.fused_conv2d, tensors, kwargs, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = _conv_results(_recgen_conv, tensors, kwargs, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)


AFFINE_ACTS = {"none": ("none", 0.01), "relu": ("relu", 0.01), "leaky": ("leaky_relu", 0.2),
               "leaky-negative-slope": ("leaky_relu", -0.5)}
AFFINE_CASES = [(act, site, v, None)
                for act in AFFINE_ACTS for site in ("y", "scale", "shift", "residual") for v in VALUES]


def _affine_results(fn, tensors, act, slope, device):
    leaves = {n: t.clone().to(device).requires_grad_() for n, t in tensors.items()}
    out = fn(**leaves, act=act, slope=slope)
    backward_random([out])
    return results([out], leaves)


def _reference_affine(y, scale=None, shift=None, residual=None, **kw):
    """The reference takes (N, C) vectors; recgen also takes (1, C) and (C,): expand them."""
    scale, shift = (None if v is None else v.expand(y.shape[0], y.shape[1]) for v in (scale, shift))
    return reference_conv.affine_act(y, scale, shift, residual, **kw)


def _recgen_affine(**kw):
    with backend("triton"):
        return functional.affine_act(**kw)


@pytest.mark.parametrize("act,site,value", _cases(AFFINE_CASES))
def test_affine_act_nonfinite_matches_torch(act, site, value, device):
    act, slope = AFFINE_ACTS[act]
    gen = torch.Generator().manual_seed(3)
    tensors = {"y": torch.randn(2, 3, 4, 5, generator=gen), "scale": torch.rand(2, 3, generator=gen) + 0.5,
               "shift": torch.randn(2, 3, generator=gen), "residual": torch.randn(2, 3, 4, 5, generator=gen)}
    set_element(tensors[site], 4, value)
    expected = _affine_results(_reference_affine, tensors, act, slope, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = _affine_results(_recgen_affine, tensors, act, slope, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)


# --------------------------------------------------------------------------- residual blocks

class ReferenceResidualBlock(nn.Module):
    """recgen.nn.ResidualBlock's torch reference: its own modules and plain torch ops."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, x):
        return reference_block(x, training=self.training, **self.block._block_parts())


def _make_block(key):
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
# (block, train, poisoned tensor, value id, known cause or None); "weight" is conv1's weight.
BLOCK_CASES = [
    ("rb-bn-relu", True, "x", "nan", None), ("rb-bn-relu", True, "weight", "neg-inf", None),
    ("rb-bn-relu", False, "x", "inf", None), ("rb-bn-relu", False, "weight", "nan", None),
    ("rb-bn-leaky", True, "x", "nan", None), ("rb-bn-leaky", True, "x", "inf", None),
    ("rb-bn-leaky", True, "weight", "nan", None), ("rb-bn-leaky", True, "weight", "neg-inf", None),
    ("rb-bn-leaky", False, "x", "nan", None), ("rb-bn-leaky", False, "x", "inf", None),
    ("rb-bn-leaky", False, "weight", "neg-inf", None),
    ("rb-in-leaky-s2-proj", True, "x", "nan", None), ("rb-in-leaky-s2-proj", True, "x", "inf", None),
    ("rb-in-leaky-s2-proj", True, "weight", "neg-inf", None),
    ("basic", True, "x", "nan", None), ("basic", True, "weight", "neg-inf", None),
    ("basic-down", False, "x", "inf", None), ("basic-down", False, "weight", "nan", None),
    ("resnet-in-reflect", True, "x", "nan", None), ("resnet-in-reflect", True, "weight", "neg-inf", None),
    ("resnet-bn-zero", False, "x", "nan", None), ("resnet-bn-zero", False, "x", "inf", None),
    ("resnet-bn-zero", False, "weight", "neg-inf", None),
]


def _block_results(module, x, train, device):
    module = module.to(device).train(train)
    xl = x.clone().to(device).requires_grad_()
    out = module(xl)
    backward_random([out])
    res = results([out], {"input": xl}, module)
    if isinstance(module, ReferenceResidualBlock):  # named as in the recgen block: drop "block."
        res = {k.replace("block.", "", 1) if k.startswith(("dblock.", "block.")) else k: v
               for k, v in res.items()}
    return res


@pytest.mark.parametrize("key,train,site,value", _cases(BLOCK_CASES))
def test_block_nonfinite_matches_torch(key, train, site, value, device):
    ref, rec, (weight_name, index) = _make_block(key)
    x = torch.randn(2, 3, 4, 5)
    if site == "x":
        set_element(x[1, 2], 7, value)
    else:
        for module in (ref, rec):
            name = f"block.{weight_name}" if isinstance(module, ReferenceResidualBlock) else weight_name
            set_element(dict(module.named_parameters())[name], index, value)
    expected = _block_results(ref, x, train, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = _block_results(rec, x, train, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected, BLOCK_TOL)


# --------------------------------------------------------------------------- empty recurrent inputs

# id -> (class, constructor kwargs, input shape, states given)
RNN_EMPTY = {
    "lstm-proj-bi-L2-B0": ("LSTM", dict(proj_size=2, bidirectional=True, num_layers=2), (3, 0, I), False),
    "lstm-B0-hx": ("LSTM", dict(), (3, 0, I), True),
    "gru-bf-B0": ("GRU", dict(batch_first=True), (0, 3, I), False),
    "gru-bi-B0-hx": ("GRU", dict(bidirectional=True), (3, 0, I), True),
    "rnn-relu-L2-B0-hx": ("RNN", dict(nonlinearity="relu", num_layers=2), (3, 0, I), True),
    "rnn-tanh-bi-bf-B0": ("RNN", dict(bidirectional=True, batch_first=True), (0, 2, I), False),
    # zero-length sequences (torch: RuntimeError), in combinations tests/test_bad_input.py lacks
    "lstm-proj-bi-T0-hx": ("LSTM", dict(proj_size=2, bidirectional=True), (0, 2, I), True),
    "lstm-T0-B0": ("LSTM", dict(), (0, 0, I), False),
    "gru-L2-T0-hx": ("GRU", dict(num_layers=2), (0, 2, I), True),
    "rnn-relu-bi-bf-T0": ("RNN", dict(nonlinearity="relu", bidirectional=True, batch_first=True), (2, 0, I), False),
    "rnn-tanh-bf-T0-B0-hx": ("RNN", dict(batch_first=True), (0, 0, I), True),
    "gru-unbatched-T0-hx": ("GRU", dict(bidirectional=True), (0, I), True),
}


def _empty_states(cls, kw, shape):
    L, D = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1
    batch = () if len(shape) == 2 else (shape[0] if kw.get("batch_first") else shape[1],)
    P = kw.get("proj_size") or H
    states = [torch.randn(L * D, *batch, P)]
    return states + ([torch.randn(L * D, *batch, H)] if cls == "LSTM" else [])


def _module_results(module, x, hx, device):
    leaves = {"input": x.clone().to(device).requires_grad_()}
    args = [leaves["input"]]
    if hx is not None:
        states = [h.clone().to(device).requires_grad_() for h in hx]
        leaves.update(zip(("h0", "c0"), states))
        args.append(tuple(states) if len(states) == 2 else states[0])
    outs = flatten(module(*args))
    backward_random(outs)
    return results(outs, leaves, module)


@pytest.mark.parametrize("key", list(RNN_EMPTY))
def test_recurrent_empty_input_like_torch(key, device):
    cls, kw, shape, with_hx = RNN_EMPTY[key]
    torch.manual_seed(5)
    ref = getattr(nn, cls)(I, H, **kw)
    rec = getattr(recgen.nn, cls)(I, H, **kw)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(*shape)
    hx = _empty_states(cls, kw, shape) if with_hx else None
    assert x.numel() == 0
    assert_empty_case_like_torch(lambda: _module_results(ref, x, hx, "cpu"),
                                 lambda: _module_results(rec.to(device), x, hx, device))


@pytest.mark.parametrize("cls,kw", [pytest.param("RNNCell", {}, id="rnncell-tanh"),
                                    pytest.param("RNNCell", {"nonlinearity": "relu"}, id="rnncell-relu"),
                                    pytest.param("GRUCell", {}, id="grucell"),
                                    pytest.param("LSTMCell", {}, id="lstmcell")])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
def test_cell_empty_batch_like_torch(cls, kw, with_hx, device):
    torch.manual_seed(6)
    ref = getattr(nn, cls)(I, H, **kw)
    rec = getattr(recgen.nn, cls)(I, H, **kw)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(0, I)
    hx = [torch.randn(0, H) for _ in range(2 if cls == "LSTMCell" else 1)] if with_hx else None
    assert_empty_case_like_torch(lambda: _module_results(ref, x, hx, "cpu"),
                                 lambda: _module_results(rec.to(device), x, hx, device))


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_packed_zero_length_rejected_like_torch(cls, enforce_sorted, device):
    """A zero length never reaches a module: pack_padded_sequence rejects it, for recgen's
    modules exactly as for torch's, and nothing is launched."""
    torch.manual_seed(7)
    ref = getattr(nn, cls)(I, H)
    rec = getattr(recgen.nn, cls)(I, H).to(device)
    rec.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, I)
    lengths = torch.tensor([3, 0])
    with pytest.raises(RuntimeError) as torch_error:
        ref(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted))
    before = dict(LAUNCH_COUNTS)
    with pytest.raises(type(torch_error.value), match="greater than 0"):
        rec(pack_padded_sequence(x.to(device), lengths, enforce_sorted=enforce_sorted))
    assert dict(LAUNCH_COUNTS) == before


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch_sizes", [
    pytest.param([], id="no-steps"),
    pytest.param([0], id="one-step-of-zero-rows"),
])
def test_hand_built_empty_packed_sequence_like_torch(cls, batch_sizes, device):
    """PackedSequences torch's packing functions refuse to build ('Cannot pack empty tensors'),
    made by hand: recgen must do what torch.nn's modules do with them."""
    torch.manual_seed(8)
    ref = getattr(nn, cls)(I, H)
    rec = getattr(recgen.nn, cls)(I, H)
    rec.load_state_dict(ref.state_dict())

    def run(module, dev):
        module = module.to(dev)
        data = torch.randn(0, I, device=dev, requires_grad=True)
        outs = flatten(module(PackedSequence(data, torch.tensor(batch_sizes, dtype=torch.int64))))
        backward_random(outs)
        return results(outs, {"data": data}, module)

    assert_empty_case_like_torch(lambda: run(ref, "cpu"), lambda: run(rec, device))


# --------------------------------------------------------------------------- empty conv inputs

# id -> ((N, CI, H, W, CO, K), fused_conv2d keyword arguments, optional tensors present)
CONV_EMPTY = {
    "N0": ((0, 3, 5, 6, 4, 3), dict(), ()),
    "N0-stats-prologue": ((0, 3, 5, 6, 4, 3), dict(stats=True, in_act="relu"), ("in_scale", "in_shift", "out_shift")),
    "N0-epilogue-residual": ((0, 3, 5, 6, 4, 3), dict(out_act="leaky_relu"), ("out_scale", "out_shift", "residual")),
    "N0-s2-upsample-reflect": ((0, 3, 5, 6, 4, 3), dict(stride=2, upsample=True, padding_mode="reflect"), ()),
    "H0-reflect": ((2, 3, 0, 6, 4, 3), dict(padding_mode="reflect"), ()),
    "H0-k3": ((2, 3, 0, 6, 4, 3), dict(), ()),
    "W0-k1": ((2, 3, 5, 0, 4, 1), dict(out_act="relu"), ("out_shift",)),
    "H0-k1-stats": ((2, 3, 0, 6, 4, 1), dict(stats=True), ()),
    "H0-upsample": ((2, 3, 0, 6, 4, 3), dict(upsample=True), ()),
    "CI0": ((2, 0, 5, 6, 4, 3), dict(), ()),
    "CO0": ((2, 3, 5, 6, 0, 3), dict(), ()),
}
@pytest.mark.parametrize("key", list(CONV_EMPTY))
def test_fused_conv2d_empty_like_torch(key, device):
    (n, ci, h, w, co, k), kwargs, present = CONV_EMPTY[key]
    tensors = _conv_tensors(kwargs, present, n=n, ci=ci, co=co, h=h, w=w, k=k)
    assert tensors["x"].numel() == 0 or tensors["weight"].numel() == 0
    assert_empty_case_like_torch(lambda: _conv_results(reference_conv.fused_conv2d, tensors, kwargs, "cpu"),
                                 lambda: _conv_results(_recgen_conv, tensors, kwargs, device))


@pytest.mark.parametrize("y_shape,scale_shape,shift_shape,act", [
    pytest.param((2, 3, 4, 0), (2, 3), (2, 3), "relu", id="W0-relu"),
    pytest.param((0, 3, 4, 4), (1, 3), (3,), "leaky_relu", id="N0-shared-vectors"),
    pytest.param((2, 3, 0, 5), (3,), None, "none", id="H0-vector-scale"),
])
def test_affine_act_empty_like_torch(y_shape, scale_shape, shift_shape, act, device):
    gen = torch.Generator().manual_seed(9)
    tensors = {"y": torch.randn(*y_shape, generator=gen), "scale": torch.rand(*scale_shape, generator=gen) + 0.5,
               "residual": torch.randn(*y_shape, generator=gen)}
    if shift_shape is not None:
        tensors["shift"] = torch.randn(*shift_shape, generator=gen)
    assert_empty_case_like_torch(lambda: _affine_results(_reference_affine, tensors, act, 0.2, "cpu"),
                                 lambda: _affine_results(_recgen_affine, tensors, act, 0.2, device))


# --------------------------------------------------------------------------- empty / degenerate blocks

# id -> (block, train, input shape)
BLOCK_EMPTY = {
    "rb-bn-train-N0": ("rb-bn-relu", True, (0, 3, 5, 6)),
    "rb-bn-eval-N0": ("rb-bn-relu", False, (0, 3, 5, 6)),
    "rb-bn-proj-eval-N0": ("rb-bn-proj", False, (0, 3, 5, 6)),
    "rb-none-train-N0": ("rb-none-relu", True, (0, 3, 5, 6)),
    "rb-none-leaky-up-reflect-N0": ("rb-none-leaky-up-reflect", True, (0, 3, 5, 6)),
    "basic-train-N0": ("basic", True, (0, 3, 5, 6)),
    "basic-down-eval-N0": ("basic-down", False, (0, 3, 5, 6)),
    "resnet-bn-zero-eval-N0": ("resnet-bn-zero", False, (0, 3, 5, 6)),
    "resnet-in-reflect-train-N0": ("resnet-in-reflect", True, (0, 3, 5, 6)),
    "rb-in-noaffine-train-N0": ("rb-in-noaffine-relu", True, (0, 3, 5, 6)),
    "rb-bn-train-N1-1x1": ("rb-bn-relu", True, (1, 3, 1, 1)),  # torch: ValueError, one value per channel
    "rb-none-H0": ("rb-none-relu", False, (2, 3, 0, 6)),
    "rb-bn-train-H0": ("rb-bn-relu", True, (2, 3, 0, 6)),
    "rb-in-train-1x1": ("rb-in-relu", True, (2, 3, 1, 1)),
    "rb-zero-channels": ("rb-zero-channels", False, (2, 0, 5, 6)),
}
@pytest.mark.parametrize("case", list(BLOCK_EMPTY))
def test_block_empty_or_degenerate_like_torch(case, device):
    """Blocks route these shapes to torch's own ops (recgen.nn.residual._degenerate)."""
    key, train, shape = BLOCK_EMPTY[case]
    ref, rec, _ = _make_block(key)
    x = torch.randn(*shape)
    assert_empty_case_like_torch(lambda: _block_results(ref, x, train, "cpu"),
                                 lambda: _block_results(rec, x, train, device))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_affine_instance_norm_block_empty_batch_like_torch(train, device):
    """torch's InstanceNorm2d(affine=True) raises IndexError on an empty batch (an internal
    select() on the empty batch dimension; with affine=False it returns an empty output, see
    rb-in-noaffine-train-N0 above). recgen's block runs torch's ops for empty input, so it
    raises the same error."""
    ref, rec, _ = _make_block("rb-in-relu")
    x = torch.randn(0, 3, 5, 6)
    with pytest.raises(IndexError):
        _block_results(ref, x, train, "cpu")
    with pytest.raises(IndexError):
        _block_results(rec, x, train, device)
