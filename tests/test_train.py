"""recgen.app.train and recgen.app.cli: the loop behind `recgen train` / `recgen sample`, on a tiny fake model.

The fake implements recgen.app.models' contract (build_model(name, image_shape, **options) ->
make_optimizers, train_step, sample, torch_twin) and is swapped in through recgen.app.train's one
model lookup, so these tests do not depend on the real models (tests/test_models.py covers them).
"""

import argparse
import copy
import json

import pytest
import torch
from PIL import Image
from torch import nn

from recgen.app import cli as C
from recgen.app import train as T

STEPS_PER_EPOCH = 1438 // 64  # digits' training split, batch 64, remainder dropped


class FakeModel(nn.Module):
    """A linear "GAN": noise (drawn from the global RNG in train_step, like the real GANs) -> pixels."""

    name = "fake"
    loss_offset = 0.0  # a twin that disagrees (compare_torch), or NaN losses
    fail_at = None     # (step, exception): train_step number `step` raises it

    def __init__(self, image_shape, hidden=6, noise_dim=3):
        super().__init__()
        self.image_shape = tuple(image_shape)
        C, H, W = self.image_shape
        self.noise_dim = noise_dim
        self.generator = nn.Sequential(nn.Linear(noise_dim, hidden), nn.Tanh(), nn.Linear(hidden, C * H * W))
        self.discriminator = nn.Linear(C * H * W, 1)
        self.steps = 0

    def make_optimizers(self):
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=1e-2),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=1e-2)}

    def _fake(self, z):
        return torch.sigmoid(self.generator(z)).view(-1, *self.image_shape)

    def train_step(self, images, optimizers):
        self.steps += 1
        if self.fail_at is not None and self.steps == self.fail_at[0]:
            raise self.fail_at[1]
        fake = self._fake(torch.randn(images.shape[0], self.noise_dim, device=images.device))
        d = self.discriminator
        d_loss = (nn.functional.softplus(-d(images.flatten(1))).mean()
                  + nn.functional.softplus(d(fake.detach().flatten(1))).mean())
        optimizers["discriminator"].zero_grad()
        d_loss.backward()
        optimizers["discriminator"].step()
        g_loss = nn.functional.softplus(-d(fake.flatten(1))).mean()
        optimizers["generator"].zero_grad()
        g_loss.backward()
        optimizers["generator"].step()
        return {"d_loss": d_loss.item() + self.loss_offset, "g_loss": g_loss.item()}

    def sample(self, n, generator=None):
        with torch.no_grad():
            return self._fake(torch.randn(n, self.noise_dim, generator=generator))

    def torch_twin(self):
        return copy.deepcopy(self)


class OtherFake(FakeModel):
    name = "other"


FAKES = {"fake": FakeModel, "other": OtherFake}
BUILT = []


def fake_build_model(name, image_shape, **options):
    model = FAKES[name](image_shape, **options)
    BUILT.append(model)
    return model


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    """recgen.app.train reaches the models only through _load_models: point it at the fakes."""
    monkeypatch.setattr(T, "_load_models", lambda: (FAKES, fake_build_model))
    BUILT.clear()
    with torch.random.fork_rng(devices=[]):  # train() seeds the global RNG; other tests keep theirs
        yield


def quiet(**kwargs):
    return dict(progress=False, log=lambda *a: None, device="cpu", eval_samples=0) | kwargs


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def optimizer_tensors(state: dict) -> list:
    return [v for opt in state["optimizer_states"].values() for s in opt["state"].values() for v in s.values()]


