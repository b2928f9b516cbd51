"""recgen against torch on empty and degenerate inputs: empty batches, zero-length sequences,
zero-size images and channels, InstanceNorm over one pixel. torch runs first; recgen must then
raise the same exception type, or return outputs and gradients of the same shapes (and values)."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.reference import conv as reference_conv
import like_torch
from like_torch import (
    flatten,
    backward_random,
    results,
    assert_empty_case_like_torch,
    I,
    H,
    conv_tensors,
    conv_results,
    recgen_conv,
    affine_results,
    reference_affine,
    recgen_affine,
    make_block,
    block_results,
)

pytestmark = like_torch.pytestmark  # the shared warning filters


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
    tensors = conv_tensors(kwargs, present, n=n, ci=ci, co=co, h=h, w=w, k=k)
    assert tensors["x"].numel() == 0 or tensors["weight"].numel() == 0
    assert_empty_case_like_torch(lambda: conv_results(reference_conv.fused_conv2d, tensors, kwargs, "cpu"),
                                 lambda: conv_results(recgen_conv, tensors, kwargs, device))


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
    assert_empty_case_like_torch(lambda: affine_results(reference_affine, tensors, act, 0.2, "cpu"),
                                 lambda: affine_results(recgen_affine, tensors, act, 0.2, device))


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
    ref, rec, _ = make_block(key)
    x = torch.randn(*shape)
    assert_empty_case_like_torch(lambda: block_results(ref, x, train, "cpu"),
                                 lambda: block_results(rec, x, train, device))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_affine_instance_norm_block_empty_batch_like_torch(train, device):
    """torch's InstanceNorm2d(affine=True) raises IndexError on an empty batch (an internal
    select() on the empty batch dimension; with affine=False it returns an empty output, see
    rb-in-noaffine-train-N0 above). recgen's block runs torch's ops for empty input, so it
    raises the same error."""
    ref, rec, _ = make_block("rb-in-relu")
    x = torch.randn(0, 3, 5, 6)
    with pytest.raises(IndexError):
        block_results(ref, x, train, "cpu")
    with pytest.raises(IndexError):
        block_results(rec, x, train, device)
