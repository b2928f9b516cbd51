"""recgen against torch on non-finite values (NaN, +Inf, -Inf).

One element of an input, of a weight or of an initial state is set to NaN, +Inf or -Inf. The
torch reference runs on the CPU in float32 (the ground truth): torch.nn modules holding the same
state_dict for the recurrent modules and cells, the torch-op references of recgen.reference for
fused_conv2d / affine_act and ResidualBlock, and the original torch blocks for FusedBasicBlock /
FusedResnetBlock. recgen runs its kernels on `device`. Every output, gradient (input, states,
every parameter) and running statistic must have exactly torch's NaN, +Inf and -Inf positions,
and close finite values. The one known divergence is a strict xfail with its cause
(tests/like_torch.py).
"""

import pytest
import torch
from torch import nn

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.reference import conv as reference_conv
import like_torch
from like_torch import (
    BLOCK_TOL,
    UPSAMPLED_INF_WEIGHT,
    assert_all_match,
    launched_since,
    set_element,
    VALUES,
    cases,
    I,
    H,
    T,
    B,
    RNN_CONFIGS,
    run_rnn,
    CELL_CONFIGS,
    CONV_CONFIGS,
    conv_tensors,
    conv_results,
    recgen_conv,
    AFFINE_ACTS,
    affine_results,
    reference_affine,
    recgen_affine,
    ReferenceResidualBlock,
    make_block,
    block_results,
)

pytestmark = like_torch.pytestmark  # the shared warning filters

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


@pytest.mark.parametrize("key,site,value", cases(RNN_CASES))
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
    expected = run_rnn(ref, x, hx, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = run_rnn(rec.to(device), x, hx, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)
CELL_CASES = [(key, site, v, None)
              for key, (cls, _) in CELL_CONFIGS.items()
              for site in ["input", "h0"] + (["c0"] if cls == "LSTMCell" else []) + ["weight_hh"]
              for v in VALUES]


@pytest.mark.parametrize("key,site,value", cases(CELL_CASES))
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
    expected = run_rnn(ref, x, hx, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = run_rnn(rec.to(device), x, hx, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)
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


@pytest.mark.parametrize("key,site,value", cases(CONV_CASES))
def test_fused_conv2d_nonfinite_matches_torch(key, site, value, device):
    kwargs, present = CONV_CONFIGS[key]
    tensors = conv_tensors(kwargs, present)
    set_element(tensors[site], min(5, tensors[site].numel() - 1), value)
    expected = conv_results(reference_conv.fused_conv2d, tensors, kwargs, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = conv_results(recgen_conv, tensors, kwargs, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)
AFFINE_CASES = [(act, site, v, None)
                for act in AFFINE_ACTS for site in ("y", "scale", "shift", "residual") for v in VALUES]


@pytest.mark.parametrize("act,site,value", cases(AFFINE_CASES))
def test_affine_act_nonfinite_matches_torch(act, site, value, device):
    act, slope = AFFINE_ACTS[act]
    gen = torch.Generator().manual_seed(3)
    tensors = {"y": torch.randn(2, 3, 4, 5, generator=gen), "scale": torch.rand(2, 3, generator=gen) + 0.5,
               "shift": torch.randn(2, 3, generator=gen), "residual": torch.randn(2, 3, 4, 5, generator=gen)}
    set_element(tensors[site], 4, value)
    expected = affine_results(reference_affine, tensors, act, slope, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = affine_results(recgen_affine, tensors, act, slope, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)


AFFINE_CENTRE_CASES = [(act, site, v, None) for act in AFFINE_ACTS for site in ("y", "centre", "scale") for v in VALUES]


@pytest.mark.parametrize("act,site,value", cases(AFFINE_CENTRE_CASES))
def test_affine_act_centre_nonfinite_matches_torch(act, site, value, device):
    """With a centre: out = act((y - centre) * scale + shift), a NaN or infinity in y, the centre or
    the scale reaches the output and the gradients (dy, dcentre, dscale, dshift) as in torch."""
    act, slope = AFFINE_ACTS[act]
    gen = torch.Generator().manual_seed(4)
    tensors = {"y": torch.randn(2, 3, 4, 5, generator=gen), "scale": torch.rand(2, 3, generator=gen) + 0.5,
               "shift": torch.randn(2, 3, generator=gen), "centre": torch.randn(2, 3, generator=gen)}
    set_element(tensors[site], 4, value)
    expected = affine_results(reference_affine, tensors, act, slope, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = affine_results(recgen_affine, tensors, act, slope, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected)
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


@pytest.mark.parametrize("key,train,site,value", cases(BLOCK_CASES))
def test_block_nonfinite_matches_torch(key, train, site, value, device):
    ref, rec, (weight_name, index) = make_block(key)
    x = torch.randn(2, 3, 4, 5)
    if site == "x":
        set_element(x[1, 2], 7, value)
    else:
        for module in (ref, rec):
            name = f"block.{weight_name}" if isinstance(module, ReferenceResidualBlock) else weight_name
            set_element(dict(module.named_parameters())[name], index, value)
    expected = block_results(ref, x, train, "cpu")
    before = dict(LAUNCH_COUNTS)
    actual = block_results(rec, x, train, device)
    assert launched_since(before) > 0, "the Triton path did not run"
    assert_all_match(actual, expected, BLOCK_TOL)