# ---------------------------------------------------------------------------------------- training
def test_train_writes_samples_curve_checkpoint_and_evaluation(tmp_path, capsys):
    summary = T.train("fake", epochs=2, out=tmp_path, device="cpu", eval_samples=200, options={"hidden": 5})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["checkpoint.pt", "evaluation.json", "loss_curve.png", "samples_epoch001.png",
                     "samples_epoch002.png"]
    with Image.open(tmp_path / "samples_epoch002.png") as grid:
        assert grid.size == ((8 * 9 + 1) * 6, (8 * 9 + 1) * 6) and grid.mode == "L"  # 8x8 tiles, x6
    with Image.open(tmp_path / "loss_curve.png") as curve:
        assert curve.format == "PNG" and curve.size[0] > 300
    state = T.read_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["model"], state["options"], state["image_shape"], state["data"]) == \
        ("fake", {"hidden": 5}, (1, 8, 8), "digits")
    assert (state["epoch"], state["step"], state["batch_size"], state["seed"]) == (2, 2 * STEPS_PER_EPOCH, 64, 0)
    assert [e["step"] for e in state["history"]] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert all(set(e["losses"]) == {"d_loss", "g_loss"} for e in state["history"])
    assert set(state["optimizer_states"]) == {"generator", "discriminator"}
    assert set(state["rng"]) == {"torch", "shuffle", "cuda"}
    assert states_equal(state["model_state"], BUILT[0].state_dict())
    assert summary["epoch"] == 2 and summary["history"] == state["history"]

    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation == summary["evaluation"]
    assert evaluation["samples"] == 200 and evaluation["epoch"] == 2
    assert len(evaluation["histogram"]) == 10 and sum(evaluation["histogram"]) == 200
    assert 0.1 <= evaluation["mean_confidence"] <= 1.0 and evaluation["classifier_test_accuracy"] > 0.9
    assert evaluation["frechet_distance"] > evaluation["frechet_floor"] > 0  # two epochs of a linear GAN
    assert "200 real digits of the train split" in evaluation["frechet_floor_from"]
    captured = capsys.readouterr()
    assert "epoch 2/2: d_loss" in captured.out
    assert "mean confidence" in captured.out and "class histogram 0:" in captured.out
    assert (f"Frechet distance to the real test digits {evaluation['frechet_distance']:.3g} (real-vs-real floor "
            f"{evaluation['frechet_floor']:.3g}") in captured.out
    assert "epoch 1/2" in captured.err and "g_loss=" in captured.err  # tqdm bar with running losses


def test_loss_history_grows_and_resume_continues_from_saved_epoch(tmp_path):
    T.train("fake", epochs=1, out=tmp_path / "a", **quiet())
    first = T.read_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert (first["epoch"], len(first["history"])) == (1, STEPS_PER_EPOCH)
    messages = []
    summary = T.train("fake", epochs=3, out=tmp_path / "a", resume=True, **quiet(log=messages.append))
    assert messages[0] == f"resuming fake from epoch 1 (step {STEPS_PER_EPOCH}) in {tmp_path / 'a'}"
    resumed = T.read_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert (resumed["epoch"], summary["epoch"]) == (3, 3)
    assert [e["step"] for e in resumed["history"]] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    assert resumed["history"][:STEPS_PER_EPOCH] == first["history"]
    assert [e["epoch"] for e in resumed["epoch_losses"]] == [1, 2, 3]
    assert (tmp_path / "a" / "samples_epoch003.png").is_file()

    # the resumed run is the uninterrupted run: weights, optimizer moments, losses, RNG
    T.train("fake", epochs=3, out=tmp_path / "b", **quiet())
    straight = T.read_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert states_equal(resumed["model_state"], straight["model_state"])
    assert all(torch.equal(x, y) for x, y in zip(optimizer_tensors(resumed), optimizer_tensors(straight)))
    assert resumed["history"] == straight["history"]
    assert torch.equal(resumed["rng"]["torch"], straight["rng"]["torch"])
    assert not states_equal(first["model_state"], straight["model_state"])  # training did move the weights


def test_resume_restores_weights_before_training(tmp_path, monkeypatch):
    T.train("fake", epochs=1, out=tmp_path, **quiet())
    saved = T.read_checkpoint(tmp_path / "checkpoint.pt")
    seen = {}

    class Spy(FakeModel):
        def train_step(self, images, optimizers):
            seen.setdefault("weights", copy.deepcopy(self.state_dict()))
            seen.setdefault("adam_step", optimizers["generator"].state_dict()["state"][0]["step"].item())
            return super().train_step(images, optimizers)
    monkeypatch.setitem(FAKES, "fake", Spy)
    T.train("fake", epochs=2, out=tmp_path, resume=True, **quiet())
    assert states_equal(seen["weights"], saved["model_state"])
    assert seen["adam_step"] == STEPS_PER_EPOCH  # the optimizer's state came back too


