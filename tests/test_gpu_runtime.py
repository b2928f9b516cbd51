"""recgen under the CUDA runtime tools people wrap models in: CUDA graph capture of a whole
training step, fp16 autocast with GradScaler, and tensors whose element offsets pass 2**31.
All need a GPU (marked `gpu`, skipped elsewhere)."""

import copy

import pytest
import torch

import recgen
from recgen.ops import LAUNCH_COUNTS
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
