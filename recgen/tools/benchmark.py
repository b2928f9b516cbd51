"""`recgen bench`: the standard benchmark grid, its providers and the timing loop.

The grid lives here, in one place, and is shared by `recgen bench` and the pytest-benchmark
files in bench/. Each case is timed per provider:
- recgen:    recgen's module (Triton kernels);
- cudnn:     the torch.nn module, eager (cuDNN on CUDA); on the CPU its rows are named `torch`
             (torch's own CPU kernels; `--provider torch` is the same provider);
- compile:   torch.compile of the torch.nn module (compiled in the warm-up, outside the timing);
- flashrnn:  the FlashRNN package, where importable (recurrent only);
- addmm_activation: torch._addmm_activation, cuBLASLt's GEMM + bias + relu/gelu epilogue (dense
             only, forward only while torch gives it no autograd: `addmm_activation_backward()`);
- reference: recgen's pure-PyTorch reference ops.
Each family times the providers of FAMILY_PROVIDERS. A provider that cannot run a case is
recorded with ms=None and the reason, never dropped.
Inputs are built and compilation/autotuning is done outside the timed region; CUDA is
synchronised around each timed run; the median over the rounds is reported with peak memory.
"""

from __future__ import annotations

import copy
import datetime
import functools
import itertools
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

import recgen
from recgen.ops.recurrent.modes import persistent_enabled
from recgen.tools.grids import (CPU_GRID, DENSE_GRID, FAMILIES, PASSES, QUICK_GPU, RECURRENT_GRID,
                                RESIDUAL_GRID)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROVIDERS = ("recgen", "cudnn", "compile", "flashrnn", "reference", "addmm_activation")
# The providers each family times (residual keeps FlashRNN's row, which says it has no such blocks).
FAMILY_PROVIDERS = {"recurrent": PROVIDERS[:5], "residual": PROVIDERS[:5],
                    "dense": ("recgen", "cudnn", "compile", "addmm_activation", "reference")}
PEERS = ("compile", "flashrnn")  # other projects' code: their failures are results
STANDARD_GRIDS = {"recurrent": RECURRENT_GRID, "residual": RESIDUAL_GRID, "dense": DENSE_GRID}


@dataclass(frozen=True)
class Case:
    family: str
    op: str
    dtype: str
    shape: dict = field(hash=False)

    def label(self) -> str:
        return f"{self.op} " + " ".join(f"{k}={v}" for k, v in self.shape.items()) + f" {self.dtype}"