def test_checkpoint_is_valid_after_each_epoch_and_an_interrupt_loses_only_the_current_one(tmp_path, capsys,
                                                                                            monkeypatch):
    readings = []

    def log(message):
        if message.startswith("epoch "):
            readings.append(T.read_checkpoint(tmp_path / "checkpoint.pt")["epoch"])
        print(message)

    with monkeypatch.context() as patch:
        patch.setattr(FakeModel, "fail_at", (STEPS_PER_EPOCH * 2 + 3, KeyboardInterrupt()))  # inside epoch 3
        with pytest.raises(KeyboardInterrupt):
            T.train("fake", epochs=4, out=tmp_path, **quiet(log=log))
    assert readings == [1, 2]
    assert "interrupted: " in capsys.readouterr().out
    state = T.read_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (2, 2 * STEPS_PER_EPOCH)
    assert not list(tmp_path.glob("*.tmp")) and not (tmp_path / "samples_epoch003.png").exists()
    T.train("fake", epochs=4, out=tmp_path, resume=True, **quiet())
    T.train("fake", epochs=4, out=tmp_path / "straight", **quiet())
    assert states_equal(T.read_checkpoint(tmp_path / "checkpoint.pt")["model_state"],
                        T.read_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model_state"])


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    real_save, calls = torch.save, []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        T.train("fake", epochs=3, out=tmp_path, **quiet())
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_training_on_an_image_folder_skips_the_digits_evaluation(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(7):
        Image.new("RGB", (5, 4), (30 * i, 10, 200)).save(folder / f"{i}.png")
    summary = T.train("fake", data=str(folder), epochs=1, batch_size=3, out=tmp_path / "run",
                      **quiet(eval_samples=1000))
    assert summary["evaluation"] is None and not (tmp_path / "run" / "evaluation.json").exists()
    state = T.read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["image_shape"] == (3, 4, 5) and state["step"] == 2 and state["data"] == str(folder)
    with Image.open(tmp_path / "run" / "samples_epoch001.png") as grid:
        assert grid.mode == "RGB"


def test_diverged_training_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeModel, "loss_offset", float("nan"))
    with pytest.raises(T.TrainingDiverged, match=r"diverged at step 1 \(epoch 1\): \{'d_loss': nan\}"):
        T.train("fake", epochs=1, out=tmp_path, **quiet())
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_model_failure_in_the_loop_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    monkeypatch.setattr(FakeModel, "fail_at", (3, ValueError("shapes do not match")))
    with pytest.raises(RuntimeError, match="fake, epoch 1: ValueError: shapes do not match"):
        T.train("fake", epochs=1, out=tmp_path, **quiet())
    args = parse("train", "--model", "fake", "--compare-torch", "--steps", "4", "--device", "cpu")
    with pytest.raises(RuntimeError, match="fake, step 3: ValueError: shapes do not match"):
        args.handler(args)


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(model="gan"), ValueError, "unknown model 'gan'; choose from fake, other"),
    (dict(epochs=0), ValueError, "epochs must be an integer >= 1, got 0"),
    (dict(batch_size=0), ValueError, "batch_size must be an integer >= 1, got 0"),
    (dict(options={"depth": 3}), ValueError, "model 'fake' has no option\\(s\\) depth; its options: hidden, noise_dim"),
    (dict(data="no/such/folder"), FileNotFoundError, "--data 'no/such/folder': no such folder"),
    (dict(device="tpu"), ValueError, "unknown device 'tpu'"),
])
def test_bad_training_input(tmp_path, kwargs, error, match):
    args = dict(model="fake", out=tmp_path) | kwargs
    with pytest.raises(error, match=match):
        T.train(args.pop("model"), **quiet(**args))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cuda_without_a_cuda_device(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="'cuda' was requested but torch sees no CUDA device"):
        T.train("fake", out=tmp_path, **quiet(device="cuda"))


