"""recgen.convert: torch.nn recurrent modules nested anywhere in a model become recgen's, sharing
the same Parameter objects (optimizers and checkpoints keep working), and nothing else changes."""

import copy
import logging

import pytest
import torch
from torch import nn

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.testing import TOLERANCES, max_rel_error

TOL = TOLERANCES[torch.float32]
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


class UserLSTM(nn.LSTM):
    """A user's subclass with its own forward: convert must leave it alone."""

    def forward(self, input, hx=None):
        y, state = super().forward(input, hx)
        return 2 * y, state


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(5, 4, bidirectional=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        y, _ = self.gru(x)
        return self.out(y)


class Model(nn.Module):
    """Recurrent modules at the top level, inside Sequential, ModuleList and a custom Module."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True, proj_size=5)
        self.proj = nn.Linear(5, 5)
        self.cells = nn.ModuleList([nn.GRUCell(5, 7), nn.LSTMCell(7, 5),
                                    nn.RNNCell(5, 5, nonlinearity="relu")])
        self.seq = nn.Sequential(nn.Linear(5, 5), nn.RNN(5, 5), Block())
        self.user = UserLSTM(3, 3)

    def forward(self, x):
        """x: (B, T, 4) -> (T, B, 3)."""
        y, _ = self.lstm(x)
        z = self.proj(y)
        h_gru, state, h_rnn, outs = None, None, None, []
        for t in range(z.shape[1]):
            h_gru = self.cells[0](z[:, t], h_gru)
            state = self.cells[1](h_gru, state)
            h_rnn = self.cells[2](state[0], h_rnn)
            outs.append(h_rnn)
        seq = self.seq[0](torch.stack(outs))      # (T, B, 5)
        seq, _ = self.seq[1](seq)
        seq = self.seq[2](seq)                     # (T, B, 3)
        return self.user(seq)[0]


RECURRENT = {  # qualified name -> torch class name
    "lstm": "LSTM", "cells.0": "GRUCell", "cells.1": "LSTMCell", "cells.2": "RNNCell",
    "seq.1": "RNN", "seq.2.gru": "GRU",
}


def get(model, qualified):
    return model.get_submodule(qualified)


def test_every_recurrent_module_becomes_recgen_and_shares_parameters():
    torch.manual_seed(0)
    model = Model()
    old_modules = {n: get(model, n) for n in RECURRENT}
    old_params = dict(model.named_parameters())
    linear = model.proj
    report = []
    out = recgen.convert(model, report=report)
    assert out is model
    for name, cls in RECURRENT.items():
        new = get(model, name)
        assert type(new) is getattr(recgen.nn, cls), name
        assert isinstance(new, getattr(nn, cls)), name
        assert new is not old_modules[name], name
        for pname, p in new.named_parameters():
            assert p is old_params[f"{name}.{pname}"], f"{name}.{pname} is not the same Parameter"
    assert all(p is old_params[n] for n, p in model.named_parameters())
    assert list(dict(model.named_parameters())) == list(old_params)
    # everything else is left alone
    assert model.proj is linear and type(model.proj) is nn.Linear
    assert type(model.seq[0]) is nn.Linear and type(model.seq[2].out) is nn.Linear
    assert type(model.seq[2]) is Block and type(model.seq) is nn.Sequential
    assert type(model.user) is UserLSTM
    assert not isinstance(model.user, recgen.nn.LSTM)
    assert sorted(report) == sorted(RECURRENT.items())


def test_state_dict_unchanged():
    torch.manual_seed(1)
    model = Model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recgen.convert(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    # a checkpoint of the unconverted model loads into the converted one
    fresh = Model()
    recgen.convert(fresh)
    result = fresh.load_state_dict(before)
    assert not result.missing_keys and not result.unexpected_keys


def test_outputs_and_gradients_equal_unconverted_copy(device):
    torch.manual_seed(2)
    model = Model().to(device)
    original = copy.deepcopy(model)
    recgen.convert(model)
    x = torch.randn(2, 3, 4, device=device)
    x_ref = x.clone().requires_grad_()
    x_rec = x.clone().requires_grad_()
    y_ref = original(x_ref)
    before = dict(LAUNCH_COUNTS)
    y = model(x_rec)
    launched = {k: v - before.get(k, 0) for k, v in LAUNCH_COUNTS.items()}
    # lstm: 2 layers; gru: bidirectional, both directions in one launch; rnn: 1; cells: one
    # launch each per step (T=3); the user's LSTM subclass is not converted and launches nothing.
    assert launched["lstm_fwd"] == 2 + 3
    assert launched["gru_fwd"] == 1 + 3
    assert launched["rnn_fwd"] == 1 + 3
    err = max_rel_error(y, y_ref)
    assert err <= TOL, f"output: {err:.3g}"
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y.backward(g)
    err = max_rel_error(x_rec.grad, x_ref.grad)
    assert err <= TOL, f"dinput: {err:.3g}"
    ref_params = dict(original.named_parameters())
    for name, p in model.named_parameters():
        err = max_rel_error(p.grad, ref_params[name].grad)
        assert err <= TOL, f"d{name}: {err:.3g}"


def test_optimizer_built_before_convert_still_trains(device):
    torch.manual_seed(3)
    model = Model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    recgen.convert(model)
    w = model.lstm.weight_hh_l1
    cell_w = model.cells[1].weight_ih
    w_before, cell_before = w.detach().clone(), cell_w.detach().clone()
    model(torch.randn(2, 3, 4, device=device)).square().sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    opt.step()
    assert model.lstm.weight_hh_l1 is w
    assert not torch.equal(w.detach(), w_before)
    torch.testing.assert_close(w.detach(), w_before - 0.5 * w.grad, rtol=0, atol=1e-6)
    assert not torch.equal(cell_w.detach(), cell_before)
    # the optimizer holds exactly the converted model's parameters
    held = {id(p) for group in opt.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters()}


def test_report_and_log_name_what_was_swapped(caplog):
    torch.manual_seed(4)
    model = Model()
    report = []
    with caplog.at_level(logging.INFO, logger="recgen"):
        recgen.convert(model, report=report)
    assert sorted(report) == sorted(RECURRENT.items())
    records = [r for r in caplog.records if r.name == "recgen"]
    assert len(records) == len(RECURRENT)
    text = "\n".join(r.getMessage() for r in records)
    for name, cls in RECURRENT.items():
        assert f"{name} ({cls})" in text, name
    assert "user" not in text and "proj" not in text


def test_bare_module_is_returned_converted(caplog, device):
    torch.manual_seed(5)
    gru = nn.GRU(3, 5, num_layers=2).to(device)
    params = list(gru.parameters())
    report = []
    with caplog.at_level(logging.INFO, logger="recgen"):
        new = recgen.convert(gru, report=report)
    assert type(new) is recgen.nn.GRU
    assert all(a is b for a, b in zip(new.parameters(), params))
    assert len(list(new.parameters())) == len(params)
    assert report == [("", "GRU")]
    assert any("GRU" in r.getMessage() for r in caplog.records if r.name == "recgen")
    x = torch.randn(4, 2, 3, device=device)
    with torch.no_grad():
        before = dict(LAUNCH_COUNTS)
        y, h = new(x)
        assert LAUNCH_COUNTS["gru_fwd"] - before.get("gru_fwd", 0) == 2
        y_ref, h_ref = gru(x)
    assert max_rel_error(y, y_ref) <= TOL
    assert max_rel_error(h, h_ref) <= TOL


def test_bare_user_subclass_is_left_alone():
    user = UserLSTM(3, 4)
    report = []
    assert recgen.convert(user, report=report) is user
    assert type(user) is UserLSTM and report == []


def test_converting_twice_is_a_no_op(caplog):
    torch.manual_seed(6)
    model = Model()
    recgen.convert(model)
    modules = {n: get(model, n) for n in RECURRENT}
    report = []
    with caplog.at_level(logging.INFO, logger="recgen"):
        again = recgen.convert(model, report=report)
    assert again is model
    assert report == []
    assert not [r for r in caplog.records if r.name == "recgen"]
    for name, module in modules.items():
        assert get(model, name) is module, name
    lstm = recgen.nn.LSTM(3, 4)
    assert recgen.convert(lstm) is lstm


def test_flags_and_hooks_survive(device):
    torch.manual_seed(7)
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True)).to(device)
    model.eval()
    calls = []
    model[0].register_forward_hook(lambda mod, inp, out: calls.append(type(mod)))
    recgen.convert(model)
    assert type(model[0]) is recgen.nn.LSTM
    assert not model[0].training and model[0].batch_first
    before = dict(LAUNCH_COUNTS)
    model[0](torch.randn(2, 3, 3, device=device))
    assert LAUNCH_COUNTS["lstm_fwd"] - before.get("lstm_fwd", 0) == 1
    assert calls == [recgen.nn.LSTM]