def grid(family: str, quick: bool, cuda: bool) -> list:
    """The cases of `family` for this machine: the standard grid, --quick's subset, or the CPU grid."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(map(repr, FAMILIES))}")
    spec = (QUICK_GPU[family] if quick else STANDARD_GRIDS[family]) if cuda else CPU_GRID[family]
    cases = []
    for sub in (spec if isinstance(spec, tuple) else (spec,)):  # the dense grid is a tuple of sub-grids
        keys = list(sub)
        for values in itertools.product(*(sub[k] for k in keys)):
            v = dict(zip(keys, values))
            cases.append(Case(family, v["op"], v["dtype"], _shape(family, v)))
    return cases


def _shape(family: str, v: dict) -> dict:
    """A grid point's shape record (recgen.tools.bench_report's RecurrentShape, ResidualShape, DenseShape)."""
    if family == "recurrent":
        return {"T": v["T"], "B": v["B"], "I": v["H"], "H": v["H"]}
    if family == "residual":
        return {"N": v["N"], "C": v["C"], "H": v["S"], "W": v["S"], "train": v["train"]}
    if v["op"] == "mlp":  # P -> H -> H -> P
        return {"B": v["B"], "I": v["P"], "H": v["H"], "O": v["P"], "layers": 3}
    if v["op"] == "linear_relu":  # P -> H, one layer (no hidden width: H = O)
        return {"B": v["B"], "I": v["P"], "H": v["H"], "O": v["H"], "layers": 1}
    raise ValueError(f"unknown dense op {v['op']!r}; expected 'mlp' or 'linear_relu'")


# ---- modules and inputs -------------------------------------------------------------------

def _torch_recurrent(op: str, size: int) -> nn.Module:
    if op == "lstm":
        return nn.LSTM(size, size)
    if op == "gru":
        return nn.GRU(size, size)
    return nn.RNN(size, size, nonlinearity="tanh")


class _BasicBlock(nn.Module):
    """torchvision's BasicBlock, written out (torchvision is not a dependency)."""

    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class _ResnetBlock(nn.Module):
    """The CycleGAN generator's ResnetBlock (reflection padding, InstanceNorm)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


# BasicBlock and ResnetBlock are the names recgen.convert recognises.
_BasicBlock.__name__, _ResnetBlock.__name__ = "BasicBlock", "ResnetBlock"


def _torch_dense(op: str, shape: dict) -> nn.Sequential:
    """The dense case as torch.nn layers: nn.Linear + activation module per layer."""
    if op == "mlp":  # the seed's stack: relu, tanh, no activation
        return nn.Sequential(nn.Linear(shape["I"], shape["H"]), nn.ReLU(), nn.Linear(shape["H"], shape["H"]),
                             nn.Tanh(), nn.Linear(shape["H"], shape["O"]))
    if op == "linear_relu":
        return nn.Sequential(nn.Linear(shape["I"], shape["O"]), nn.ReLU())
    raise ValueError(f"unknown dense op {op!r}; expected 'mlp' or 'linear_relu'")


def build(case: Case, device: str):
    """(torch module, input) for a case, on `device` in the case's dtype."""
    dtype = DTYPES[case.dtype]
    torch.manual_seed(0)
    s = case.shape
    if case.family == "recurrent":
        module = _torch_recurrent(case.op, s["H"])
        x = torch.randn(s["T"], s["B"], s["I"])
    elif case.family == "residual":
        module = (_BasicBlock if case.op == "basicblock_bn" else _ResnetBlock)(s["C"])
        module.train(s["train"])
        x = torch.randn(s["N"], s["C"], s["H"], s["W"])
    elif case.family == "dense":
        module = _torch_dense(case.op, s)
        x = torch.randn(s["B"], s["I"])
    else:
        raise ValueError(f"unknown family {case.family!r}; expected one of {', '.join(map(repr, FAMILIES))}")
    module = module.to(device, dtype)
    x = x.to(device, dtype)
    if case.family == "residual":
        x = x.contiguous(memory_format=torch.channels_last)
    return module, x


def provider_module(provider: str, case: Case, torch_module: nn.Module, pass_: str | None = None):
    """The callable a provider times (for `pass_`, where that matters), or a string saying why it
    cannot run the case."""
    if provider not in FAMILY_PROVIDERS.get(case.family, PROVIDERS):
        if provider in PROVIDERS:
            return f"{provider} is not a provider of the {case.family} family"
        raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")
    if provider == "cudnn":
        return torch_module
    if provider in ("recgen", "reference"):
        # linear=True: a Linear without an activation (the stack's last) is recgen's too
        return recgen.convert(copy.deepcopy(torch_module), linear=case.family == "dense")
    if provider == "compile":
        return torch.compile(copy.deepcopy(torch_module))
    if provider == "addmm_activation":
        if pass_ == "fwdbwd":
            missing = addmm_activation_backward()
            if missing:
                return missing
        return _AddmmActivationStack(torch_module)
    if provider == "flashrnn":
        if case.family != "recurrent":
            return "FlashRNN has no residual blocks"
        if not torch_module.weight_ih_l0.is_cuda:
            return "FlashRNN's kernels (CUDA, compiled at first use) need a GPU"
        try:
            from flashrnn.flashrnn import flashrnn
        except ImportError as error:
            return f"flashrnn is not importable on this machine ({error})"
        return _FlashRNNLayer(flashrnn, case.op, torch_module)
    raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")