def test_folder_errors_reach_the_caller(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in folder"):
        T.train("fake", data=str(tmp_path / "empty"), out=tmp_path / "run", **quiet())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (4, 4)).save(mixed / "a.png")
    Image.new("L", (5, 4)).save(mixed / "b.png")
    with pytest.raises(ValueError, match="a.png is 4x4 but b.png is 5x4"):
        T.train("fake", data=str(mixed), out=tmp_path / "run", **quiet())


def test_resume_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"cannot resume: no checkpoint at '{tmp_path / 'checkpoint.pt'}'"):
        T.train("fake", out=tmp_path, resume=True, **quiet())
    T.train("fake", epochs=1, out=tmp_path, options={"hidden": 4}, **quiet())
    with pytest.raises(ValueError, match="holds model 'fake', not 'other'"):
        T.train("other", epochs=2, out=tmp_path, resume=True, **quiet())
    with pytest.raises(ValueError, match=r"cannot resume with options \{'hidden': 7\}.*\{'hidden': 4\}"):
        T.train("fake", epochs=2, out=tmp_path, resume=True, options={"hidden": 7}, **quiet())
    with pytest.raises(FileExistsError, match="already exists: pass --resume"):
        T.train("fake", epochs=2, out=tmp_path, **quiet())
    other = tmp_path / "other"
    other.mkdir()
    Image.new("L", (4, 4)).save(other / "a.png")
    with pytest.raises(ValueError, match=r"images of shape \(1, 4, 4\).*built for \(1, 8, 8\)"):
        T.train("fake", data=str(other), epochs=2, out=tmp_path, resume=True, **quiet())
    messages = []
    assert T.train("fake", epochs=1, out=tmp_path, resume=True, **quiet(log=messages.append))["epoch"] == 1
    assert any("nothing to train" in m for m in messages)
    assert T.read_checkpoint(tmp_path / "checkpoint.pt")["options"] == {"hidden": 4}


