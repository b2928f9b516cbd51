"""Converted models survive copy.deepcopy, torch.save/torch.load of the whole model and a
state_dict round trip into a fresh torch model; forward+backward is bitwise deterministic
(also under torch.use_deterministic_algorithms)."""

import copy

import pytest
import torch
from torch import nn

import recgen
from recgen.backend import backend
from recgen.testing import TOLERANCES, max_rel_error, randomise_norms


class ResnetBlock(nn.Module):
    """Written like the CycleGAN ResnetBlock (recgen.convert recognises it by structure)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


def make_model(seed=0):
    """nn.Sequential(LSTM, GRU, a module holding residual blocks)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.LSTM(3, 5, batch_first=True), nn.GRU(5, 4, bidirectional=True, batch_first=True),
                          nn.Sequential(ResnetBlock(2), recgen.nn.ResidualBlock(2, out_channels=3, norm="batch")))
    randomise_norms(model)
    return model


def run(model, x, img):
    """Every output and final state of the three parts."""
    y, (h, c) = model[0](x)
    z, g = model[1](y)
    return y, h, c, z, g, model[2](img)


def inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 3, generator=gen), torch.randn(2, 2, 5, 6, generator=gen)


def converted(seed=0):
    report = []
    model = recgen.convert(make_model(seed), report)
    assert [name for name, _ in report] == ["0", "1", "2.0"]
    return model.eval()


def assert_recgen_classes(model):
    assert type(model[0]) is recgen.nn.LSTM
    assert type(model[1]) is recgen.nn.GRU
    assert type(model[2][0]) is recgen.nn.FusedResnetBlock
    assert type(model[2][1]) is recgen.nn.ResidualBlock


def assert_identical(a, b):
    assert len(a) == len(b)
    for k, (u, v) in enumerate(zip(a, b)):
        assert torch.equal(u, v), f"output {k} differs"


def test_deepcopy_keeps_classes_and_outputs():
    model = converted()
    clone = copy.deepcopy(model)
    assert_recgen_classes(clone)
    own = {p.data_ptr() for p in model.parameters()}
    assert not own & {p.data_ptr() for p in clone.parameters()}  # a copy, not shared storage
    x, img = inputs()
    with torch.no_grad():
        assert_identical(run(model, x, img), run(clone, x, img))


def test_save_load_whole_model_round_trips(tmp_path):
    model = converted()
    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert_recgen_classes(loaded)
    x, img = inputs()
    with torch.no_grad():
        assert_identical(run(model, x, img), run(loaded, x, img))


def test_state_dict_loads_into_fresh_torch_model():
    """A converted model's state_dict has torch's keys and values: a fresh, differently initialised
    unconverted model loading it computes exactly what the original torch model did."""
    original = make_model(0).eval()
    model = recgen.convert(copy.deepcopy(original)).eval()
    fresh = make_model(1).eval()
    assert not torch.equal(fresh[0].weight_ih_l0, original[0].weight_ih_l0)
    fresh.load_state_dict(model.state_dict())
    assert type(fresh[0]) is nn.LSTM and type(fresh[2][0]) is ResnetBlock
    x, img = inputs()
    with torch.no_grad(), backend("reference"):  # pure torch everywhere (ResidualBlock included)
        expected, got = run(original, x, img), run(fresh, x, img)
    assert_identical(expected, got)
    with torch.no_grad():
        kernels = run(model, x, img)
    errors = [max_rel_error(a, b) for a, b in zip(kernels, got)]
    assert max(errors) <= TOLERANCES[torch.float32], errors


def forward_backward(module, x):
    """Outputs, input gradient and parameter gradients (and buffers) of one training step from a copy."""
    module = copy.deepcopy(module).train()
    x = x.detach().clone().requires_grad_()
    out = module(x)
    outs = list(out[:1]) + list(out[1]) if isinstance(out, tuple) else [out]
    gen = torch.Generator().manual_seed(2)
    torch.autograd.backward(outs, [torch.rand(o.shape, generator=gen) - 0.5 for o in outs])
    return outs + [x.grad] + [p.grad for p in module.parameters()] + list(module.buffers())


@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "use_deterministic_algorithms"])
@pytest.mark.parametrize("kind", ["lstm", "residual_block"])
def test_forward_backward_is_bitwise_deterministic(kind, deterministic):
    torch.manual_seed(3)
    if kind == "lstm":
        module = recgen.nn.LSTM(3, 7, num_layers=2, bidirectional=True)
        x = torch.randn(5, 3, 3)
    else:
        module = recgen.nn.ResidualBlock(3, out_channels=4, stride=2, norm="batch")
        randomise_norms(module)
        x = torch.randn(2, 3, 6, 7)
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        with backend("triton"):
            first, second = forward_backward(module, x), forward_backward(module, x)
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    assert all(t is not None for t in first)
    assert_identical(first, second)
