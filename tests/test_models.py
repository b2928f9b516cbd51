"""recgen.app.models: the image generators behind build_model's training interface.

Each model on tiny sizes: shapes, samples in [0, 1] and reproducible from a seed, train_step
(finite losses, every parameter moves), the row LSTM's NLL falling, and torch_twin (the same
model on torch.nn's layers) giving the same outputs and losses. On the CPU the training tests
run recgen's reference path (the Triton interpreter is too slow for training loops); on CUDA
they run the kernels. test_kernel_path_matches_twin runs the kernels on the CPU, forward only.
"""

import pytest
import torch

import recgen
from recgen.app.models import (MODELS, CyclicMLP, GenerativeModel, ResidualDiscriminator, ResidualGenerator,
                               TorchLinear, TorchResidualBlock, build_model, torch_twin)
from recgen.testing import TOLERANCES, max_rel_error

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# recgen vs its torch twin: two float32 implementations, each within the float32 tolerance of
# the exact result, so up to twice that apart.
TOL = 2 * TOLERANCES[torch.float32]
LOSS_TOL = 1e-4  # a loss after one step of Adam; Adam's first step is sign(grad), so not 2e-5
RECGEN_NN = (recgen.nn.RNN, recgen.nn.GRU, recgen.nn.LSTM, recgen.nn.RNNCell, recgen.nn.GRUCell,
             recgen.nn.LSTMCell, recgen.nn.ResidualBlock, recgen.nn.Linear)

# id -> (name, image_shape, options): the smallest sizes that exercise every layer.
CASES = {
    "row-lstm-1x8x8": ("row-lstm", (1, 8, 8), dict(hidden=16)),
    "rnn-gan-lstm-1x8x8": ("rnn-gan", (1, 8, 8), dict(hidden=16, noise_dim=8)),
    "rnn-gan-gru-1x8x8": ("rnn-gan", (1, 8, 8), dict(hidden=16, noise_dim=8, discriminator="gru")),
    "res-gan-1x8x8": ("res-gan", (1, 8, 8), dict(base=8, noise_dim=16)),
    "res-gan-3x16x16": ("res-gan", (3, 16, 16), dict(base=8, noise_dim=16)),
    "cyclic-mlp-1x8x8": ("cyclic-mlp", (1, 8, 8), dict(hidden=12)),
}
B = 5  # odd batch


@pytest.fixture(autouse=True)
def _reference_on_cpu():
    """conftest turns on the Triton interpreter without CUDA; training here uses the reference."""
    if not CUDA:
        recgen.set_backend("reference")
    yield


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return CASES[request.param]


def make(case, seed=0):
    name, shape, options = case
    torch.manual_seed(seed)
    return build_model(name, shape, **options).to(DEVICE)


def images(shape, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *shape), generator=g).to(DEVICE)


def recgen_modules(model):
    return [m for m in model.modules() if type(m).__module__.startswith("recgen.nn")]


def outputs(model, x, z_seed=2):
    """Every network output of a model on x (and on seeded noise for a GAN), eval mode."""
    model.eval()
    with torch.no_grad():
        if model.name == "row-lstm":
            return {"logits": model(x)}
        if model.name == "cyclic-mlp":
            return {"reconstruction": model(x)}
        z = model.net.noise(x.shape[0], torch.Generator().manual_seed(z_seed))
        return {"fake": model(z), "d_real": model.net.discriminator(x),
                "d_fake": model.net.discriminator(model(z))}


# --------------------------------------------------------------------------- registry

def test_registry_and_unknown_name():
    assert list(MODELS) == ["row-lstm", "rnn-gan", "res-gan", "cyclic-mlp"]
    with pytest.raises(ValueError, match="row-lstm, rnn-gan, res-gan, cyclic-mlp"):
        build_model("pixel-cnn", (1, 8, 8))


def test_build(case):
    name, shape, _ = case
    model = make(case)
    assert isinstance(model, GenerativeModel) and isinstance(model, MODELS[name])
    assert model.name == name and model.image_shape == shape
    kinds = {type(m) for m in recgen_modules(model)}
    assert kinds and all(issubclass(k, RECGEN_NN) for k in kinds)
    expected = {"row-lstm": {recgen.nn.LSTM}, "res-gan": {recgen.nn.ResidualBlock}, "cyclic-mlp": {recgen.nn.Linear},
                "rnn-gan": {recgen.nn.LSTM, {"lstm": recgen.nn.LSTM, "gru": recgen.nn.GRU}[
                    case[2].get("discriminator", "lstm")]}}[name]
    assert kinds == expected


