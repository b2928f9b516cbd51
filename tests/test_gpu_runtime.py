"""recgen under the CUDA runtime tools people wrap models in: CUDA graph capture of a whole
training step (also in the persistent mode, whose barrier check must not read the host while
capturing), fp16 autocast with GradScaler, and tensors whose element offsets pass 2**31,
forward and backward. All need a GPU (marked `gpu`, skipped elsewhere)."""

import copy

import pytest
import torch

import recgen
from recgen.ops import LAUNCH_COUNTS
from recgen.ops.common.tiling import forced_tiles
from recgen.testing import TOLERANCES, max_rel_error

pytestmark = pytest.mark.gpu


class RowGenerator(torch.nn.Module):
    """Recurrent rows, then a residual block over the image they form."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(32, 8, batch_first=True)
        self.block = recgen.nn.ResidualBlock(4, 4, norm="batch")

    def forward(self, z):
        y, _ = self.lstm(z)            # (N, 16 rows, 32)
        y, _ = self.gru(y)             # (N, 16, 8)
        img = y.reshape(y.shape[0], 4, 4, 8)
        return self.block(img)


def _train_step(model, opt, z, target):
    opt.zero_grad(set_to_none=False)  # grads stay allocated: a captured graph reuses them
    loss = (model(z) - target).square().mean()
    loss.backward()
    opt.step()
    return loss


def test_cuda_graph_captures_a_whole_training_step():
    """Forward, backward and optimizer step captured once and replayed: the same losses and
    parameters as running the same steps eagerly (no host sync, no allocation that changes
    between replays, no Python-side state inside the ops)."""
    torch.manual_seed(0)
    eager = recgen.convert(RowGenerator()).cuda()
    graphed = copy.deepcopy(eager)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(graphed.parameters(), lr=0.1)
    batches = [(torch.randn(3, 16, 8, device="cuda"), torch.randn(3, 4, 4, 8, device="cuda")) for _ in range(5)]
    static_z, static_t = (t.clone() for t in batches[0])

    side = torch.cuda.Stream()  # warm-up on a side stream, as torch's CUDA graph recipe does
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for z, t in batches[:2]:
            _train_step(eager, opt_e, z, t)
            _train_step(graphed, opt_g, z, t)
    torch.cuda.current_stream().wait_stream(side)

    graph = torch.cuda.CUDAGraph()
    before = dict(LAUNCH_COUNTS)
    with torch.cuda.graph(graph):
        static_loss = _train_step(graphed, opt_g, static_z, static_t)
    assert LAUNCH_COUNTS["lstm_bwd"] > before.get("lstm_bwd", 0)  # kernels were captured
    for z, t in batches[2:]:
        static_z.copy_(z)
        static_t.copy_(t)
        graph.replay()
        loss = _train_step(eager, opt_e, z, t)
        assert max_rel_error(static_loss, loss) <= 1e-5
    for (name, p_g), p_e in zip(graphed.named_parameters(), eager.parameters()):
        assert max_rel_error(p_g, p_e) <= 1e-5, name


def test_cuda_graph_captures_a_persistent_step_with_the_barrier_check_on(monkeypatch):
    """The persistent LSTM (one cooperative launch each way) captured with RECGEN_CHECK_BARRIER=1:
    no host read of the error flag while capturing (it would fail the capture), the device-side
    check instead; replays equal eager steps."""
    monkeypatch.setenv("RECGEN_CHECK_BARRIER", "1")
    torch.manual_seed(5)
    eager = recgen.nn.LSTM(256, 256).cuda()
    graphed = copy.deepcopy(eager)
    xs = [torch.randn(16, 32, 256, device="cuda") for _ in range(3)]
    static_x = xs[0].clone().requires_grad_()

    def step(model, x):
        for p in model.parameters():
            p.grad = None if p.grad is None else p.grad.zero_()
        y, _ = model(x)
        y.square().sum().backward()
        return y

    with forced_tiles(mode="persistent"):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step(graphed, static_x)  # warm-up: plans chosen and kernels compiled outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        before = dict(LAUNCH_COUNTS)
        with torch.cuda.graph(graph):
            static_y = step(graphed, static_x)
        assert LAUNCH_COUNTS["lstm_fwd_persistent"] == before.get("lstm_fwd_persistent", 0) + 1
        assert LAUNCH_COUNTS["lstm_bwd_persistent"] == before.get("lstm_bwd_persistent", 0) + 1
        for x in xs[1:]:
            static_x.data.copy_(x)
            static_x.grad.zero_()  # the captured backward accumulates into it in place
            graph.replay()
            x_e = x.clone().requires_grad_()
            y_e = step(eager, x_e)
            torch.cuda.synchronize()
            assert max_rel_error(static_y, y_e) <= TOLERANCES[torch.float32]
            assert max_rel_error(static_x.grad, x_e.grad) <= TOLERANCES[torch.float32]


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_fp16_autocast_with_grad_scaler_trains_like_torch(name):
    torch.manual_seed(1)
    ref = torch.nn.Sequential(getattr(torch.nn, name)(6, 12, num_layers=2)).cuda()
    rec = recgen.convert(copy.deepcopy(ref))
    runs = []
    for model in (ref, rec):
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cuda")
        gen = torch.Generator(device="cuda").manual_seed(2)
        for _ in range(3):
            x = torch.randn(5, 4, 6, device="cuda", generator=gen)
            with torch.autocast("cuda", dtype=torch.float16):
                y, _ = model(x)
                assert y.dtype == torch.float16
                loss = y.float().square().mean()
            scaler.scale(loss).backward()
            assert all(p.grad.dtype == torch.float32 for p in model.parameters())
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        runs.append([p.detach().clone() for p in model.parameters()])
    for p_ref, p_rec in zip(*runs):
        assert max_rel_error(p_rec, p_ref) <= TOLERANCES[torch.float16]


def test_offsets_past_2_31_elements():
    """A bidirectional LSTM whose saved gates hold 2**32 elements (direction 1 starts at 2**31):
    int64 offsets. Compared with cuDNN in float32 (TF32 off: conftest) at the first and last steps."""
    torch.manual_seed(3)
    T, B, H = 4096, 512, 256            # gates: 2 * T * B * 4H = 2**32 float32 elements
    ref = torch.nn.LSTM(H, H, bidirectional=True).cuda()
    rec = recgen.convert(copy.deepcopy(ref))
    x = torch.randn(T, B, H, device="cuda")
    with torch.no_grad():
        y, (h, c) = rec(x)
        torch.cuda.synchronize()
        y_ref, (h_ref, c_ref) = ref(x)
    for a, b in ((y[:2], y_ref[:2]), (y[-2:], y_ref[-2:]), (h, h_ref), (c, c_ref)):
        assert max_rel_error(a, b) <= 1e-4
    assert torch.isfinite(y).all()


# Forward and backward past 2**31 elements, one direction, float32 (TF32 off: conftest):
# T, B, H, I = 16896, 512, 256, 16, so N = T * B * H = 2_214_592_512 > 2**31 = 2_147_483_648.
# Past 2**31: c, y, dy and h_prev (N elements), gates, xw and dgates (4N). Bytes, 4 per element
# (GB = 1e9): x 0.55; forward xw 35.4 + y 8.9 + gates 35.4 + c 8.9 = 89.1 at its peak; then xw
# is freed (no one saves it) and the loss weight w (8.9) is made: 62.5 held into the backward;
# the backward adds dy = w * 1 (8.9), dgates (35.4) and h_prev (the cat, 8.9, and its stack, 8.9,
# at once): 124.5 GB = 116 GiB at the peak, under the H200's 139 GiB with 23 GiB to spare. The
# reference (cuDNN) runs on two batch rows only (rows are independent): megabytes. Time: the
# recurrence is 16896 steps each way at about 10-20 us (its W_hh read from L2 per step), a
# second or two, plus the reference's: well under 30 s.
BIG = dict(T=16896, B=512, H=256, I=16)


@pytest.mark.parametrize("mode", ["streamed", "persistent"])
def test_offsets_past_2_31_elements_with_gradients(mode, monkeypatch):
    """An LSTM whose saved tensors (gates, c), output gradient and gate gradients pass 2**31
    elements, forward and backward in the streamed and the persistent modes: every output and
    input gradient of the first and last batch rows (the largest offsets of every step)
    against cuDNN on those rows alone; everything finite."""
    monkeypatch.setenv("RECGEN_CHECK_BARRIER", "1")
    T, B, H, I = BIG["T"], BIG["B"], BIG["H"], BIG["I"]
    assert T * B * H > 2 ** 31 and T * B * 4 * H > 2 ** 33
    torch.cuda.empty_cache()  # other tests' cached blocks: the peak needs 116 GiB in few pieces
    torch.manual_seed(4)
    ref = torch.nn.LSTM(I, H).cuda()
    rec = recgen.convert(copy.deepcopy(ref))
    x = torch.randn(T, B, I, device="cuda", requires_grad=True)
    w = torch.randn(T, B, H, device="cuda")  # the loss's weight: every dy nonzero
    before = dict(LAUNCH_COUNTS)
    kernels = ("lstm_fwd", "lstm_bwd") if mode == "streamed" else ("lstm_fwd_persistent", "lstm_bwd_persistent")
    with forced_tiles(mode=mode):
        y, (h, c) = rec(x)
        (y * w).sum().backward()
    torch.cuda.synchronize()
    for name in kernels:
        assert LAUNCH_COUNTS[name] == before.get(name, 0) + 1, name
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in rec.parameters())
    rows = torch.tensor([0, B - 1], device="cuda")
    y_rows, h_rows, c_rows = y.detach()[:, rows], h.detach()[:, rows], c.detach()[:, rows]
    assert torch.isfinite(y_rows).all()
    dx_rows, w_rows = x.grad[:, rows], w[:, rows]
    del y, h, c, w
    x_ref = x.detach()[:, rows].clone().requires_grad_()
    y_ref, (h_ref, c_ref) = ref(x_ref)
    (y_ref * w_rows).sum().backward()
    for a, b in ((y_rows, y_ref), (h_rows, h_ref), (c_rows, c_ref), (dx_rows, x_ref.grad)):
        assert max_rel_error(a, b) <= 1e-4
