"""Run without TRITON_INTERPRET (tests/test_library.py starts it in a subprocess): the ops are
then registered with torch.library.triton_op, as on a GPU. Each op is traced by AOTAutograd
(fake tensors, functionalisation: what torch.compile does before Inductor); the graph must hold
the op's kernels as triton_kernel_wrapper_functional nodes. The graph is then called and fails
at the first kernel (there is no GPU here), which is expected.
Prints one line per op: '<name> <number of kernel nodes>'."""

import torch
from torch._functorch.aot_autograd import aot_function

import recgen.ops
from recgen.ops.common import library

recgen.ops.register_all()

assert library.kind() == "triton_op", library.kind()


def r(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


D, T, B, H, P = 2, 3, 2, 5, 4
lengths = torch.tensor([3, 2])
CASES = {
    "lstm_fwd": (r(T, B, D * 4 * H), r(D, B, P), r(D, B, H), r(D, 4 * H, P), r(D, P, H), lengths, False, True),
    "lstm_bwd": (r(D, T, B, P), r(D, B, P), r(D, B, H), r(D, T, B, 4 * H), r(D, T, B, H), r(D, B, H),
                 r(D, 4 * H, P), r(D, P, H), None, True),
    "gru_fwd": (r(T, B, D * 3 * H), r(D, B, H), r(D, 3 * H, H), r(D, 3 * H), None, False, False),
    "gru_bwd": (r(D, T, B, H), r(D, B, H), r(D, T, B, 4 * H), r(D, T, B, H), r(D, 3 * H, H), lengths, False),
    "rnn_fwd": (r(T, B, D * H), r(D, B, H), r(D, H, H), None, False, "relu", True),
    "rnn_bwd": (r(D, T, B, H), r(D, B, H), r(D, T, B, H), r(D, H, H), lengths, True, "tanh"),
}



class Traced(Exception):
    pass


def capture(graph, inputs):
    raise Traced(graph.code)


for name, args in CASES.items():
    op = getattr(torch.ops.recgen, name)
    try:
        aot_function(lambda *a, op=op: op(*a), fw_compiler=capture)(*args)
        raise AssertionError(f"{name}: the graph was never compiled")
    except Traced as traced:
        print(name, str(traced).count("triton_kernel_wrapper_functional("))