@functools.cache
def addmm_activation_backward() -> str:
    """'' when torch._addmm_activation has a backward in this torch, else why not (torch 2.13:
    "derivative for aten::_addmm_activation is not implemented"): asked of a 1x1 product."""
    w = torch.ones(1, 1, requires_grad=True)
    try:
        torch._addmm_activation(torch.zeros(1), torch.ones(1, 1), w.t()).sum().backward()
    except RuntimeError as error:
        return (f"forward only: torch._addmm_activation has no autograd in torch {torch.__version__} "
                f"({str(error).splitlines()[0][:120]})")
    return ""


class _AddmmActivationStack:
    """The dense stack on torch's fused GEMM calls: a Linear followed by nn.ReLU as
    torch._addmm_activation(bias, x, W^T) (cuBLASLt's bias + relu epilogue on CUDA where its
    conditions hold, else addmm then relu; addmm then relu on the CPU), any other Linear as
    torch.addmm (bias in the GEMM), then its activation (cuBLASLt has relu and gelu epilogues
    only). `note` names the layers that are not one fused call."""

    def __init__(self, sequential: nn.Sequential):
        layers = list(sequential)
        self.layers, unfused = [], []
        for k, layer in enumerate(layers):
            if not isinstance(layer, nn.Linear):
                continue
            after = layers[k + 1] if k + 1 < len(layers) and not isinstance(layers[k + 1], nn.Linear) else None
            if after is not None and type(after) not in (nn.ReLU, nn.Tanh):
                raise ValueError(f"addmm_activation: no form for {type(after).__name__} after a Linear")
            self.layers.append((layer.weight, layer.bias, type(after).__name__ if after is not None else None))
            if isinstance(after, nn.Tanh):
                unfused.append(f"layer {len(self.layers)} (tanh) is addmm + tanh")
        self.note = "; ".join(unfused) + (" (cuBLASLt has relu/gelu epilogues only)" if unfused else "")

    def __call__(self, x):
        for weight, bias, act in self.layers:
            if act == "ReLU":
                x = torch._addmm_activation(bias, x, weight.t())
            else:
                x = torch.addmm(bias, x, weight.t())
                x = torch.tanh(x) if act == "Tanh" else x
        return x


FLASHRNN_FUNCTIONS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "elman"}
# FlashRNN's CUDA backends: `recgen bench` times each and reports the fastest (the issue's
# "FlashRNN's fastest backend"); the first is the default of the adapter and of bench/'s pytest
# files. (For the GRU FlashRNN runs "cuda" when asked for "cuda_fused": its fused kernel needs
# recurrent gate counts divisible by 8.)
FLASHRNN_BACKENDS = ("cuda_fused", "cuda")
FLASHRNN_BACKEND = FLASHRNN_BACKENDS[0]