@pytest.mark.parametrize("shape", [(1, 8), (0, 8, 8), (1, 8, 8.0)], ids=["2d", "zero-C", "float-W"])
def test_bad_image_shape(shape):
    with pytest.raises(ValueError):
        build_model("row-lstm", shape)


@pytest.mark.parametrize("shape", [(1, 12, 12), (1, 6, 6), (1, 2, 2), (1, 8, 16)],
                         ids=["12", "6", "2", "not-square"])
def test_res_gan_unreachable_sizes(shape):
    with pytest.raises(ValueError):
        build_model("res-gan", shape, base=8)


@pytest.mark.parametrize("size", [4, 32, 64])
def test_res_gan_sizes(size):
    g, d = ResidualGenerator(size, channels=3, noise_dim=4, base=4), ResidualDiscriminator(size, 3, base=4)
    fake = g(torch.randn(3, 4))
    assert fake.shape == (3, 3, size, size)
    assert d(fake).shape == (3,)


# --------------------------------------------------------------------------- shapes and sampling

def test_forward_shapes(case):
    name, shape, _ = case
    model = make(case)
    out = outputs(model, images(shape))
    if name == "row-lstm":
        assert out["logits"].shape == (B, *shape)
    elif name == "cyclic-mlp":
        assert out["reconstruction"].shape == (B, *shape)
    else:
        assert out["fake"].shape == (B, *shape)
        assert out["d_real"].shape == out["d_fake"].shape == (B,)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_row_lstm_is_autoregressive():
    """Logits of row t do not depend on rows >= t."""
    model = make(CASES["row-lstm-1x8x8"]).eval()
    x = images((1, 8, 8))
    y = x.clone()
    y[:, :, 5:] = 1 - y[:, :, 5:]
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :, :6], b[:, :, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, :, 6:], b[:, :, 6:])


def test_sample(case):
    _, shape, _ = case
    model = make(case)
    if case[0] == "cyclic-mlp":  # an autoencoder: it reconstructs, it draws nothing
        with pytest.raises(TypeError, match="autoencoder: it reconstructs images"):
            model.sample(3, generator=torch.Generator().manual_seed(7))
        pytest.skip("cyclic-mlp draws no samples (its reconstructions: test_cyclic_mlp_reconstruct)")
    for training in (True, False):
        model.train(training)
        first = model.sample(3, generator=torch.Generator().manual_seed(7))
        assert model.training == training  # the mode is restored
        assert first.shape == (3, *shape) and first.device.type == DEVICE
        assert first.min() >= 0 and first.max() <= 1 and not first.requires_grad
        again = model.sample(3, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = model.sample(3, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(first, other)
    with pytest.raises(ValueError):
        model.sample(0)


# --------------------------------------------------------------------------- training

def test_train_step(case):
    name, shape, _ = case
    model = make(case)
    optimizers = model.make_optimizers()
    if name in ("row-lstm", "cyclic-mlp"):
        assert set(optimizers) == {"model"}
        assert optimizers["model"].defaults["lr"] == 1e-3
    else:
        assert set(optimizers) == {"generator", "discriminator"}
        for opt in optimizers.values():
            assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.5, 0.999)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    model.eval()
    losses = model.train_step(images(shape), optimizers)
    assert model.training
    assert set(losses) >= {"row-lstm": {"nll"}, "cyclic-mlp": {"mse"}}.get(name, {"d_loss", "g_loss"})
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in losses.values())
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    assert all(p.requires_grad for p in model.parameters())


def test_train_step_bad_input(case):
    _, shape, _ = case
    model = make(case)
    optimizers = model.make_optimizers()
    with pytest.raises(ValueError):
        model.train_step(images((shape[0], shape[1] * 2, shape[2])), optimizers)
    with pytest.raises(KeyError):
        model.train_step(images(shape), {})


