"""`recgen train` and `recgen sample`: train the image models of recgen.app.models, draw from checkpoints.

    from recgen.app.train import train, compare_torch, sample_grid
    summary = train("res-gan", data="digits", epochs=5, out="runs/res-gan")
    numbers = compare_torch("rnn-gan", steps=20)           # recgen vs torch.nn: speed and loss agreement
    sample_grid("runs/res-gan/checkpoint.pt", n=64, out="grid.png")

A run folder holds, after every epoch E: samples_epoch{E:03d}.png (64 samples, the same noise each
epoch), loss_curve.png (every loss against the step) and checkpoint.pt (written to a temporary file
and renamed, so an interrupt loses at most the epoch under way; `resume=True` continues it).
For 8x8 one-channel data the run ends with evaluation.json (recgen.app.sample_scores) on 1000 samples:
the digits classifier's mean confidence and class histogram, and the Frechet distance of its features
to the real test digits beside the real-vs-real floor (a repeated pattern passes the first, not this).

A model with a `reconstruct(images)` method (an autoencoder: cyclic-mlp) draws no samples. Its run
writes reconstructions_epoch{E:03d}.png instead, the first 64 held-out images each beside its
reconstruction (recgen.app.data.load_heldout: for digits the test split), logs the reconstruction
error (mean squared error per pixel) on all of them after every epoch, and ends with that error in
evaluation.json; `recgen sample` writes such pairs for a seeded draw of held-out images.

The command-line handlers of `recgen train` / `recgen sample` are in recgen.app.cli. tqdm,
matplotlib, pillow and scikit-learn (the `train` extra) are imported only when used.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import pickle
import time
from contextlib import contextmanager
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
FORMAT = "recgen-train/1"
GRID_SAMPLES = 64
EVAL_SAMPLES = 1000
DEFAULT_BATCH_SIZE = 64
DEFAULT_COMPARE_STEPS = 20
# Exceptions that mean bad input (unknown model, empty folder, missing checkpoint, ...): the CLI
# handlers print their message and exit with 2. Anything else keeps its traceback.
USAGE_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last checkpoint on disk is intact."""


@contextmanager
def _model_errors(where: str):
    """Inside a training loop a ValueError (or a missing file) is the model's failure, not bad input:
    re-raised as RuntimeError, so that the CLI shows its traceback rather than an input-error line."""
    try:
        yield
    except USAGE_ERRORS as error:
        raise RuntimeError(f"{where}: {type(error).__name__}: {error}") from error


def _load_models():
    """(MODELS, build_model) of recgen.app.models. The one place this module reaches the models,
    so tests can substitute a registry."""
    from recgen.app.models import MODELS, build_model
    return MODELS, build_model