class _FlashRNNLayer:
    """FlashRNN's entry point behind the torch module's call contract: input (T, B, I), output
    (y (T, B, H), h_n (1, B, H)) or, for the LSTM, (y, (h_n, c_n)); the same function as the
    torch module, its weights mapped into FlashRNN's layout (tests/test_flashrnn_adapter.py
    checks it against torch.nn with FlashRNN's pure-PyTorch backend). The input projection
    x W_ih^T is part of the timed step, as it is in recgen and cuDNN.

    Layouts (FlashRNN 1.0): Wx (B, T, gates, heads, H), R (gates, heads, H_out, H_in) with
    R[g, 0] = W_hh's block g, b (gates, heads, H). The LSTM (i, f, g, o) and Elman gates are
    torch's, with b = b_ih + b_hh. The GRU's recurrent gates are (n, r, z): W_hn first, whose
    product is gated by r as torch's; its four biases are (b_hn, b_ir + b_hr, b_iz + b_hz, b_in)."""

    def __init__(self, flashrnn, op, torch_module, backend: str = FLASHRNN_BACKEND):
        self.flashrnn, self.function, self.backend, self.op = flashrnn, FLASHRNN_FUNCTIONS[op], backend, op
        hidden = torch_module.hidden_size
        w_ih, w_hh = torch_module.weight_ih_l0.detach(), torch_module.weight_hh_l0.detach()
        gates = w_hh.shape[0] // hidden
        zeros = w_hh.new_zeros(gates * hidden)
        b_ih = torch_module.bias_ih_l0.detach() if torch_module.bias else zeros
        b_hh = torch_module.bias_hh_l0.detach() if torch_module.bias else zeros
        w_hh = w_hh.view(gates, hidden, hidden)
        if op == "gru":
            w_hr, w_hz, w_hn = w_hh.unbind(0)
            b_ir, b_iz, b_in = b_ih.view(3, hidden).unbind(0)
            b_hr, b_hz, b_hn = b_hh.view(3, hidden).unbind(0)
            recurrent = torch.stack((w_hn, w_hr, w_hz))
            bias = torch.stack((b_hn, b_ir + b_hr, b_iz + b_hz, b_in))
        else:
            recurrent, bias = w_hh, (b_ih + b_hh).view(gates, hidden)
        self.w_ih = w_ih.requires_grad_()
        self.R = recurrent.unsqueeze(1).contiguous().requires_grad_()       # (G, heads=1, H, H)
        self.b = bias.unsqueeze(1).contiguous().requires_grad_()            # (G or 4, heads=1, H)
        self.gates, self.hidden = gates, hidden

    def __call__(self, x):
        T, B, _ = x.shape
        wx = torch.nn.functional.linear(x.transpose(0, 1), self.w_ih)       # (B, T, G*H)
        wx = wx.view(B, T, self.gates, 1, self.hidden)
        dtype = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}[x.dtype]
        states, last = self.flashrnn(wx, self.R, self.b, function=self.function, backend=self.backend, dtype=dtype)
        # states (S, B, T, heads, H) and last (S, B, 1, heads, H), S = 2 for the LSTM (h, c)
        y = states[0, :, :, 0].transpose(0, 1)
        h_n = last[0, :, 0, 0].unsqueeze(0)
        return (y, (h_n, last[1, :, 0, 0].unsqueeze(0))) if self.op == "lstm" else (y, h_n)


# ---- timing -------------------------------------------------------------------------------

def ran(module) -> str | None:
    """What a converted module's last forward ran (recgen.backend.implementation_of): its own record,
    else those of its recgen submodules (a dense stack's Linear layers), joined if they differ."""
    own = recgen.backend.implementation_of(module)
    if own is not None or not isinstance(module, nn.Module):
        return own
    found = [recgen.backend.implementation_of(m) for m in module.modules()]
    found = list(dict.fromkeys(name for name in found if name is not None))
    return "+".join(found) if found else None


def make_step(module, x, pass_: str, recurrent: bool):
    """The timed callable of one pass: forward under no_grad, or forward + backward of a sum."""
    def fwd():
        with torch.no_grad():
            module(x)

    def fwdbwd():
        out = module(x)
        (out[0] if recurrent else out).float().sum().backward()

    return fwd if pass_ == "fwd" else fwdbwd


def time_step(step, rounds: int, warmup: int, cuda: bool):
    """(median ms, peak MiB or None) of `step` over `rounds` synchronised runs after `warmup`."""
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return statistics.median(times), peak


def measure(case: Case, provider: str, pass_: str, device: str, rounds: int, warmup: int) -> dict:
    """One result row: the dict of a recgen.tools.bench_report.Row (checked when the report is written)."""
    cuda = device == "cuda"
    row = {"family": case.family, "op": case.op, "pass": pass_, "dtype": case.dtype,
           "shape": dict(case.shape), "provider": provider, "ms": None, "peak_mb": None, "note": ""}
    if provider == "compile" and not cuda:
        row["note"] = "not run on the CPU: compilation takes minutes on a 2-core machine"
        return row
    torch_module, x = build(case, device)
    module = provider_module(provider, case, torch_module, pass_)
    if isinstance(module, str):
        row["note"] = module
        return row
    if pass_ == "fwdbwd":
        x.requires_grad_()
    backend = "reference" if provider == "reference" else "auto"
    step = make_step(module, x, pass_, case.family == "recurrent")
    notes = []
    if provider == "cudnn" and not cuda:
        row["provider"] = "torch"  # what ran: torch's CPU kernels, not cuDNN
    with recgen.backend.backend(backend):
        if provider in PEERS:
            row["ms"], row["peak_mb"], peer_note = time_peer(provider, module, step, rounds, warmup, cuda)
            if row["ms"] is None:
                row["note"] = peer_note
                return row
            notes += [peer_note] if peer_note else []
        else:
            row["ms"], row["peak_mb"] = time_step(step, rounds, warmup, cuda)
    if provider in ("recgen", "reference"):
        notes.append(f"ran: {ran(module)}")
    if provider == "cudnn" and cuda and case.family == "dense":
        notes.append("torch.nn eager: nn.Linear runs cuBLAS, not cuDNN")
    if provider == "addmm_activation" and module.note:
        notes.append(module.note)
    if not cuda:
        notes.append("CPU timing: not kernel speed")
    elif provider == "recgen" and case.family == "recurrent" and persistent_enabled():
        notes.append("RECGEN_PERSISTENT=1: persistent multi-program mode where weights do not fit one program")
    if cuda and case.dtype == "fp32":
        notes.append(tf32_note(case.family))
    row["note"] = "; ".join(notes)
    return row