def test_row_lstm_nll_falls():
    model = make(CASES["row-lstm-1x8x8"])
    optimizers = model.make_optimizers()
    x = images((1, 8, 8), n=8) ** 2  # skewed pixel means, something to learn
    nll = [model.train_step(x, optimizers)["nll"] for _ in range(30)]
    assert sum(nll[-3:]) / 3 < 0.99 * sum(nll[:3]) / 3, nll  # 44.2 -> 43.1 nats


# --------------------------------------------------------------------------- torch twin

def test_torch_twin(case):
    _, shape, _ = case
    model = make(case)
    twin = model.torch_twin()
    assert type(twin) is type(model) and twin.image_shape == model.image_shape
    assert recgen_modules(model), "torch_twin must leave the model alone"
    assert not recgen_modules(twin) and not any(isinstance(m, RECGEN_NN) for m in twin.modules())
    if case[0] == "res-gan":
        assert any(isinstance(m, TorchResidualBlock) for m in twin.modules())
    if case[0] == "cyclic-mlp":  # Linear + relu, Linear + tanh, then a plain torch.nn.Linear
        layers = list(twin.net.layers)
        assert [type(m) for m in layers] == [TorchLinear, TorchLinear, torch.nn.Linear]
        assert [type(m.act) for m in layers[:2]] == [torch.nn.ReLU, torch.nn.Tanh]
    ours, theirs = model.state_dict(), twin.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], rtol=0, atol=0)
        if ours[key].numel():
            assert theirs[key].data_ptr() != ours[key].data_ptr(), f"{key} is shared"

    x = images(shape)
    expected, actual = outputs(twin, x), outputs(model, x)
    for key in expected:
        assert max_rel_error(actual[key], expected[key]) <= TOL, key
    if case[0] not in ("row-lstm", "cyclic-mlp"):  # row-lstm: thresholded Bernoulli draws, equal only where u
        # is not within rounding of p; cyclic-mlp draws no samples
        s1 = model.sample(3, generator=torch.Generator().manual_seed(3))
        s2 = twin.sample(3, generator=torch.Generator().manual_seed(3))
        assert max_rel_error(s1, s2) <= TOL

    # Two updates from the same noise: the same losses.
    opt_model, opt_twin = model.make_optimizers(), twin.make_optimizers()
    for step in range(2):
        torch.manual_seed(10 + step)
        ours = model.train_step(x, opt_model)
        torch.manual_seed(10 + step)
        theirs = twin.train_step(x, opt_twin)
        for key in theirs:
            assert abs(ours[key] - theirs[key]) <= LOSS_TOL * max(1.0, abs(theirs[key])), (step, key)


@pytest.mark.skipif(CUDA, reason="on CUDA every test here runs the kernels")
@pytest.mark.parametrize("name", ["row-lstm-1x8x8", "rnn-gan-gru-1x8x8", "res-gan-1x8x8", "cyclic-mlp-1x8x8"])
def test_kernel_path_matches_twin(name):
    """The Triton kernels (under the interpreter) give the twin's outputs."""
    from recgen.ops import LAUNCH_COUNTS

    model = make(CASES[name])
    twin = model.torch_twin()
    x = images(CASES[name][1], n=2)
    expected = outputs(twin, x)
    recgen.set_backend("triton")
    before = sum(LAUNCH_COUNTS.values())
    actual = outputs(model, x)
    assert sum(LAUNCH_COUNTS.values()) > before, "no kernel ran"
    for key in expected:
        assert max_rel_error(actual[key], expected[key]) <= TOL, key


