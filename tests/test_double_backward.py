"""Double backward through the kernels: a backward run with create_graph=True (a gradient penalty,
a Hessian-vector product) builds a differentiable graph, so second derivatives are right.

The ops' backward then recomputes the forward through the reference under autograd
(recgen.ops.recurrent.shared.recomputed_grads, recgen.ops.conv.conv2d.recomputed_conv_grads,
recomputed_affine_grads); without create_graph the kernels' backward runs as before. Checked
here with the kernels running (float32, under the interpreter on the CPU) against the float64
reference on a copy with the same weights, every parameter's and the input's gradient of a
gradient penalty; then a WGAN-GP step through a recurrent discriminator against torch.nn's.
(float64 itself goes to torch's op: gradgradcheck in tests/test_float64.py.)
"""

import copy

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import recgen
from recgen.backend import backend, implementation_of
from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TOLERANCES, max_rel_error

RECURRENT = [
    ("lstm-proj-bidir-2layers", lambda: torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=3), "lstm"),
    ("lstm-packed", lambda: torch.nn.LSTM(3, 5), "lstm"),
    ("gru-bidir", lambda: torch.nn.GRU(3, 5, bidirectional=True), "gru"),
    ("gru-packed-2layers", lambda: torch.nn.GRU(3, 5, num_layers=2), "gru"),
    ("rnn-tanh-2layers", lambda: torch.nn.RNN(3, 5, num_layers=2), "rnn"),
    ("rnn-relu-bidir-packed", lambda: torch.nn.RNN(3, 5, nonlinearity="relu", bidirectional=True), "rnn"),
    ("lstm-cell", lambda: torch.nn.LSTMCell(3, 5), "lstm"),
    ("gru-cell", lambda: torch.nn.GRUCell(3, 5), "gru"),
    ("rnn-cell", lambda: torch.nn.RNNCell(3, 5, nonlinearity="relu"), "rnn"),
]
BLOCKS = [
    ("residual-batch-train", dict(norm="batch"), True),
    ("residual-batch-eval-projection-stride2", dict(out_channels=4, stride=2, norm="batch"), False),
    ("residual-instance-train-reflect", dict(norm="instance", padding_mode="reflect"), True),
    ("residual-instance-eval-upsample", dict(out_channels=2, upsample=True, norm="instance"), False),
    ("residual-none-leaky", dict(norm=None, activation="leaky_relu"), True),
]


def _tensors(out):
    """Every tensor a module returns (a PackedSequence's data, states), flattened."""
    flat = []
    for o in out if isinstance(out, tuple) else (out,):
        if isinstance(o, PackedSequence):
            flat.append(o.data)
        elif isinstance(o, tuple):
            flat += list(o)
        else:
            flat.append(o)
    return flat


def _penalty_grads(module, x, packed):
    """Gradients of a gradient penalty, |d loss / d x|^2 + <d loss / d x, v>, with respect to x
    and every parameter."""
    x = x.clone().requires_grad_()
    inp = pack_padded_sequence(x, torch.tensor([4, 2, 3]), enforce_sorted=False) if packed else x
    outs = _tensors(module(inp))
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).square().sum() for o in outs)
    g, = torch.autograd.grad(loss, x, create_graph=True)
    penalty = g.square().sum() + (g * torch.cos(torch.arange(g.numel(), dtype=g.dtype)).view_as(g)).sum()
    penalty.backward()
    return {"x": x.grad, **{name: p.grad for name, p in module.named_parameters()}}


@pytest.mark.parametrize("build,family", [(b, f) for _, b, f in RECURRENT], ids=[n for n, _, _ in RECURRENT])
def test_recurrent_double_backward_through_the_kernels(build, family):
    name = next(n for n, b, _ in RECURRENT if b is build)
    torch.manual_seed(0)
    reference = build().double()
    ours = recgen.convert(copy.deepcopy(reference)).float()
    cell = isinstance(reference, torch.nn.RNNCellBase)
    x = torch.randn(*((2, 3) if cell else (4, 3, 3)), dtype=torch.float64)
    packed = "packed" in name
    before = dict(LAUNCH_COUNTS)
    with backend("triton"):
        got = _penalty_grads(ours, x.float(), packed)
    assert implementation_of(ours) in ("kernels", "interpreter")
    for op in (f"{family}_fwd", f"{family}_bwd"):  # the kernels ran, forward and backward
        assert LAUNCH_COUNTS[op] > before.get(op, 0), op
    with backend("reference"):
        want = _penalty_grads(reference, x, packed)
    for key in want:
        assert max_rel_error(got[key], want[key]) <= TOLERANCES[torch.float32], key


@pytest.mark.parametrize("options,train", [(o, t) for _, o, t in BLOCKS], ids=[n for n, _, _ in BLOCKS])
def test_residual_block_double_backward_through_the_kernels(options, train):
    torch.manual_seed(0)
    ours = recgen.nn.ResidualBlock(3, **options).train(train)
    with torch.no_grad():
        for m in ours.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    reference = copy.deepcopy(ours).double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    before = dict(LAUNCH_COUNTS)
    with backend("triton"):
        got = _penalty_grads(ours, x.float(), packed=False)
    for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"):
        assert LAUNCH_COUNTS[op] > before.get(op, 0), op
    with backend("reference"):
        want = _penalty_grads(reference, x, packed=False)
    for key in want:
        assert max_rel_error(got[key], want[key]) <= TOLERANCES[torch.float32], key


class RowCritic(torch.nn.Module):
    """A WGAN critic reading an image row by row: LSTM, then a linear score of the last state."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(6, 8, batch_first=True)
        self.score = torch.nn.Linear(8, 1)

    def forward(self, rows):
        return self.score(self.lstm(rows)[0][:, -1]).squeeze(1)


def _wgan_gp_steps(critic, steps=3):
    """WGAN-GP critic updates (Gulrajani et al.: Adam 1e-4, betas (0.5, 0.9), penalty weight 10)
    on fixed real and fake batches; returns the losses."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    losses = []
    for _ in range(steps):
        real = torch.rand(4, 5, 6, generator=gen)
        fake = torch.rand(4, 5, 6, generator=gen) * 0.5
        eps = torch.rand(4, 1, 1, generator=gen)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_()
        g, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        penalty = ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()
        loss = critic(fake).mean() - critic(real).mean() + 10 * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_wgan_gp_step_through_a_recurrent_critic_matches_torch_nn():
    torch.manual_seed(0)
    theirs = RowCritic()
    ours = recgen.convert(copy.deepcopy(theirs))
    before = LAUNCH_COUNTS["lstm_bwd"]
    with backend("triton"):
        our_losses = _wgan_gp_steps(ours)
    assert LAUNCH_COUNTS["lstm_bwd"] > before and implementation_of(ours.lstm) in ("kernels", "interpreter")
    their_losses = _wgan_gp_steps(theirs)
    assert our_losses[-1] < our_losses[0]  # it trains
    assert max_rel_error(our_losses, their_losses) <= TOLERANCES[torch.float32]
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert max_rel_error(p, q) <= TOLERANCES[torch.float32], name
