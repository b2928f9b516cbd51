"""The identity of a compiled kernel: what Triton compiles a @triton.jit function for when it is
launched with given keyword arguments. The tile rule caches its choices per identity
(recgen/ops/common/tiling.py), and a tile capture records every launch by it
(recgen/ops/common/launch.py); the ahead-of-time compile rebuilds a launch from one
(recgen/tools/aot_compile.py: identity_resources)."""

from __future__ import annotations

# Triton's type names of torch's dtypes.
TORCH_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64", "int32": "i32",
               "int64": "i64", "int8": "i8", "uint8": "u8", "bool": "i1"}
OPTION_NAMES = ("num_warps", "num_stages", "launch_cooperative_grid")


_PARAMS: dict = {}   # fn -> ((name, is_constexpr), ...): read once per kernel
_TYPE_OF_DTYPE: dict = {}  # torch dtype -> Triton type name


def _params(fn) -> tuple:
    if fn not in _PARAMS:
        _PARAMS[fn] = tuple((p.name, p.is_constexpr) for p in fn.params)
    return _PARAMS[fn]


def _type_name(dtype) -> str:
    if dtype not in _TYPE_OF_DTYPE:
        _TYPE_OF_DTYPE[dtype] = TORCH_TYPES[str(dtype).removeprefix("torch.")]
    return _TYPE_OF_DTYPE[dtype]


def identity(fn, args: dict) -> tuple:
    """What Triton compiles `fn` for when launched with keyword `args`: (name, ((parameter,
    spec), ...), options), where a constexpr's spec is its value and a runtime argument's is its
    type with the runtime's specialisations: a tensor (real or fake) by dtype and whether its
    first element is 16-byte aligned (allocations are; a view's offset may not be), an int by
    width and whether it is 1 (then a constant) or a multiple of 16. Parameters missing from
    `args` are left out (a launcher's arguments before its tiles are chosen). Computed on every
    launch that chooses tiles: kept to a few operations per argument."""
    specs = []
    for name, is_constexpr in _params(fn):
        if name not in args:
            continue
        value = args[name]
        if is_constexpr:
            specs.append((name, value))
        elif hasattr(value, "element_size"):
            aligned = value.storage_offset() * value.element_size() % 16 == 0
            specs.append((name, "*" + _type_name(value.dtype) + ("D" if aligned else "")))
        elif value is True or value is False:
            specs.append((name, "i1"))
        elif isinstance(value, int):
            kind = "i64" if not -2 ** 31 <= value < 2 ** 31 else "i32"
            specs.append((name, 1 if value == 1 else kind + ("D" if value % 16 == 0 else "")))
        elif isinstance(value, float):
            specs.append((name, "fp32"))
        elif value is None:
            specs.append((name, None))
        else:
            raise TypeError(f"{fn.__name__}: no Triton type for argument {name}={value!r}")
    options = tuple((k, args[k]) for k in OPTION_NAMES if k in args)
    return fn.__name__, tuple(specs), options
