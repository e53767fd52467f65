"""erasure.training on a toy model: swaps and flags come back exactly, checkpoints belong
to one run, a resumed run equals an uninterrupted one bit for bit, non-finite values stop
the run with the cause named."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from torch import nn

from erasure.errors import ErasureError
from erasure.training import (
    CHECKPOINT_INDEX,
    Checkpoint,
    NonFiniteError,
    RunOptions,
    TrainingState,
    check_checkpoint_folder,
    check_finite_gradients,
    finite_value,
    run_steps,
    swapped_parameters,
    trainable_parameters,
)


def toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


# ---- swaps and flags -------------------------------------------------------------------


def test_swapped_parameters_hold_the_values_without_copying_and_restore_exactly():
    model = toy_model()
    before = snapshot(model)
    storage = {name: p.data_ptr() for name, p in model.named_parameters()}
    values = {"0.weight": torch.ones(8, 4), "2.bias": torch.full((2,), 3.0)}
    with swapped_parameters(model, values):
        params = dict(model.named_parameters())
        assert params["0.weight"].data_ptr() == values["0.weight"].data_ptr()  # a pointer swap, no copy
        assert torch.equal(params["2.bias"], values["2.bias"])
        assert torch.equal(params["0.bias"], before["0.bias"])  # the others untouched
        with torch.no_grad():
            params["0.weight"].add_(1.0)  # in place: changes the value given, not the model's own tensor
    assert torch.equal(values["0.weight"], torch.full((8, 4), 2.0))
    for name, param in model.named_parameters():
        assert param.data_ptr() == storage[name] and torch.equal(param, before[name])  # its own tensor again


def test_swapped_parameters_restore_on_error_and_refuse_foreign_values():
    model = toy_model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with swapped_parameters(model, {"0.weight": torch.zeros(8, 4)}):
            raise RuntimeError("boom")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ErasureError, match="not a parameter"):
        with swapped_parameters(model, {"3.weight": torch.zeros(1)}):
            pass
    with pytest.raises(ErasureError, match="shape"):
        with swapped_parameters(model, {"0.weight": torch.zeros(4, 8)}):
            pass


def test_trainable_parameters_restore_every_flag_and_gradient():
    model = toy_model()
    model[2].bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with trainable_parameters(model, ["0.weight", "2.bias"]) as chosen:
        assert list(chosen) == ["0.weight", "2.bias"]
        assert {n for n, p in model.named_parameters() if p.requires_grad} == {"0.weight", "2.bias"}
        model(torch.randn(3, 4)).sum().backward()
        assert chosen["0.weight"].grad is not None
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_trainable_parameters_restore_gradient_checkpointing(sd1_pipe):
    unet = sd1_pipe.unet
    assert not unet.is_gradient_checkpointing
    with trainable_parameters(unet, ["conv_in.weight"], gradient_checkpointing=True):
        assert unet.is_gradient_checkpointing
    assert not unet.is_gradient_checkpointing


# ---- a toy training run ------------------------------------------------------------------


def toy_run(folder, total: int, run: RunOptions | None = None, fail_at: int | None = None, seed: int = 0):
    """``total`` Adam steps on a toy regression, as ESD does: the trained values swapped
    into the model, the frozen originals never written to."""
    model = toy_model()
    original = {name: p.detach() for name, p in model.named_parameters()}
    trained = {name: value.clone() for name, value in original.items()}
    run = run or RunOptions(checkpoint_dir=folder)
    checkpoint = Checkpoint.open(run, {"seed": seed, "lr": 0.05}, original, "toy")
    with swapped_parameters(model, trained), trainable_parameters(model, list(trained)) as params:
        state = TrainingState(tensors=trained, optimizer=torch.optim.Adam(list(params.values()), lr=0.05),
                              generator=torch.Generator().manual_seed(seed))

        def step(index: int) -> float:
            x = torch.randn(16, 4, generator=state.generator)
            loss = (model(x) - x[:, :2]).pow(2).mean()
            if index == fail_at:
                loss = loss * float("nan")
            value = finite_value(loss, "lower lr (now 0.05)")
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            check_finite_gradients(params.values(), "lower lr (now 0.05)")
            state.optimizer.step()
            return value

        history = run_steps(step, state, total, checkpoint, run.checkpoint_every)
    return trained, history


def test_resume_after_ctrl_c_is_bit_identical(tmp_path, monkeypatch):
    reference, reference_losses = toy_run(tmp_path / "reference", 8)
    calls = {"n": 0}
    real_finite = finite_value

    def interrupting(loss, hint):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C during step 3: it finishes, then a checkpoint
        return real_finite(loss, hint)

    monkeypatch.setitem(toy_run.__globals__, "finite_value", interrupting)
    with pytest.raises(KeyboardInterrupt):
        toy_run(tmp_path / "run", 8)
    monkeypatch.undo()
    assert json.loads((tmp_path / "run" / CHECKPOINT_INDEX).read_text())["step"] == 3
    resumed, losses = toy_run(tmp_path / "run", 8, RunOptions(checkpoint_dir=tmp_path / "run", resume=True))
    assert losses == reference_losses
    assert all(torch.equal(resumed[n], reference[n]) for n in reference)


def test_periodic_checkpoints_keep_one_state_file_and_extend(tmp_path):
    reference, _ = toy_run(tmp_path / "reference", 6)
    toy_run(tmp_path / "run", 4, RunOptions(checkpoint_dir=tmp_path / "run", checkpoint_every=3))
    index = json.loads((tmp_path / "run" / CHECKPOINT_INDEX).read_text())
    assert index["step"] == 4 and index["state_file"] == "state-0000004.safetensors"  # every 3, and at the end
    assert [p.name for p in (tmp_path / "run").glob("state-*")] == ["state-0000004.safetensors"]
    longer, losses = toy_run(tmp_path / "run", 6, RunOptions(checkpoint_dir=tmp_path / "run", checkpoint_every=3, resume=True))
    assert len(losses) == 6 and all(torch.equal(longer[n], reference[n]) for n in reference)
    with pytest.raises(ErasureError, match="at step 6, past the 5 asked for"):
        toy_run(tmp_path / "run", 5, RunOptions(checkpoint_dir=tmp_path / "run", resume=True))


def test_a_foreign_checkpoint_is_refused_without_resume_or_overwrite(tmp_path):
    folder = tmp_path / "run"
    toy_run(folder, 2, RunOptions(checkpoint_dir=folder, checkpoint_every=1))
    stamp = (folder / CHECKPOINT_INDEX).read_bytes()
    for run in (RunOptions(checkpoint_dir=folder), RunOptions(checkpoint_dir=folder, checkpoint_every=1)):
        with pytest.raises(ErasureError, match=r"earlier run: pass --resume .* or --overwrite"):
            toy_run(folder, 2, run)
        with pytest.raises(ErasureError, match="earlier run"):
            check_checkpoint_folder(run)  # the same refusal, before any work
    assert (folder / CHECKPOINT_INDEX).read_bytes() == stamp  # left as it was
    with pytest.raises(ErasureError, match=r"belongs to another run \(seed: 0 -> 1\)"):
        toy_run(folder, 2, RunOptions(checkpoint_dir=folder, resume=True), seed=1)
    with pytest.raises(ErasureError, match="no checkpoint in .* to resume"):
        toy_run(tmp_path / "none", 2, RunOptions(checkpoint_dir=tmp_path / "none", resume=True))


def test_overwrite_starts_afresh(tmp_path):
    reference, _ = toy_run(tmp_path / "reference", 3)
    folder = tmp_path / "run"
    toy_run(folder, 2, RunOptions(checkpoint_dir=folder, checkpoint_every=1), seed=1)
    (folder / "notes.txt").write_text("the user's own file")
    fresh, losses = toy_run(folder, 3, RunOptions(checkpoint_dir=folder, overwrite=True))
    assert len(losses) == 3 and all(torch.equal(fresh[n], reference[n]) for n in reference)
    assert not (folder / CHECKPOINT_INDEX).exists() and not list(folder.glob("state-*"))  # the old one is gone
    assert (folder / "notes.txt").exists()  # only the checkpoint's own files are deleted


def test_a_checkpoint_of_another_base_model_is_refused(tmp_path):
    folder = tmp_path / "run"
    toy_run(folder, 1, RunOptions(checkpoint_dir=folder, checkpoint_every=1))
    other = {name: p.detach() + 1 for name, p in toy_model().named_parameters()}
    with pytest.raises(ErasureError, match="another base model"):
        Checkpoint.open(RunOptions(checkpoint_dir=folder, resume=True), {"seed": 0, "lr": 0.05}, other, "toy")


def test_the_default_folder_is_per_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = {name: p.detach() for name, p in toy_model().named_parameters()}
    first = Checkpoint.open(RunOptions(), {"lr": 0.1}, base, name="toy-x")
    again = Checkpoint.open(RunOptions(), {"lr": 0.1}, base, name="toy-x")
    other = Checkpoint.open(RunOptions(), {"lr": 0.2}, base, name="toy-x")
    assert first.folder == again.folder != other.folder and first.folder.name.startswith("toy-x-")


def test_a_non_finite_loss_stops_with_the_cause_and_keeps_the_last_good_state(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(ErasureError, match=r"toy: loss became nan at step 3, so training stopped; lower lr \(now 0.05\)"):
        toy_run(folder, 5, fail_at=2)
    index = json.loads((folder / CHECKPOINT_INDEX).read_text())
    assert index["step"] == 2 and all(isinstance(x, float) for x in index["history"])
    # The saved state is the one before the failing step, generator included: resuming
    # without the fault gives the uninterrupted run.
    reference, _ = toy_run(tmp_path / "reference", 5)
    resumed, _ = toy_run(folder, 5, RunOptions(checkpoint_dir=folder, resume=True))
    assert all(torch.equal(resumed[n], reference[n]) for n in reference)


def test_non_finite_gradients_are_detected():
    param = nn.Parameter(torch.ones(3))
    param.grad = torch.tensor([0.0, float("inf"), 1.0])
    with pytest.raises(NonFiniteError, match="gradient became non-finite") as raised:
        check_finite_gradients([param], "lower lr")
    assert raised.value.hint == "lower lr"
    param.grad = torch.zeros(3)
    check_finite_gradients([param], "lower lr")
    assert finite_value(torch.tensor(2.5), "unused") == 2.5


def test_run_options_refuse_a_negative_interval():
    with pytest.raises(ErasureError, match="checkpoint_every"):
        RunOptions(checkpoint_every=-1)