@pytest.mark.skipif(CUDA, reason="on CUDA every test here runs the kernels")
@pytest.mark.parametrize("name", ["row-lstm-1x8x8", "rnn-gan-gru-1x8x8", "cyclic-mlp-1x8x8"])
def test_kernel_path_train_step_matches_twin(name):
    """A training step on the kernels (interpreter): the twin's losses and gradients. (res-gan's
    backward costs seconds under the interpreter; test_blocks covers the blocks' gradients.)"""
    model = make(CASES[name])
    twin = model.torch_twin()
    x = images(CASES[name][1], n=2)
    torch.manual_seed(4)
    theirs = twin.train_step(x, twin.make_optimizers())
    recgen.set_backend("triton")
    torch.manual_seed(4)
    ours = model.train_step(x, model.make_optimizers())
    for key in theirs:
        assert abs(ours[key] - theirs[key]) <= LOSS_TOL * max(1.0, abs(theirs[key])), key
    grads = dict(twin.named_parameters())
    # A GAN's generator gradients follow the discriminator's update, whose first Adam step is
    # sign(grad); compare the gradients computed before any update.
    compared = [k for k, _ in model.named_parameters()
                if name.startswith(("row-lstm", "cyclic-mlp")) or ".discriminator." in k]
    assert compared
    for key in compared:
        assert max_rel_error(model.get_parameter(key).grad, grads[key].grad) <= TOL, key


# --------------------------------------------------------------------------- cyclic-mlp

def test_cyclic_mlp_layers():
    """P -> H (relu) -> H (tanh) -> P, each a fused recgen.nn.Linear; P = C*H*W."""
    net = make(CASES["cyclic-mlp-1x8x8"]).net
    assert isinstance(net, CyclicMLP) and (net.pixels, net.hidden) == (64, 12)
    layers = list(net.layers)
    assert all(type(m) is recgen.nn.Linear for m in layers)
    assert [(m.in_features, m.out_features, m.activation) for m in layers] == [
        (64, 12, "relu"), (12, 12, "tanh"), (12, 64, None)]
    assert [tuple(p.shape) for p in net.parameters()] == [(12, 64), (12,), (12, 12), (12,), (64, 12), (64,)]
    assert build_model("cyclic-mlp", (3, 4, 5)).net.pixels == 60
    assert CyclicMLP(64).hidden == 64  # the seed's width by default
    with pytest.raises(ValueError, match=r"expected input of shape \(\.\.\., 64\), got \(2, 63\)"):
        net(torch.rand(2, 63))


def test_cyclic_mlp_reconstruct():
    model = make(CASES["cyclic-mlp-1x8x8"]).train()
    x = images((1, 8, 8))
    out = model.reconstruct(x)
    assert model.training and not out.requires_grad and out.shape == x.shape
    torch.testing.assert_close(out, model.net(x.flatten(1)).view_as(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\)"):
        model.reconstruct(torch.rand(2, 64))


def test_cyclic_mlp_error_falls():
    model = make(CASES["cyclic-mlp-1x8x8"])
    optimizers = model.make_optimizers()
    x = images((1, 8, 8), n=8)
    mse = [model.train_step(x, optimizers)["mse"] for _ in range(20)]
    assert sum(mse[-3:]) / 3 < 0.85 * sum(mse[:3]) / 3, mse  # 0.356 -> 0.27


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu", "tanh", "sigmoid"])
def test_linear_twin(activation):
    """recgen.nn.Linear's twin: torch.nn.Linear, or TorchLinear (nn.Linear + torch's activation
    module) holding copies of the same Parameters under the same state_dict keys."""
    torch.manual_seed(0)
    layer = recgen.nn.Linear(7, 5, activation=activation, negative_slope=0.2)
    twin = torch_twin(torch.nn.Sequential(layer))[0]
    if activation is None:
        assert type(twin) is torch.nn.Linear
    else:
        assert type(twin) is TorchLinear
        expected = {"relu": torch.nn.ReLU, "leaky_relu": torch.nn.LeakyReLU, "tanh": torch.nn.Tanh,
                    "sigmoid": torch.nn.Sigmoid}[activation]
        assert type(twin.act) is expected and getattr(twin.act, "negative_slope", 0.2) == 0.2
    assert list(twin.state_dict()) == list(layer.state_dict()) == ["weight", "bias"]
    assert twin.weight is not layer.weight and torch.equal(twin.weight, layer.weight)
    x = torch.randn(3, 7) * 3
    recgen.set_backend("torch")  # what layer computes with torch's ops, against the twin's modules
    torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
    assert type(layer) is recgen.nn.Linear  # the original is left alone


def test_linear_twin_refuses_a_subclass():
    class Scaled(recgen.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match="a subclass of a recgen.nn module"):
        torch_twin(torch.nn.Sequential(Scaled(3, 2, activation="relu")))
