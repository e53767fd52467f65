"""Noisy latents ``x_t`` on the model's own sampling trajectories, for the training methods
that score a prediction at a point of a guided DDIM run (ESD, AdvUnlearn).

- ``sample_until``: one guided DDIM run from noise, stopped after ``k`` steps: the
  paper's way, a fresh ``x_t`` for every iteration (on average half a run each).
- ``TrajectoryBank``: whole runs of a batch of trajectories with every intermediate
  latent kept (and, optionally, a value computed at each latent on the way, such as a
  frozen model's prediction), from which iterations draw ``(trajectory, step)`` pairs:
  one run serves many iterations.

The latent after ``k`` steps, ``x_k``, is at noise level ``scheduler.timesteps[k]``:
``k = 0`` is the starting noise (scaled by ``init_noise_sigma``), ``k = steps - 1`` the
last latent before the final denoising step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .adapters import PromptEmbeddings, StableDiffusionAdapter
from .errors import ErasureError

# What a bank sampler computes at one latent: the guided prediction that takes the
# trajectory one step further, and the value kept with that latent (or ``None``).
StepPredictions = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def widened(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32, or as it is if wider (float64 runs stay float64 throughout).

    Args:
        tensor: e.g. a prediction made under half-precision autocast.
    """
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def ddim_step(scheduler, prediction: torch.Tensor, timestep: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM step (eta 0), computed in float32 or wider.

    Args:
        scheduler: a DDIM scheduler with its timesteps set.
        prediction: the (guided) model prediction at ``latents``.
        timestep: the current timestep.
        latents: the current latents.
    """
    return scheduler.step(widened(prediction), timestep, latents, eta=0.0).prev_sample


def sample_until(
    adapter: StableDiffusionAdapter,
    scheduler,
    noise: torch.Tensor,
    steps: int,
    cond: PromptEmbeddings,
    empty: PromptEmbeddings,
    guidance: float,
    start: int = 0,
) -> torch.Tensor:
    """``steps`` DDIM steps (eta 0) from ``noise`` with classifier-free guidance: the
    latent at noise level ``scheduler.timesteps[start + steps]``.

    Args:
        adapter: the model's adapter (whatever weights its UNet holds now).
        scheduler: a DDIM scheduler with its timesteps set.
        noise: starting noise, ``(batch, C, H, W)``.
        steps: how many steps to run (0: the scaled noise itself).
        cond: one conditioning per batch element.
        empty: the empty prompt's conditioning (one row).
        guidance: classifier-free guidance scale.
        start: the schedule index the noise is taken to be at (1 for the 2023 CompVis
            sampler, which drops the first timestep).
    """
    latents = noise * scheduler.init_noise_sigma
    uncond = empty.repeat(len(cond))
    for timestep in scheduler.timesteps[start : start + steps]:
        model_input = scheduler.scale_model_input(latents, timestep)
        prediction = adapter.predict_noise(model_input, timestep, cond, uncond, guidance)
        latents = ddim_step(scheduler, prediction, timestep, latents)
    return latents


@dataclass
class BankDraw:
    """The latents an iteration trains on: ``trajectories`` (indices into the bank), all
    at the same ``step``.

    Attributes:
        trajectories: ``(count,)`` bank indices.
        step: the DDIM step, ``0 .. steps-1``.
        rows: the prompt row each drawn trajectory was sampled with.
        latents: ``x_step`` of each drawn trajectory.
        values: the values kept with those latents, or ``None``.
    """

    trajectories: torch.Tensor
    step: int
    rows: torch.Tensor
    latents: torch.Tensor
    values: torch.Tensor | None


@dataclass
class TrajectoryBank:
    """Every intermediate latent of a batch of guided DDIM trajectories.

    Attributes:
        latents: ``(steps, n, C, H, W)``: ``latents[k, i]`` is trajectory ``i`` after
            ``k`` steps, at noise level ``scheduler.timesteps[k]``.
        rows: ``(n,)`` the prompt row each trajectory was sampled with.
        values: ``(steps, n, ...)`` a value computed at each latent while sampling
            (e.g. a frozen model's target there), or ``None``.
    """

    latents: torch.Tensor
    rows: torch.Tensor
    values: torch.Tensor | None = None

    @classmethod
    @torch.no_grad()
    def sample(
        cls, scheduler, noise: torch.Tensor, rows: torch.Tensor, predict: StepPredictions, with_values: bool
    ) -> "TrajectoryBank":
        """Run every trajectory through the whole schedule in one batch.

        Args:
            scheduler: a DDIM scheduler with its timesteps set; its length is the bank's depth.
            noise: ``(n, C, H, W)`` starting noise, one trajectory per row.
            rows: ``(n,)`` the prompt row of each trajectory (kept for the draws).
            predict: ``predict(model_input, timestep)`` -> ``(guided prediction, value)``.
            with_values: keep the values; without them the last step, whose prediction
                would only lead past the bank, is not computed.
        """
        latents = noise * scheduler.init_noise_sigma
        kept, values = [], []
        timesteps = scheduler.timesteps
        for index, timestep in enumerate(timesteps):
            kept.append(latents)
            if index == len(timesteps) - 1 and not with_values:
                break
            prediction, value = predict(scheduler.scale_model_input(latents, timestep), timestep)
            if with_values:
                values.append(value)
            latents = ddim_step(scheduler, prediction, timestep, latents)
        return cls(torch.stack(kept), rows, torch.stack(values) if with_values else None)

    def __len__(self) -> int:
        return self.latents.shape[1]

    @property
    def steps(self) -> int:
        return self.latents.shape[0]

    def draw(self, generator: torch.Generator, count: int) -> BankDraw:
        """``count`` trajectories (uniformly, with replacement) at one step (uniform over
        the schedule), from ``generator``.

        Args:
            generator: the run's random stream.
            count: latents to draw (the batch size).
        """
        trajectories = torch.randint(len(self), (count,), generator=generator)
        step = int(torch.randint(self.steps, (1,), generator=generator))
        return self.at(trajectories, step)

    def at(self, trajectories: torch.Tensor, step: int) -> BankDraw:
        """The latents (and values) of chosen trajectories at one step.

        Args:
            trajectories: ``(count,)`` bank indices, on the CPU.
            step: the DDIM step, ``0 .. steps-1``.
        """
        on_device = trajectories.to(self.latents.device)
        values = None if self.values is None else self.values[step, on_device]
        return BankDraw(trajectories, step, self.rows[trajectories], self.latents[step, on_device], values)

    @classmethod
    def cat(cls, banks: list["TrajectoryBank"]) -> "TrajectoryBank":
        """The banks' trajectories in one bank, in order (e.g. a bank sampled in chunks
        to bound memory).

        Args:
            banks: banks of the same depth, all with values or all without.
        """
        values = None if banks[0].values is None else torch.cat([bank.values for bank in banks], dim=1)
        return cls(torch.cat([bank.latents for bank in banks], dim=1), torch.cat([bank.rows for bank in banks]), values)

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The bank as named tensors, for a checkpoint (``erasure.training.TrainingState.tensors``).

        Args:
            prefix: the names' prefix, e.g. ``"bank"``.
        """
        tensors = {f"{prefix}/latents": self.latents, f"{prefix}/rows": self.rows}
        if self.values is not None:
            tensors[f"{prefix}/values"] = self.values
        return tensors

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], prefix: str, device: torch.device) -> "TrajectoryBank | None":
        """The bank stored by ``state`` (e.g. restored from a checkpoint), or ``None`` if there is none.

        Args:
            tensors: named tensors holding ``state(prefix)``'s entries.
            prefix: the prefix given to ``state``.
            device: where the latents and values are used.
        """
        if f"{prefix}/latents" not in tensors:
            return None
        if f"{prefix}/rows" not in tensors:
            raise ErasureError(f"the checkpoint's trajectory bank lacks {prefix}/rows: it is damaged; --overwrite starts again")
        values = tensors.get(f"{prefix}/values")
        return cls(
            tensors[f"{prefix}/latents"].to(device),
            tensors[f"{prefix}/rows"].cpu(),
            None if values is None else values.to(device),
        )
