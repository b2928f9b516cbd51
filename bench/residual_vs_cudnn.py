"""Forward+backward time of residual blocks: recgen (converted block) vs torch eager (cuDNN).

    python bench/residual_vs_cudnn.py            # the residual issue's two cases on the GPU, bf16
    python bench/residual_vs_cudnn.py --quick    # tiny CPU smoke run (interpreter), no meaning as speed

Cases: a BatchNorm BasicBlock (N=32, C=128, 64x64) and a CycleGAN generator ResnetBlock
(N=8, C=256, 64x64), channels-last, in training mode. Inputs and modules are built outside the
timed region; warm-up first; synchronised; medians; peak memory; JSON lines to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from timing import environment, median_ms, peak_mb  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class BasicBlock(nn.Module):
    """torchvision's BasicBlock, written out so torchvision is not needed."""

    def __init__(self, planes):
        super().__init__()
        self.conv1 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class ResnetBlock(nn.Module):
    """The CycleGAN generator's ResnetBlock (reflection padding, InstanceNorm, no dropout)."""

    def __init__(self, dim):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), nn.InstanceNorm2d(dim))

    def forward(self, x):
        return x + self.conv_block(x)


CASES = {"basicblock_bn": (BasicBlock, 32, 128, 64), "resnetblock_in": (ResnetBlock, 8, 256, 64)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.quick
    if args.quick:
        os.environ["TRITON_INTERPRET"] = "1"
        args.rounds, args.warmup, args.dtype = 2, 1, "fp32"
    import recgen

    device, dtype = ("cuda" if cuda else "cpu"), DTYPES[args.dtype]
    env = environment(cuda)
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | {env['date']}")
    rows = []
    for name, (cls, N, C, S) in CASES.items():
        if args.quick:
            N, C, S = 2, 4, 6
        torch.manual_seed(0)
        ref = cls(C).to(device, dtype).train()
        rec = recgen.convert(copy.deepcopy(ref))
        x = torch.randn(N, C, S, S, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        results = {}
        for provider, module in (("recgen", rec), ("cudnn" if cuda else "torch", ref)):
            def step(module=module):
                module(x).float().sum().backward()
            results[provider] = (median_ms(step, args.rounds, args.warmup, cuda), peak_mb(step, cuda))
        base = results["recgen"][0]
        print(f"{name} fwd+bwd N={N} C={C} {S}x{S} {args.dtype} train, median of {args.rounds}")
        for provider, (ms, mb) in results.items():
            mem = f"{mb:8.1f} MiB" if mb is not None else ""
            print(f"  {provider:8s} {ms:10.3f} ms  time ratio to recgen {ms / base:6.2f}x  {mem}")
            rows.append({**env, "family": "residual", "op": name, "pass": "fwdbwd", "dtype": args.dtype,
                         "shape": {"N": N, "C": C, "H": S, "W": S, "train": True}, "provider": provider,
                         "ms": ms, "peak_mb": mb})
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