def time_peer(provider: str, module, step, rounds: int, warmup: int, cuda: bool):
    """(ms, peak MiB, note) of a peer library's step: FlashRNN at each of its backends, the
    fastest kept and the others named in the note. A peer that fails on a case is reported as
    unsupported, with its error (ms None); recgen's own failures are never caught."""
    variants = FLASHRNN_BACKENDS if provider == "flashrnn" else (None,)
    timed, failed = [], []
    for variant in variants:
        if variant is not None:
            module.backend = variant
        try:
            timed.append((*time_step(step, rounds, warmup, cuda), variant))
        except Exception as error:  # noqa: BLE001 - any peer failure is a result to report
            name = provider if variant is None else f"{provider} {variant}"
            failed.append(f"{name} failed: {type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200] if str(error) else ''}")
    if not timed:
        return None, None, "; ".join(failed)
    ms, peak, best = min(timed, key=lambda t: t[0])
    others = [f"{v} {m:.3f} ms" for m, _, v in timed if v != best] + failed
    note = "" if best is None else f"fastest FlashRNN backend: {best}" + (f" ({'; '.join(others)})" if others else "")
    return ms, peak, note


def tf32_note(family: str) -> str:
    """Which float32 products may use TF32 under torch's flags as the case ran: cuDNN's (torch.nn's
    RNNs or convolutions, and recgen's kernels standing in for them) and torch's matmuls (recgen's
    input projection). Timings of float32 rows depend on them."""
    from recgen.ops.common.launch import torch_allows_tf32

    state = {True: "on", False: "off"}
    if family == "dense":  # cuBLAS's products and recgen's dense kernels both follow the matmul flag
        return f"TF32 {state[torch_allows_tf32('matmul')]} for matmuls and recgen's dense kernels (torch's flags)"
    op = "rnn" if family == "recurrent" else "conv"
    return (f"TF32 {state[torch_allows_tf32(op)]} for cuDNN {op} and recgen's kernels, "
            f"{state[torch_allows_tf32('matmul')]} for matmuls (torch's flags)")


def environment(cuda: bool) -> dict:
    import triton
    return {"device": torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)",
            "torch": torch.__version__, "triton": triton.__version__,
            "date": datetime.date.today().isoformat()}


def run(families=("recurrent", "residual"), quick=False, providers=PROVIDERS, rounds=None,
        warmup=None, progress=True) -> dict:
    """Run the grid of each family on this machine's device, each with the `providers` it has
    (FAMILY_PROVIDERS); returns the results dict."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    rounds = rounds or (20 if cuda else 2)
    warmup = warmup or (3 if cuda else 1)
    jobs = [(case, p, pass_) for family in families for case in grid(family, quick, cuda)
            for pass_ in PASSES for p in providers if p in FAMILY_PROVIDERS[family]]
    if progress:
        from tqdm import tqdm
        jobs = tqdm(jobs, desc="recgen bench", unit="run")
    results = [measure(case, p, pass_, device, rounds, warmup) for case, p, pass_ in jobs]
    return {**environment(cuda), "results": results}