def test_read_checkpoint_rejects_other_files(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        T.read_checkpoint(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a checkpoint of `recgen train`"):
        T.read_checkpoint(tmp_path / "other.pt")


# ------------------------------------------------------------------------------- recgen vs torch
def test_compare_torch_returns_speeds_and_loss_difference(capsys):
    numbers = T.compare_torch("fake", steps=6, batch_size=16, device="cpu", options={"hidden": 4})
    assert numbers["recgen_steps_per_s"] > 0 and numbers["torch_steps_per_s"] > 0
    assert numbers["speedup"] == pytest.approx(numbers["recgen_steps_per_s"] / numbers["torch_steps_per_s"])
    assert (numbers["steps"], numbers["timed_steps"], numbers["first_steps"]) == (6, 5, 5)
    assert numbers["max_abs_loss_diff"] == 0.0 and numbers["loss_diff_per_step"] == [0.0] * 6
    assert numbers["losses"]["recgen"] == numbers["losses"]["torch"] and len(numbers["losses"]["recgen"]) == 6
    assert BUILT[0].steps == 6  # the model itself trained (its twin is a copy)
    out = capsys.readouterr().out
    assert "steps/s" in out and "largest |loss difference| over the first 5 steps 0" in out


@pytest.mark.parametrize("ran,note", [
    ("torch", "recgen ran torch's own op (the 'torch' implementation): the ratio is ~1 by construction"),
    ("interpreter", "recgen ran the kernels under Triton's interpreter: these are not kernel speeds"),
    ("reference", "recgen ran its reference step loops: these are not kernel speeds"),
    ("kernels", None),
    (None, "no recgen op recorded what it ran"),
])
def test_compare_torch_reports_what_recgen_ran(monkeypatch, ran, note):
    """The implementation recorded during recgen's steps (not the twin's, not a stale one) labels the line."""
    from recgen import backend
    backend.record("reference")  # stale, from before: must not be reported
    step = FakeModel.train_step

    def recording(self, images, optimizers):
        if not self.twin and ran is not None:
            backend.record(ran)
        elif self.twin:
            backend.record("kernels" if ran != "kernels" else "torch")  # the twin's record must not count
        return step(self, images, optimizers)
    monkeypatch.setattr(FakeModel, "train_step", recording)
    monkeypatch.setattr(FakeModel, "twin", False, raising=False)
    monkeypatch.setattr(FakeModel, "torch_twin", lambda self: _with(copy.deepcopy(self), twin=True))
    lines = []
    numbers = T.compare_torch("fake", steps=3, batch_size=8, device="cpu", log=lines.append)
    assert numbers["recgen_implementation"] == ran
    summary = next(line for line in lines if "steps/s" in line)
    assert f"recgen ({ran or 'not recorded'}) " in summary and "torch.nn " in summary
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == (note is not None) and (note is None or note in notes[0])
    assert not any("reference path" in line for line in lines)


def test_compare_torch_sees_a_disagreeing_twin(monkeypatch):
    monkeypatch.setattr(FakeModel, "torch_twin", lambda self: _with(copy.deepcopy(self), loss_offset=0.25))
    numbers = T.compare_torch("fake", steps=3, batch_size=8, device="cpu", log=lambda *a: None)
    assert numbers["max_abs_loss_diff"] == pytest.approx(0.25)


def test_compare_torch_twin_in_place_still_starts_from_the_same_weights(monkeypatch):
    """A torch_twin() that converts the model in place (returns self) must not make the second run
    start from the first run's trained weights."""
    monkeypatch.setattr(FakeModel, "torch_twin", lambda self: self)
    numbers = T.compare_torch("fake", steps=4, batch_size=8, device="cpu", log=lambda *a: None)
    assert numbers["max_abs_loss_diff_all_steps"] == 0.0


def test_compare_torch_rejects_a_twin_with_other_weights(monkeypatch):
    def perturbed(self):
        twin = copy.deepcopy(self)
        with torch.no_grad():
            twin.discriminator.bias.add_(1e-3)
        return twin
    monkeypatch.setattr(FakeModel, "torch_twin", perturbed)
    with pytest.raises(RuntimeError, match="torch_twin\\(\\) does not hold the model's weights"):
        T.compare_torch("fake", steps=2, batch_size=8, device="cpu", log=lambda *a: None)


def test_compare_torch_bad_input():
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 0"):
        T.compare_torch("fake", steps=0)
    with pytest.raises(ValueError, match="unknown model 'x'"):
        T.compare_torch("x", steps=1, device="cpu")


def _with(model, **attrs):
    for k, v in attrs.items():
        setattr(model, k, v)
    return model


# ------------------------------------------------------------------------------------------- CLI
def parse(*argv):
    parser = argparse.ArgumentParser(prog="recgen")
    C.add_parsers(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(list(argv))


def test_cli_train_then_sample(tmp_path, capsys):
    run = tmp_path / "run"
    args = parse("train", "--model", "fake", "--epochs", "1", "--out", str(run), "--device", "cpu",
                 "--hidden", "5", "--option", "noise_dim=2", "--no-progress", "--batch-size", "100")
    assert args.handler is C.main_train and args.handler(args) == 0
    state = T.read_checkpoint(run / "checkpoint.pt")
    assert state["options"] == {"hidden": 5, "noise_dim": 2} and state["step"] == 1438 // 100
    assert (run / "evaluation.json").is_file()

    args = parse("sample", "--checkpoint", str(run / "checkpoint.pt"), "--n", "10", "--out", str(tmp_path / "g.png"),
                 "--seed", "3")
    assert args.handler is C.main_sample and args.handler(args) == 0
    assert f"wrote {tmp_path / 'g.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size == ((4 * 9 + 1) * 6, (3 * 9 + 1) * 6)  # 10 tiles: 4 columns, 3 rows
    again, other = tmp_path / "again.png", tmp_path / "other.png"
    T.sample_grid(run / "checkpoint.pt", n=10, out=again, seed=3)
    T.sample_grid(run / "checkpoint.pt", n=10, out=other, seed=4)
    assert again.read_bytes() == (tmp_path / "g.png").read_bytes() != other.read_bytes()


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "gan"], "recgen train: error: unknown model 'gan'; choose from fake, other"),
    (["train", "--model", "fake", "--epochs", "0"], "recgen train: error: epochs must be an integer >= 1, got 0"),
    (["train", "--model", "fake", "--steps", "5"], "--steps applies only with --compare-torch"),
    (["train", "--model", "fake", "--compare-torch", "--resume"], "cannot be combined with --resume"),
    (["train", "--model", "fake", "--option", "hidden"], "--option expects KEY=VALUE, got 'hidden'"),
    (["train", "--model", "fake", "--resume", "--out", "{tmp}"], "cannot resume: no checkpoint at"),
    (["train", "--model", "fake", "--data", "{tmp}"], "no images in folder"),
    (["sample", "--checkpoint", "{tmp}/none.pt"], "recgen sample: error: no checkpoint at"),
])
def test_cli_bad_input_exits_2_with_the_message_on_stderr(tmp_path, capsys, argv, message):
    args = parse(*[a.format(tmp=tmp_path) for a in argv])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_compare_torch_writes_its_numbers(tmp_path, capsys):
    args = parse("train", "--model", "fake", "--compare-torch", "--steps", "3", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path))
    assert args.handler(args) == 0
    numbers = json.loads((tmp_path / "compare_torch.json").read_text())
    assert numbers["steps"] == 3 and numbers["max_abs_loss_diff"] == 0.0
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_diverged_training_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FakeModel, "loss_offset", float("inf"))
    args = parse("train", "--model", "fake", "--out", str(tmp_path), "--device", "cpu", "--no-progress")
    assert args.handler(args) == 1
    assert "training diverged at step 1" in capsys.readouterr().err