def build(name: str, image_shape, options: dict | None = None):
    """`recgen.app.models.build_model(name, image_shape, **options)`, after checking the name and,
    where the constructor's signature says, the option names."""
    models, build_model = _load_models()
    if name not in models:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(models))}")
    options = dict(options or {})
    factory = models[name] if isinstance(models, dict) else None
    if options and callable(factory):
        params = inspect.signature(factory).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = [p.name for p in params if p.name != "image_shape"
                        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise ValueError(f"model {name!r} has no option(s) {', '.join(unknown)}; "
                                 f"its options: {', '.join(accepted) or 'none'}")
    return build_model(name, image_shape=tuple(image_shape), **options)


def resolve_device(device: str | None = None) -> torch.device:
    """None -> 'cuda' when available, else 'cpu'; 'cuda' without a CUDA device is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    return resolved


def _check_positive(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


# ----------------------------------------------------------------------------------- images out
def _atomic_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def save_image_grid(images: torch.Tensor, path, nrow: int | None = None) -> Path:
    """Write images (N, C, H, W) in [0, 1] (C = 1, 3 or 4) as one grid image, each tile enlarged
    (nearest neighbour) to at least 48 pixels on its longer side; the format follows the suffix.

        save_image_grid(model.sample(64), "grid.png")     # 8 x 8 tiles
    """
    from PIL import Image

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell an image format from {str(path)!r}: use a suffix such as .png")
    if images.dim() != 4 or images.shape[1] not in (1, 3, 4) or images.shape[0] == 0:
        raise ValueError(f"images must be (N, C, H, W) with N >= 1 and C in 1, 3, 4; got {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pad = 1
    grid = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 0.5)
    for i, image in enumerate(images.detach().float().cpu().clamp(0, 1)):
        top, left = pad + (i // nrow) * (h + pad), pad + (i % nrow) * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    scale = max(1, math.ceil(48 / max(h, w)))
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, mode={1: "L", 3: "RGB", 4: "RGBA"}[c])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(_atomic_path(path), format=fmt)
    os.replace(_atomic_path(path), path)
    return path


def plot_losses(history: list[dict], path, title: str = "") -> Path:
    """Every loss of `history` (the entries train() records) against the step, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    names = sorted({name for entry in history for name in entry["losses"]})
    fig = Figure(figsize=(8, 4.5))
    FigureCanvasAgg(fig)  # a figure of its own, outside pyplot: the caller's matplotlib set-up is left alone
    ax = fig.add_subplot()
    for name in names:
        points = [(e["step"], e["losses"][name]) for e in history if name in e["losses"]]
        steps, values = zip(*points)
        line, = ax.plot(steps, values, linewidth=0.8, alpha=0.35)
        window = max(1, len(values) // 50)
        if window > 1:  # a moving average, so that the trend shows through GAN noise
            smooth = torch.tensor(values).unfold(0, window, 1).mean(1).tolist()
            ax.plot(steps[window - 1:], smooth, color=line.get_color(), linewidth=1.5, label=name)
        else:
            line.set_label(name)
            line.set_alpha(1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if names:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(_atomic_path(path), format="png", dpi=100)
    os.replace(_atomic_path(path), path)
    return path


# ---------------------------------------------------------------------------------- checkpoints
def save_checkpoint(state: dict, path) -> Path:
    """torch.save to path + '.tmp', flushed to disk, then renamed over `path`: a reader sees the
    previous checkpoint or the new one, never half of one."""
    path = Path(path)
    tmp = _atomic_path(path)
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint(path) -> dict:
    """The dict a run saved (see train()); FileNotFoundError / ValueError when absent or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint of `recgen train` (format {FORMAT!r})")
    return state


def load_model(checkpoint, device=None):
    """(model on `device` in eval mode, checkpoint dict) from a checkpoint file."""
    state = read_checkpoint(checkpoint)
    model = build(state["model"], state["image_shape"], state["options"]).to(resolve_device(device))
    model.load_state_dict(state["model_state"])
    return model.eval(), state


def _rng_state(shuffle: torch.Generator, device: torch.device) -> dict:
    return {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


def _set_rng_state(rng: dict, shuffle: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    shuffle.set_state(rng["shuffle"])
    if device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


# ------------------------------------------------------------------------------------ training
def draw_samples(model, n: int, seed: int, chunk: int = 500) -> torch.Tensor:
    """n samples (n, C, H, W) on the CPU, from a CPU generator seeded with `seed` (so the same on any device)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        parts = [model.sample(min(chunk, n - start), generator=generator) for start in range(0, n, chunk)]
    images = torch.cat(parts).float().cpu()
    if tuple(images.shape) != (n, *model.image_shape):
        raise RuntimeError(f"{model.name}.sample({n}) returned shape {tuple(images.shape)}, "
                           f"expected {(n, *model.image_shape)}")
    return images


def reconstructs(model) -> bool:
    """Whether `model` is a reconstruction model (it has `reconstruct(images)`; it draws no samples)."""
    return callable(getattr(model, "reconstruct", None))


def reconstruct_all(model, images: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """model.reconstruct of images (N, C, H, W) on the CPU, run on the model's device in chunks."""
    device = next(model.parameters()).device
    parts = [model.reconstruct(images[start:start + chunk].to(device)).float().cpu()
             for start in range(0, images.shape[0], chunk)]
    out = torch.cat(parts)
    if out.shape != images.shape:
        raise RuntimeError(f"{model.name}.reconstruct returned shape {tuple(out.shape)}, expected {tuple(images.shape)}")
    return out


def reconstruction_error(model, images: torch.Tensor) -> float:
    """The mean squared error per pixel of the model's reconstructions of images (N, C, H, W),
    on the raw output (what the model is trained on), computed in float64."""
    return (reconstruct_all(model, images).double() - images.double()).pow(2).mean().item()


def save_reconstruction_grid(model, images: torch.Tensor, path) -> Path:
    """Write images (N, C, H, W) each followed by its reconstruction (clipped to [0, 1]), two tiles
    per image, ceil(sqrt(N)) images a row: originals in the odd columns, reconstructions beside them."""
    pairs = torch.stack([images.float().cpu(), reconstruct_all(model, images)], dim=1).flatten(0, 1)
    return save_image_grid(pairs, path, nrow=2 * math.ceil(math.sqrt(images.shape[0])))


def evaluate_reconstruction(model, images: torch.Tensor, images_from: str) -> dict:
    """{'reconstruction_mse', 'images', 'images_from'}: the reconstruction error of a model on images."""
    return {"reconstruction_mse": reconstruction_error(model, images), "images": images.shape[0],
            "images_from": images_from}


def format_reconstruction(evaluation: dict) -> str:
    """The line `recgen train` prints for evaluate_reconstruction's dict."""
    return (f"reconstruction error (mean squared error per pixel) {evaluation['reconstruction_mse']:.4g} on "
            f"{evaluation['images_from']}")


def evaluate_digits(model, n: int = EVAL_SAMPLES, seed: int = 0) -> dict:
    """recgen.app.sample_scores.digits_evaluation of n samples (seed `seed`) of a model of 8x8 digits:
    mean confidence, class histogram, Frechet distance to the real test digits and its real-vs-real
    floor, the classifier's reading of the real test digits."""
    from recgen.app.sample_scores import digits_evaluation

    return digits_evaluation(draw_samples(model, n, seed))


def _finite_losses(losses, step: int, epoch: int, out: Path) -> dict[str, float]:
    if not isinstance(losses, dict) or not losses:
        raise TypeError(f"train_step must return a non-empty dict of losses, got {losses!r}")
    values = {str(k): float(v) for k, v in losses.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(f"training diverged at step {step} (epoch {epoch}): {bad}; the checkpoint of "
                               f"the last finished epoch in {str(out)!r} is intact")
    return values


def _run_epoch(model, optimizers, images, batch_size, shuffle, device, epoch, epochs, step, history,
               out, progress):
    from tqdm import tqdm

    model.train()
    order = torch.randperm(images.shape[0], generator=shuffle)
    steps = max(1, images.shape[0] // batch_size)  # the remainder is dropped (one short batch if N < B)
    totals: dict[str, float] = {}
    bar = tqdm(range(steps), desc=f"epoch {epoch}/{epochs}", unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        for i in bar:
            batch = images[order[i * batch_size:(i + 1) * batch_size]].to(device)
            step += 1
            losses = _finite_losses(model.train_step(batch, optimizers), step, epoch, out)
            history.append({"step": step, "epoch": epoch, "losses": losses})
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (i + 1):.4g}" for k, v in totals.items()}, refresh=False)
    finally:
        bar.close()
    return step, {k: v / steps for k, v in totals.items()}


def train(model: str, data: str | None = None, epochs: int = 10, batch_size: int | None = None,
          out="recgen-run", device: str | None = None, seed: int = 0, resume: bool = False,
          options: dict | None = None, progress: bool = True, eval_samples: int = EVAL_SAMPLES,
          log=print) -> dict:
    """Train `model` ('row-lstm', 'rnn-gan', 'res-gan', 'cyclic-mlp') on `data` ('digits' or a folder
    of images) until it has `epochs` epochs, writing samples (a reconstruction model: held-out images
    beside their reconstructions), the loss curve and a checkpoint into `out` after each.
    `resume=True` continues out/checkpoint.pt (same model; `epochs` is the total to reach;
    data, batch size and options default to the checkpoint's, the seed and RNG states are its own).
    Returns {'out', 'epoch', 'step', 'history', 'epoch_losses', 'evaluation' (a reconstruction
    model's error on the held-out images; for a generator the digits scores, None unless the images
    are 1x8x8)}.

        summary = train("row-lstm", epochs=3, out="runs/lstm", options={"hidden": 64})
    """
    from recgen.app.data import DIGITS_SHAPE, load_dataset, load_heldout
    from recgen.app.sample_scores import format_evaluation

    _check_positive(epochs=epochs)
    if eval_samples < 0:
        raise ValueError(f"eval_samples must be >= 0, got {eval_samples}")
    out = Path(out)
    path = out / CHECKPOINT
    state = None
    if resume:
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {str(path)!r}")
        state = read_checkpoint(path)
        if state["model"] != model:
            raise ValueError(f"cannot resume: {str(path)!r} holds model {state['model']!r}, not {model!r}")
        if options and options != state["options"]:
            raise ValueError(f"cannot resume with options {options}: {str(path)!r} was trained with "
                             f"{state['options']}")
        options, seed = state["options"], state["seed"]
        data = state["data"] if data is None else data
        batch_size = state["batch_size"] if batch_size is None else batch_size
    elif path.exists():
        raise FileExistsError(f"{str(path)!r} already exists: pass --resume to continue that run, "
                              "or choose another --out")
    data = "digits" if data is None else str(data)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
    _check_positive(batch_size=batch_size)
    options = dict(options or {})
    device = resolve_device(device)
    images = load_dataset(data)
    image_shape = tuple(images.shape[1:])
    if state is not None and image_shape != tuple(state["image_shape"]):
        raise ValueError(f"cannot resume: data {data!r} has images of shape {image_shape}, the checkpoint's "
                         f"model was built for {tuple(state['image_shape'])}")

    torch.manual_seed(seed)
    net = build(model, image_shape, options).to(device)
    optimizers = net.make_optimizers()
    heldout = load_heldout(data) if reconstructs(net) else None  # (images, what they are)
    grid_name = "reconstructions_epoch{:03d}.png" if heldout else "samples_epoch{:03d}.png"
    shuffle = torch.Generator().manual_seed(seed)
    history, start, step, epoch_losses = [], 0, 0, []
    if state is not None:
        net.load_state_dict(state["model_state"])
        if set(optimizers) != set(state["optimizer_states"]):
            raise ValueError(f"cannot resume: the checkpoint has optimizers {sorted(state['optimizer_states'])}, "
                             f"the model makes {sorted(optimizers)}")
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizer_states"][name])
        history, start, step = state["history"], state["epoch"], state["step"]
        epoch_losses = state["epoch_losses"]
        _set_rng_state(state["rng"], shuffle, device)
        log(f"resuming {model} from epoch {start} (step {step}) in {out}")
    out.mkdir(parents=True, exist_ok=True)
    if start >= epochs:
        log(f"{str(path)!r} already has {start} epoch(s), --epochs {epochs}: nothing to train")
    done = start
    try:
        for epoch in range(start + 1, epochs + 1):
            with _model_errors(f"{model}, epoch {epoch}"):
                step, means = _run_epoch(net, optimizers, images, batch_size, shuffle, device, epoch, epochs,
                                         step, history, out, progress)
                if heldout:  # the error on every held-out image; the first 64 shown beside their reconstructions
                    scores = {"reconstruction_mse": reconstruction_error(net, heldout[0])}
                    save_reconstruction_grid(net, heldout[0][:GRID_SAMPLES], out / grid_name.format(epoch))
                else:
                    scores, grid = {}, draw_samples(net, GRID_SAMPLES, seed)
            epoch_losses.append({"epoch": epoch, "losses": means, **scores})
            if not heldout:
                save_image_grid(grid, out / grid_name.format(epoch))
            plot_losses(history, out / "loss_curve.png", title=f"{model} on {data}")
            # last, after everything that may draw random numbers: resuming from here replays the same run
            save_checkpoint({
                "format": FORMAT, "model": model, "options": options, "image_shape": image_shape, "data": data,
                "batch_size": batch_size, "seed": seed, "epoch": epoch, "step": step, "history": history,
                "epoch_losses": epoch_losses, "model_state": net.state_dict(),
                "optimizer_states": {k: opt.state_dict() for k, opt in optimizers.items()},
                "rng": _rng_state(shuffle, device),
            }, path)
            done = epoch
            log(f"epoch {epoch}/{epochs}: " + ", ".join(f"{k} {v:.4g}" for k, v in means.items())
                + "".join(f"; {'held-out ' if data == 'digits' else ''}reconstruction mse {v:.4g}"
                          for v in scores.values())
                + f"; wrote {out / grid_name.format(epoch)} and {path}")
    except KeyboardInterrupt:
        log(f"interrupted: {str(path)!r} holds epoch {done}; continue with --resume" if done
            else "interrupted before the first epoch ended: no checkpoint written")
        raise
    evaluation, text = None, None
    if heldout:
        evaluation = {"epoch": done, **evaluate_reconstruction(net, *heldout)}
        text = format_reconstruction(evaluation)
    elif image_shape == DIGITS_SHAPE and eval_samples > 0:
        evaluation = {"epoch": done, **evaluate_digits(net, eval_samples, seed + 1)}
        text = format_evaluation(evaluation)
    if evaluation is not None:
        with open(_atomic_path(out / "evaluation.json"), "w") as f:
            json.dump(evaluation, f, indent=2)
        os.replace(_atomic_path(out / "evaluation.json"), out / "evaluation.json")
        log(text + f"\nwrote {out / 'evaluation.json'}")
    return {"out": out, "epoch": done, "step": step, "history": history, "epoch_losses": epoch_losses,
            "evaluation": evaluation}


# ------------------------------------------------------------------------------ recgen vs torch
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _fork_rng(device: torch.device):
    """fork_rng over the CPU generator and, on CUDA, the model's device."""
    if device.type != "cuda":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[torch.cuda.current_device() if device.index is None else device.index])


def _timed_steps(model, batches, seed, device):
    """Train `model` on `batches` from the global seed `seed`: (losses per step, seconds per step)."""
    losses, seconds = [], []
    with _fork_rng(device):
        torch.manual_seed(seed)
        optimizers = model.make_optimizers()
        for step, batch in enumerate(batches, 1):
            _sync(device)
            begin = time.perf_counter()
            with _model_errors(f"{model.name}, step {step}"):
                result = model.train_step(batch, optimizers)
            _sync(device)
            seconds.append(time.perf_counter() - begin)
            losses.append(_finite_losses(result, step, 1, Path("(no checkpoint: --compare-torch)")))
    return losses, seconds


def compare_torch(model: str, data: str = "digits", steps: int = DEFAULT_COMPARE_STEPS,
                  batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = None, seed: int = 0,
                  options: dict | None = None, first_steps: int = 5, log=print) -> dict:
    """Train `model` on recgen's layers and its `torch_twin()` (same initial weights) for the same
    `steps` steps: same batches, same global seed before each. Steps per second exclude the first
    step (Triton compilation, cuDNN planning). Returns {'recgen_steps_per_s', 'torch_steps_per_s',
    'speedup', 'max_abs_loss_diff' (largest |loss difference| over the first `first_steps` steps),
    'max_abs_loss_diff_all_steps', 'loss_diff_per_step', 'losses', 'recgen_implementation' (what
    recgen.backend.last_implementation() said after recgen's steps: 'kernels', 'interpreter', 'torch',
    'reference', or None when nothing recorded), ...}.

        numbers = compare_torch("res-gan", steps=50, device="cuda")
    """
    from recgen import backend as recgen_backend
    from recgen import get_backend
    from recgen.backend import interpreting
    from recgen.app.data import load_dataset

    _check_positive(steps=steps, batch_size=batch_size, first_steps=first_steps)
    device = resolve_device(device)
    images = load_dataset(data)
    with _fork_rng(device):
        torch.manual_seed(seed)
        net = build(model, tuple(images.shape[1:]), options).to(device)
    # a deep copy first: the twin must not share Parameters with the model it is compared with
    twin = copy.deepcopy(net).torch_twin().to(device)
    ours, theirs = net.state_dict(), twin.state_dict()
    if set(ours) != set(theirs) or any(not torch.equal(ours[k], theirs[k]) for k in ours):
        raise RuntimeError(f"{model}: torch_twin() does not hold the model's weights "
                           "(state_dict keys or values differ)")
    shuffle = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(images.shape[0], generator=shuffle)
                       for _ in range(math.ceil(steps * batch_size / images.shape[0]))])
    batches = [images[order[i * batch_size:(i + 1) * batch_size]].to(device) for i in range(steps)]
    results, ran = {}, None
    for label, m in (("recgen", net), ("torch", twin)):
        if label == "recgen":
            recgen_backend.record(None)  # cleared: what is recorded after the steps is theirs
        results[label] = _timed_steps(m, batches, seed, device)
        if label == "recgen":
            ran = recgen_backend.last_implementation()
        log(f"{label}: {steps} steps in {sum(results[label][1]):.2f} s")
    (ours, our_s), (theirs, their_s) = results["recgen"], results["torch"]
    if any(set(a) != set(b) for a, b in zip(ours, theirs)):
        raise RuntimeError(f"{model}: the model and its torch twin report different losses: "
                           f"{sorted(ours[0])} vs {sorted(theirs[0])}")
    diffs = [max(abs(a[k] - b[k]) for k in a) for a, b in zip(ours, theirs)]
    timed = slice(1, None) if steps > 1 else slice(None)
    rate = {label: len(s[timed]) / sum(s[timed]) for label, s in (("recgen", our_s), ("torch", their_s))}
    first = min(first_steps, steps)
    numbers = {
        "model": model, "options": dict(options or {}), "device": str(device), "backend": get_backend(),
        "interpreting": interpreting(), "recgen_implementation": ran, "steps": steps, "batch_size": batch_size,
        "timed_steps": len(our_s[timed]),
        "recgen_steps_per_s": rate["recgen"], "torch_steps_per_s": rate["torch"],
        "speedup": rate["recgen"] / rate["torch"], "first_steps": first, "max_abs_loss_diff": max(diffs[:first]),
        "max_abs_loss_diff_all_steps": max(diffs), "loss_diff_per_step": diffs,
        "losses": {"recgen": ours, "torch": theirs},
    }
    log(f"{model} on {device}: recgen ({ran or 'not recorded'}) {rate['recgen']:.2f} steps/s, torch.nn "
        f"{rate['torch']:.2f} steps/s (x{numbers['speedup']:.2f}; first step excluded); largest |loss difference| "
        f"over the first {first} steps {numbers['max_abs_loss_diff']:.3g} (over all {steps}: "
        f"{numbers['max_abs_loss_diff_all_steps']:.3g})")
    if ran in _IMPLEMENTATION_NOTES:
        log(f"note: {_IMPLEMENTATION_NOTES[ran]}")
    return numbers


# what compare_torch's ratio means, by what recgen ran (recgen.backend.IMPLEMENTATIONS; None: nothing recorded)
_IMPLEMENTATION_NOTES = {
    "torch": "recgen ran torch's own op (the 'torch' implementation): the ratio is ~1 by construction and "
             "says nothing about the kernels",
    "interpreter": "recgen ran the kernels under Triton's interpreter: these are not kernel speeds",
    "reference": "recgen ran its reference step loops: these are not kernel speeds",
    None: "no recgen op recorded what it ran: these speeds say nothing about the kernels",
}


def sample_grid(checkpoint, n: int = GRID_SAMPLES, out="grid.png", seed: int = 0, device: str | None = None) -> Path:
    """Draw n samples (CPU generator seeded with `seed`) from a checkpoint into a grid image at `out`.
    For a reconstruction model (cyclic-mlp): n held-out images of the checkpoint's data (a draw
    without repeats seeded with `seed`, recgen.app.data.load_heldout), each beside its reconstruction."""
    from recgen.app.data import load_heldout

    _check_positive(n=n)
    model, state = load_model(checkpoint, device)
    if not reconstructs(model):
        return save_image_grid(draw_samples(model, n, seed), out)
    images, what = load_heldout(state["data"])
    if n > images.shape[0]:
        raise ValueError(f"--n {n}: {model.name} reconstructs held-out images, and there are {images.shape[0]} "
                         f"({what})")
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    return save_reconstruction_grid(model, images[pick], out)