def test_parse_options():
    assert C.parse_options(None, []) == {}
    assert C.parse_options(8, ["base=16", "lr=0.5", "discriminator=gru", "flag=true", "x=none"]) == \
        {"hidden": 8, "base": 16, "lr": 0.5, "discriminator": "gru", "flag": True, "x": None}


def test_save_image_grid_bad_input(tmp_path):
    with pytest.raises(ValueError, match="cannot tell an image format"):
        T.save_image_grid(torch.rand(2, 1, 4, 4), tmp_path / "grid.xyz")
    with pytest.raises(ValueError, match=r"C in 1, 3, 4; got \(2, 2, 4, 4\)"):
        T.save_image_grid(torch.rand(2, 2, 4, 4), tmp_path / "grid.png")


# ------------------------------------------------------------------------------ the real models
REAL_LOAD_MODELS = T._load_models


@pytest.mark.parametrize("name,options", [
    ("row-lstm", {"hidden": 8}),
    ("rnn-gan", {"hidden": 8, "noise_dim": 4}),
    ("res-gan", {"base": 8, "noise_dim": 8}),
])
def test_real_models_train_resume_sample_and_compare(tmp_path, monkeypatch, name, options):
    """recgen.app.models through the same loop: 2-step epochs, resume, a sample grid, compare_torch."""
    import recgen
    monkeypatch.setattr(T, "_load_models", REAL_LOAD_MODELS)
    if not torch.cuda.is_available():
        recgen.set_backend("reference")  # the Triton interpreter is too slow for training loops
    device = "cuda" if torch.cuda.is_available() else "cpu"
    T.train(name, epochs=1, batch_size=512, out=tmp_path, options=options, **quiet(device=device))
    summary = T.train(name, epochs=2, out=tmp_path, resume=True, **quiet(device=device, eval_samples=50))
    assert summary["epoch"] == 2 and summary["step"] == 4 and sum(summary["evaluation"]["histogram"]) == 50
    T.sample_grid(tmp_path / "checkpoint.pt", n=5, out=tmp_path / "grid.png", device=device)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == ((3 * 9 + 1) * 6, (2 * 9 + 1) * 6)
    numbers = T.compare_torch(name, steps=2, batch_size=8, device=device, options=options, log=lambda *a: None)
    assert numbers["recgen_steps_per_s"] > 0 and numbers["torch_steps_per_s"] > 0
    assert numbers["recgen_implementation"] == ("kernels" if device == "cuda" else "reference")
    assert numbers["max_abs_loss_diff"] < 1e-3  # the same model and batches: only rounding differs


def test_cyclic_mlp_trains_reconstructs_resumes_and_compares(tmp_path, monkeypatch):
    """The reconstruction model through the same loop: an epoch of 2 steps writes held-out digits
    beside their reconstructions, the loss curve, the checkpoint and the held-out error (finite, the
    one recomputed from the checkpoint); resume, `recgen sample` (reconstructions) and compare_torch."""
    import recgen
    from recgen.app.data import load_digits
    monkeypatch.setattr(T, "_load_models", REAL_LOAD_MODELS)
    if not torch.cuda.is_available():
        recgen.set_backend("reference")  # the Triton interpreter is too slow for training loops
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = []
    summary = T.train("cyclic-mlp", epochs=1, batch_size=512, out=tmp_path, options={"hidden": 12},
                      **quiet(device=device, log=lines.append))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "evaluation.json", "loss_curve.png",
                                                         "reconstructions_epoch001.png"]
    with Image.open(tmp_path / "reconstructions_epoch001.png") as grid:  # 64 pairs: 16 tiles a row, 8 rows
        assert grid.size == ((16 * 9 + 1) * 6, (8 * 9 + 1) * 6) and grid.mode == "L"
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert evaluation == summary["evaluation"] and evaluation["epoch"] == 1 and evaluation["images"] == 359
    assert "digits test split (held out" in evaluation["images_from"]
    assert 0 < evaluation["reconstruction_mse"] < 1
    state = T.read_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["model"], state["step"], set(state["optimizer_states"])) == ("cyclic-mlp", 2, {"model"})
    assert state["epoch_losses"][0]["reconstruction_mse"] == evaluation["reconstruction_mse"]
    model, _ = T.load_model(tmp_path / "checkpoint.pt", device)
    held_out = load_digits("test")
    error = ((model.reconstruct(held_out.to(device)).cpu().double() - held_out.double()) ** 2).mean().item()
    assert error == pytest.approx(evaluation["reconstruction_mse"], rel=1e-12)
    assert any("epoch 1/1: mse " in line and "held-out reconstruction mse" in line for line in lines)
    assert lines[-1].startswith("reconstruction error (mean squared error per pixel) ")

    summary = T.train("cyclic-mlp", epochs=2, out=tmp_path, resume=True, **quiet(device=device))
    assert summary["step"] == 4 and (tmp_path / "reconstructions_epoch002.png").is_file()
    assert summary["evaluation"]["reconstruction_mse"] < evaluation["reconstruction_mse"]

    args = parse("sample", "--checkpoint", str(tmp_path / "checkpoint.pt"), "--n", "5", "--out",
                 str(tmp_path / "pairs.png"), "--device", device)
    assert args.handler(args) == 0
    with Image.open(tmp_path / "pairs.png") as grid:  # 5 pairs: 3 a row, 2 rows
        assert grid.size == ((6 * 9 + 1) * 6, (2 * 9 + 1) * 6)
    with pytest.raises(ValueError, match="reconstructs held-out images, and there are 359"):
        T.sample_grid(tmp_path / "checkpoint.pt", n=360, out=tmp_path / "x.png", device=device)

    numbers = T.compare_torch("cyclic-mlp", steps=2, batch_size=8, device=device, options={"hidden": 12},
                              log=lambda *a: None)
    assert numbers["recgen_implementation"] == ("kernels" if device == "cuda" else "reference")
    assert numbers["max_abs_loss_diff"] < 1e-5  # the same model and batches: only rounding differs


def test_heldout_images_of_a_folder_are_its_own(tmp_path):
    from recgen.app.data import load_heldout
    for i in range(3):
        Image.new("L", (4, 4), 40 * i).save(tmp_path / f"{i}.png")
    images, what = load_heldout(str(tmp_path))
    assert images.shape == (3, 1, 4, 4) and "not held out: a folder has no test split" in what
