"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzynska, Fiotto-Kaufman,
Bau; ICCV 2023).

Fine-tunes part of the UNet so that, prompted with the concept ``c``, it predicts what
the frozen model predicts under *negative* classifier-free guidance away from ``c``
(paper Sec. 3):

    eps_edited(x_t, c, t)  ->  eps*(x_t, t) - eta * (eps*(x_t, c, t) - eps*(x_t, t))

where ``eps*`` is the frozen original model and the unconditioned prediction uses the
empty prompt. Per iteration (batch 1 in the paper): draw a DDIM step ``k ~ U{0..49}``
and noise, run ``k`` DDIM steps (eta 0) prompted with ``c`` at guidance 3 without
gradient to get ``x_t``, then take one Adam step (lr 1e-5) on the MSE between the
edited model's prediction and that target; 1000 iterations, eta 1.

Parameter subsets (``variant``), chosen by module name through the adapter:
- ``esd-x`` (artists, styles): every parameter of the cross-attention (``attn2``) blocks.
- ``esd-u`` (nudity, objects): every parameter outside them. The authors' releases
  differ here (``parameter_rules``): their 2023 CompVis code (``noxattn``, the default)
  also keeps the time embedding and the output norm/conv frozen, and trains norms and
  ``conv_in``; their 2025 diffusers code trains only Linear/Conv2d layers, the time
  embedding, ``conv_in`` and ``conv_out`` included, and no normalisation layer.
  SDXL's added-conditioning embedding is treated as part of the time embedding.
- ``esd-x-strict``: ``attn2.to_k`` and ``attn2.to_v`` only.
- ``esd-all``: everything (2025 rules: every Linear/Conv2d).

Options from the authors' later (2025, diffusers) code:
- ``sample_from="frozen"``: ``x_t`` from the original model instead of the edited one;
- ``target_base="prompt"``: the target starts from the prompt's own frozen prediction,
  ``eps*(c) - eta (eps*(c) - eps*(""))``. This equals the paper's target with
  ``eta - 1``: the 2025 default eta 2 is the paper's eta 1. ``configs/esd/fast.yaml``
  holds that objective at 200 iterations, lr 5e-5, eta 2, with bf16 autocast and the
  model's native resolution (the 2025 code uses 1024 px for SD 1.4, latents 128 x 128:
  ``configs/esd/authors-2025.yaml``);
- ``erase_from``: erase ``c`` from another prompt ``a`` (e.g. a style from "a
  painting"): ``x_t`` is sampled from ``a`` and ``eps_edited(a) -> eps*(a) - eta
  (eps*(c) - eps*(""))``.

Extension: a concept written ``"A->B"`` uses ``B`` instead of the empty prompt as the
neutral prediction, ``eps*(B) - eta (eps*(A) - eps*(B))``: prompts of ``A`` are guided
towards ``B``.

Deviations from the authors' code, none in the objective (each has an option that
reproduces the authors' behaviour; ``configs/esd/authors-2023.yaml`` and
``authors-2025.yaml`` set them):
- ``x_t`` is scored at the DDIM timestep it was sampled to (as the 2025 code does).
  The 2023 code (``train-scripts/train-esd.py`` with its CompVis ``DDIMSampler``) differs
  twice (``timestep_scheme="compvis-2023"``): its sampler drops the first of the
  ``n`` DDIM timesteps (``t_start=-1``), so the starting noise is taken as the latent at
  the second one (961 of 50 steps); and with ``t_enc ~ U{0..n-1}`` it runs
  ``min(n - t_enc, n - 1)`` steps, ending at the level ``20 t_enc - 39`` (for n = 50), then
  scores that latent at ``t_enc_ddpm ~ U[round(1000 t_enc / n), round(1000 (t_enc + 1) / n))``,
  39 to 58 DDPM steps noisier than it is.
- Weights and Adam state stay float32 under ``mixed_precision="bf16"`` autocast; the
  2025 code holds both UNets, the text encoder and Adam's state in bfloat16, so an
  update smaller than a weight's bf16 spacing is lost (10.7% of esd-u's weights moved
  after 10 iterations on a tiny model, against 100% in float32).
  ``mixed_precision="bf16-pure"`` trains a bfloat16 copy of the subset (Adam state in
  bfloat16 too) under bf16 autocast; the frozen weights are rounded to bf16 by autocast
  where theirs are stored so. Their latents and scheduler steps are bf16 as well, ours
  float32: the same rounding regime, not the same bits.
- The 2025 code samples ``x_t`` with the pipeline's own scheduler (PNDM for
  ``CompVis/stable-diffusion-v1-4``); this module always samples with DDIM (eta 0), as
  the paper and the 2023 code do. On a pipeline whose scheduler is DDIM both agree.
- One UNet in memory instead of two: the subset trains on a copy of its values swapped
  into the UNet, and the frozen predictions swap the original values back in (pointer
  swaps, ``erasure.training.swapped_parameters``), so memory is one UNet plus one copy
  of the subset, and the pipeline's own tensors are never written to.
- Several concepts in one run are drawn at random per batch element, as in the 2023
  code's ``--seperator`` option.

The trajectory bank (``refresh_every`` K > 1; not in the authors' code). Sampling
``x_t`` is most of an iteration's cost: ``k`` guided DDIM steps, on average half the
schedule, against one prediction with gradient for the update. With K > 1 the run
samples ``bank_size`` whole trajectories in one batch every K iterations, keeps every
intermediate latent (``erasure.trajectories.TrajectoryBank``), and each iteration draws
``batch_size`` trajectories (with replacement) and one step ``k`` (uniform, as the
paper's) from the bank; the latent is still scored at the timestep it was sampled to.
With ``sample_from="frozen"`` the bank also keeps the target at every latent: the
frozen predictions that take a trajectory one step further are the ones the target
needs (one batched call gives both), so an iteration is one prediction with gradient.
What changes statistically:
- ``sample_from="frozen"``: nothing in the distribution of ``(x_t, t)`` or of the
  target, since the frozen model never changes; but iterations are no longer
  independent: about ``K * batch_size / bank_size`` iterations share each trajectory,
  and latents of one trajectory at different steps are correlated. The run sees
  ``bank_size * ceil(iterations / K)`` trajectories instead of ``iterations *
  batch_size`` independent ones.
- ``sample_from="edited"`` (the paper's): the same correlation, plus staleness: ``x_t``
  comes from the edited model as it was when the bank was sampled, up to K - 1 Adam
  steps before the iteration that uses it. The target is computed at each draw as
  without the bank.
- K = 1 (the default) samples a fresh ``x_t`` per iteration, only as far as its step,
  exactly as before the bank existed (bit for bit, same seed).
A resumed run continues with the bank it was using: the bank is part of the checkpoint.
The edited prediction cannot join the frozen ones in a batch: its weights differ.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ..adapters import PromptEmbeddings, StableDiffusionAdapter, adapter_for
from ..concepts import Concept, slug
from ..config import SEED_BOUNDS, MethodConfig, setting
from ..edit import Edit
from ..errors import ErasureError
from ..trajectories import TrajectoryBank, sample_until, widened
from ..training import (
    Checkpoint,
    RunOptions,
    TrainingState,
    check_finite_gradients,
    finite_value,
    run_steps,
    swapped_parameters,
    trainable_parameters,
)

Variant = Literal["esd-x", "esd-u", "esd-x-strict", "esd-all"]
VARIANTS = ("esd-x", "esd-u", "esd-x-strict", "esd-all")

# Top-level modules of diffusers' UNet2DConditionModel, the same in every family: the
# timestep (and SDXL's added-conditioning) embeddings and the output head, which the
# 2023 code's esd-u leaves frozen.
EMBEDDING_MODULES = ("time_embedding", "add_embedding", "class_embedding")
OUTPUT_MODULES = ("conv_norm_out", "conv_out")
# The layer types the 2025 code trains (norms never).
TRAINED_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)
BANK = "bank"  # the trajectory bank's names in the checkpoint


@dataclass
class ESDConfig(MethodConfig):
    """ESD settings; defaults are the paper's (and its 2023 code, ``train-esd.py``),
    but for one deliberate choice: ``timestep_scheme="aligned"`` scores ``x_t`` at the
    noise level it has, as the paper's method describes and the 2025 code does; the 2023
    code's mismatch is kept as an option and in ``configs/esd/authors-2023.yaml``.
    How a run is carried out (checkpoints, resume, gradient checkpointing) is not here
    but in ``erasure.training.RunOptions``: it does not change the result.

    Attributes:
        variant: which parameters train: ``esd-x`` (cross-attention; artists, styles),
            ``esd-u`` (everything but cross-attention; nudity, objects),
            ``esd-x-strict`` (cross-attention keys and values), ``esd-all``.
        iterations: Adam steps (paper: 1000; 2025 code: 200). A resumed run may ask
            for more than its checkpoint was made with: the run is extended.
        lr: Adam learning rate (paper: 1e-5; 2025 code: 5e-5).
        negative_guidance: ``eta``, how far past the unconditioned prediction the
            target goes (paper: 1; 2025 code: 2 with ``target_base="prompt"``, the same target).
        start_guidance: classifier-free guidance used to sample ``x_t`` (paper: 3).
        ddim_steps: DDIM schedule from which ``x_t``'s step is drawn (paper: 50).
        sample_from: ``"edited"`` (paper: the model being trained) or ``"frozen"``
            (2025 code: the original model) generates ``x_t``.
        target_base: ``"anchor"`` (paper: ``eps*("") - eta (eps*(c) - eps*(""))``) or
            ``"prompt"`` (2025 code: ``eps*(c) - eta (eps*(c) - eps*(""))``).
        parameter_rules: ``"2023"`` (CompVis code: esd-u keeps time embedding and output
            head frozen, trains norms) or ``"2025"`` (diffusers code: only Linear/Conv2d
            layers, time embedding and conv_in/out included, norms never).
        erase_from: erase the concepts from this prompt's images (2025 code's
            ``--erase_from``); ``None`` erases them from their own prompts.
        batch_size: images per iteration, each with its own concept and noise, sharing
            the DDIM step (paper: 1).
        latent_size: side of the training latents; ``None``: the model's native size
            (2023 code: 512 px, SD 1.4's native 64; 2025 code: 1024 px, i.e. 128).
        seed: seeds the one random stream (concepts, steps, noise) a run draws from.
        mixed_precision: ``"no"``, or ``"bf16"``/``"fp16"`` autocast around the UNet
            (weights and Adam state stay float32; fp16 adds loss scaling), or
            ``"bf16-pure"`` (2025 code): bf16 autocast with the trained weights and
            Adam state in bfloat16. A config setting, not a run option: it changes the
            trained weights.
        timestep_scheme: ``"aligned"`` (2025 code): ``x_t`` is scored at the timestep
            it was sampled to; ``"compvis-2023"`` (2023 code, behind the paper's
            figures): the first DDIM timestep is skipped and ``x_t`` is scored at a
            random DDPM step of a later bucket (see "Deviations" above). Needs
            ``refresh_every`` 1.
        refresh_every: ``K``. 1 (paper): every iteration samples its own ``x_t``.
            Above 1: iterations draw ``x_t`` from a bank of whole trajectories that is
            sampled anew every ``K`` iterations (see "The trajectory bank" above).
        bank_size: trajectories per bank, sampled together in one batch (only with
            ``refresh_every`` above 1).
    """

    variant: Variant = "esd-x"
    iterations: int = setting(1000, min=1)
    lr: float = setting(1e-5, above=0)
    negative_guidance: float = setting(1.0, min=0)
    start_guidance: float = setting(3.0, min=0)
    ddim_steps: int = setting(50, min=1)
    sample_from: Literal["edited", "frozen"] = "edited"
    target_base: Literal["anchor", "prompt"] = "anchor"
    parameter_rules: Literal["2023", "2025"] = "2023"
    erase_from: str | None = None
    batch_size: int = setting(1, min=1)
    latent_size: int | None = setting(None, min=1)
    seed: int = setting(0, **SEED_BOUNDS)
    mixed_precision: Literal["no", "bf16", "fp16", "bf16-pure"] = "no"
    timestep_scheme: Literal["aligned", "compvis-2023"] = "aligned"
    refresh_every: int = setting(1, min=1)
    bank_size: int = setting(8, min=1)

    def check(self) -> None:
        if self.erase_from is not None and not self.erase_from.strip():
            raise ErasureError("ESDConfig.erase_from is empty: give a prompt (e.g. 'a painting') or null")
        if self.timestep_scheme == "compvis-2023" and self.refresh_every != 1:
            raise ErasureError(
                "ESD timestep_scheme=compvis-2023 samples a fresh x_t per iteration, as the 2023 code does: "
                "set refresh_every=1 (or timestep_scheme=aligned)"
            )


# ---- the entry point -------------------------------------------------------------


def erase(pipe, concepts: list[Concept], config: ESDConfig, run: RunOptions = RunOptions()) -> Edit:
    """Fine-tune the chosen subset against negative guidance; ``pipe`` is left unchanged.

    Args:
        pipe: a Stable Diffusion 1.x, 2.x or SDXL pipeline with float32 UNet weights.
        concepts: the concepts to erase (one is drawn per batch element and iteration).
        config: ``ESDConfig``.
        run: checkpoint folder and interval, resume, overwrite, gradient checkpointing.

    Returns:
        An ``Edit`` of the trained parameters; ``extra`` records their names, the final
        loss and the loss history.
    """
    adapter = adapter_for(pipe)
    names = trainable_parameter_names(adapter.unet, set(adapter.cross_attention_modules()), config)
    params = dict(adapter.unet.named_parameters())
    original = {name: params[name].detach() for name in names}
    check_float32(original)
    checkpoint = Checkpoint.open(run, run_identity(concepts, config), original, "ESD", f"esd-{slug(concepts)}")
    # The subset trains on a copy swapped into the UNet; the frozen model swaps the originals back.
    trained = {name: value.to(trained_dtype(config, value.dtype), copy=True) for name, value in original.items()}
    training = trainable_parameters(adapter.unet, names, run.gradient_checkpointing)
    with trained_values_in(adapter.unet, trained), training as subset:
        prompts = Prompts.encode(adapter, concepts, config.erase_from)
        scheduler = adapter.ddim_scheduler(config.ddim_steps)
        state = TrainingState(
            tensors=dict(trained),  # and the trajectory bank, once there is one
            optimizer=torch.optim.Adam(list(subset.values()), lr=config.lr),
            generator=torch.Generator().manual_seed(config.seed),
            scaler=torch.amp.GradScaler(adapter.device.type, enabled=config.mixed_precision == "fp16"),
        )
        losses = run_steps(
            lambda _: training_step(adapter, original, prompts, scheduler, config, state),
            state, config.iterations, checkpoint, run.checkpoint_every, unit="iteration",
        )
    extra = {"parameters": names, "final_loss": losses[-1], "losses": losses}
    return Edit.of_unet(original, trained, extra)


@contextmanager
def trained_values_in(unet: torch.nn.Module, trained: dict[str, torch.Tensor]):
    """``swapped_parameters`` with the trained values themselves in the parameters, in
    their own dtype (bfloat16 under ``bf16-pure``), so that the optimiser steps them in
    place; the UNet's own tensors come back on exit.

    Args:
        unet: the pipeline's UNet.
        trained: the trained copy of the subset, by parameter name.
    """
    with swapped_parameters(unet, trained):
        params = dict(unet.named_parameters())
        for name, value in trained.items():
            params[name].data = value
        yield


def run_identity(concepts: list[Concept], config: ESDConfig) -> dict:
    """What a resumed run must share with its checkpoint: the concepts and every setting
    but ``iterations``, which only decides where the run stops."""
    settings = dataclasses.asdict(config)
    del settings["iterations"]
    return {"method": "esd", "concepts": [str(c) for c in concepts], **settings}


# ---- which parameters train ------------------------------------------------------


def trainable_parameter_names(unet: torch.nn.Module, cross_attention: set[str], config: ESDConfig) -> list[str]:
    """UNet parameter names of the variant's subset, in the UNet's order.

    Args:
        unet: the UNet.
        cross_attention: module names of its text cross-attention blocks (from the adapter).
        config: gives ``variant`` and ``parameter_rules``.
    """
    names = [
        name
        for name in candidate_parameters(unet, config.parameter_rules)
        if _selected(name, config.variant, config.parameter_rules, cross_attention)
    ]
    if not names:
        raise ErasureError(f"ESD variant {config.variant} selects no parameter of this UNet: pick another variant")
    return names


def candidate_parameters(unet: torch.nn.Module, rules: str) -> list[str]:
    """Every parameter (2023 code), or those of Linear and Conv2d layers (2025 code)."""
    if rules == "2023":
        return [name for name, _ in unet.named_parameters()]
    in_layers = {
        f"{module_name}.{param_name}"
        for module_name, module in unet.named_modules()
        if isinstance(module, TRAINED_LAYER_TYPES)
        for param_name, _ in module.named_parameters(recurse=False)
    }
    return [name for name, _ in unet.named_parameters() if name in in_layers]


def _selected(name: str, variant: str, rules: str, cross_attention: set[str]) -> bool:
    block = _cross_attention_block(name, cross_attention)
    if variant == "esd-all":
        return True
    if variant == "esd-x":
        return block is not None
    if variant == "esd-x-strict":
        return block is not None and name[len(block) + 1 :].startswith(("to_k.", "to_v."))
    # esd-u: outside cross-attention; the 2023 code also keeps embeddings and output head frozen.
    if block is not None:
        return False
    return rules == "2025" or name.split(".", 1)[0] not in EMBEDDING_MODULES + OUTPUT_MODULES


def _cross_attention_block(name: str, cross_attention: set[str]) -> str | None:
    """The cross-attention block a parameter belongs to, if any (by module-name prefix)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in cross_attention:
            return prefix
    return None


def trained_dtype(config: ESDConfig, dtype: torch.dtype) -> torch.dtype:
    """The weights' own ``dtype``, or bfloat16 for ``mixed_precision="bf16-pure"`` (the
    2025 code's training precision; Adam's state follows the weights).

    Args:
        config: gives ``mixed_precision``.
        dtype: the UNet weights' dtype.
    """
    return torch.bfloat16 if config.mixed_precision == "bf16-pure" else dtype


def check_float32(original: dict[str, torch.Tensor]) -> None:
    """Adam's updates (lr 1e-5) vanish in half precision: training needs float32 weights."""
    dtype = next(iter(original.values())).dtype
    if dtype != torch.float32:
        raise ErasureError(
            f"ESD trains float32 weights but this UNet is {str(dtype).replace('torch.', '')}: load the model with "
            "dtype=float32 (use mixed_precision=bf16 for speed on a GPU)"
        )


# ---- one iteration ---------------------------------------------------------------


@dataclass
class Prompts:
    """Encoded conditionings, one row per concept: the concept, its neutral anchor
    (``""`` or the concept's target), the prompt that is trained and sampled (the concept
    itself unless ``erase_from`` is set), and the empty prompt for guidance.
    ``anchors_empty``: no concept has a target, so every anchor is ``""``."""

    concept: PromptEmbeddings
    anchor: PromptEmbeddings
    trained: PromptEmbeddings
    empty: PromptEmbeddings
    anchors_empty: bool

    @classmethod
    def encode(cls, adapter: StableDiffusionAdapter, concepts: list[Concept], erase_from: str | None) -> "Prompts":
        texts = [c.text for c in concepts]
        anchors = ["" if c.target is None else c.target for c in concepts]
        trained = texts if erase_from is None else [erase_from] * len(concepts)
        return cls(
            adapter.encode(texts), adapter.encode(anchors), adapter.encode(trained), adapter.encode([""]),
            anchors_empty=not any(anchors),
        )


@contextmanager
def model_phase(adapter: StableDiffusionAdapter, config: ESDConfig, original: dict[str, torch.Tensor] | None):
    """The original model (``original`` swapped in) or, given ``None``, the edited one,
    under the configured autocast.

    Each phase is its own autocast region, entered after the swap and left before the
    swap back: autocast caches weight casts by tensor identity, so one region spanning
    a swap would reuse the other model's weights.
    """
    with swapped_parameters(adapter.unet, original) if original is not None else nullcontext(), autocast(adapter, config):
        yield


def autocast(adapter: StableDiffusionAdapter, config: ESDConfig):
    if config.mixed_precision == "no":
        return nullcontext()
    dtype = torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast(adapter.device.type, dtype=dtype)


def training_step(
    adapter: StableDiffusionAdapter,
    original: dict[str, torch.Tensor],
    prompts: Prompts,
    scheduler,
    config: ESDConfig,
    state: TrainingState,
) -> float:
    """One ESD iteration: get ``x_t`` (sampled, or drawn from the bank), build the
    negatively guided target with the frozen model (unless the bank holds it), and take
    one optimiser step towards it. Returns the loss; raises ``NonFiniteError``, before
    any step, on a NaN or infinite loss or gradient."""
    if config.refresh_every == 1:
        rows, timestep, x_t = fresh_latents(adapter, original, prompts, scheduler, config, state.generator)
        target = None
    else:
        draw = current_bank(adapter, original, prompts, scheduler, config, state).draw(state.generator, config.batch_size)
        rows, timestep, x_t, target = draw.rows, scheduler.timesteps[draw.step], draw.latents, draw.values
    if target is None:
        with torch.no_grad(), model_phase(adapter, config, original):
            target = negative_guidance_target(adapter, x_t, timestep, prompts, rows, config)

    state.optimizer.zero_grad(set_to_none=True)
    # The edited prediction cannot share a batch with the frozen ones: the weights differ.
    with model_phase(adapter, config, None):
        prediction = adapter.predict_noise(x_t, timestep, prompts.trained.select(rows))
    loss = esd_loss(prediction, target)
    value = finite_value(loss, lambda: non_finite_cause(prediction, target, config))
    state.scaler.scale(loss).backward()
    # fp16's loss scaler skips steps with overflowing gradients by itself.
    if not state.scaler.is_enabled():
        params = [p for group in state.optimizer.param_groups for p in group["params"]]
        check_finite_gradients(params, f"the trained weights diverged: lower lr (now {config.lr:g})")
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return value


def starting_noise(adapter: StableDiffusionAdapter, config: ESDConfig, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` latents of Gaussian noise at the training resolution, drawn on the CPU
    in float32 (float64 for a float64 model)."""
    channels, height, width = adapter.latent_shape
    if config.latent_size is not None:
        height = width = config.latent_size
    noise = torch.randn((count, channels, height, width), generator=generator)
    return noise.to(adapter.device, torch.promote_types(adapter.unet.dtype, torch.float32))


def fresh_latents(
    adapter: StableDiffusionAdapter,
    original: dict[str, torch.Tensor],
    prompts: Prompts,
    scheduler,
    config: ESDConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The paper's ``x_t``: a concept row per batch element, one DDIM step ``k`` for
    the batch, and ``k`` guided steps from new noise, to be scored at timestep
    ``timesteps[k]`` (or as ``timestep_scheme="compvis-2023"`` has it). Returns
    ``(rows, timestep, x_t)``."""
    rows = torch.randint(len(prompts.concept), (config.batch_size,), generator=generator)
    step = int(torch.randint(config.ddim_steps, (1,), generator=generator))
    if config.timestep_scheme == "compvis-2023":
        start, steps, timestep = compvis_2023_schedule(scheduler, step, config.ddim_steps, generator)
    else:
        start, steps, timestep = 0, step, scheduler.timesteps[step]
    noise = starting_noise(adapter, config, config.batch_size, generator)
    with torch.no_grad(), model_phase(adapter, config, original if config.sample_from == "frozen" else None):
        x_t = sample_until(
            adapter, scheduler, noise, steps, prompts.trained.select(rows), prompts.empty, config.start_guidance, start
        )
    return rows, timestep, x_t


def compvis_2023_schedule(scheduler, t_enc: int, ddim_steps: int, generator: torch.Generator):
    """How the 2023 code samples and scores for its draw ``t_enc``: its DDIM sampler
    starts at the second timestep (``t_start=-1`` drops the first) and stops after step
    index ``t_enc - 1`` counted from the end, so it runs ``min(n - t_enc, n - 1)`` steps;
    the latent is then scored at ``t_enc_ddpm``, uniform in the ``t_enc``-th of ``n``
    equal buckets of the training timesteps. Returns ``(start, steps, t_enc_ddpm)``.

    Args:
        scheduler: the DDIM scheduler with ``ddim_steps`` timesteps set.
        t_enc: the drawn DDIM index, ``0 <= t_enc < ddim_steps``.
        ddim_steps: ``n``.
        generator: draws ``t_enc_ddpm``.
    """
    train_steps = scheduler.config.num_train_timesteps
    low, high = round(t_enc / ddim_steps * train_steps), round((t_enc + 1) / ddim_steps * train_steps)
    t_enc_ddpm = torch.randint(low, high, (1,), generator=generator)[0]
    return 1, min(ddim_steps - t_enc, ddim_steps - 1), t_enc_ddpm.to(scheduler.timesteps.device)


def current_bank(
    adapter: StableDiffusionAdapter,
    original: dict[str, torch.Tensor],
    prompts: Prompts,
    scheduler,
    config: ESDConfig,
    state: TrainingState,
) -> TrajectoryBank:
    """The trajectory bank this iteration draws from: sampled anew every
    ``refresh_every`` iterations, otherwise the one in ``state.tensors`` (which a
    resumed run restored from its checkpoint)."""
    if state.step % config.refresh_every == 0:
        state.tensors.update(sample_bank(adapter, original, prompts, scheduler, config, state.generator).state(BANK))
    bank = TrajectoryBank.from_state(state.tensors, BANK, adapter.device)
    if bank is None:
        raise ErasureError("the checkpoint holds no trajectory bank to continue from: it is damaged; --overwrite starts again")
    state.tensors.update(bank.state(BANK))  # on the device from now on
    return bank


def sample_bank(
    adapter: StableDiffusionAdapter,
    original: dict[str, torch.Tensor],
    prompts: Prompts,
    scheduler,
    config: ESDConfig,
    generator: torch.Generator,
) -> TrajectoryBank:
    """``bank_size`` whole trajectories in one batch, each with its own concept row and
    noise, from the model ``sample_from`` names. Sampled from the frozen model, the bank
    also keeps the target at every latent: the predictions that continue the trajectory
    are the ones the target needs (one batched call gives both)."""
    rows = torch.randint(len(prompts.concept), (config.bank_size,), generator=generator)
    noise = starting_noise(adapter, config, config.bank_size, generator)
    frozen = config.sample_from == "frozen"
    with model_phase(adapter, config, original if frozen else None):
        if frozen:
            predict = frozen_predictions(adapter, prompts, rows, config)
        else:
            cond, uncond = prompts.trained.select(rows), prompts.empty.repeat(len(rows))
            predict = lambda x, t: (adapter.predict_noise(x, t, cond, uncond, config.start_guidance), None)  # noqa: E731
        return TrajectoryBank.sample(scheduler, noise, rows, predict, with_values=frozen)


def frozen_predictions(adapter: StableDiffusionAdapter, prompts: Prompts, rows: torch.Tensor, config: ESDConfig):
    """For a frozen-model bank: at each latent, one batched call of the frozen model on
    every conditioning the guided sampling step and the target need (anchor and
    concept, plus the trained prompt with ``erase_from`` and the empty prompt when an
    anchor is not ``""``). Returns ``predict(x, t) -> (guided prediction, target)``."""
    parts = {"anchor": prompts.anchor.select(rows), "concept": prompts.concept.select(rows)}
    if config.erase_from is not None:
        parts["trained"] = prompts.trained.select(rows)
    if not prompts.anchors_empty:
        parts["empty"] = prompts.empty.repeat(len(rows))
    conds = PromptEmbeddings.cat(list(parts.values()))

    def predict(latents: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = torch.cat([latents] * len(parts))
        out = dict(zip(parts, widened(adapter.predict_noise(batch, timestep, conds)).chunk(len(parts))))
        uncond, cond = out.get("empty", out["anchor"]), out.get("trained", out["concept"])
        guided = uncond + config.start_guidance * (cond - uncond)
        return guided, esd_target(out["anchor"], out["concept"], out.get("trained"), config)

    return predict


def non_finite_cause(prediction: torch.Tensor, target: torch.Tensor, config: ESDConfig) -> str:
    """Which settings to change when the loss is not finite: a target that is not finite,
    or larger than the prediction, comes from the guidance (or the base model); a
    prediction that is, from the trained weights."""
    guidance = (
        f"the target is {'not finite' if not target.isfinite().all() else 'too large'}: lower negative_guidance "
        f"(now {config.negative_guidance:g}) or start_guidance (now {config.start_guidance:g}), or check the base model"
    )
    weights = f"the trained weights diverged: lower lr (now {config.lr:g})"
    if config.mixed_precision == "fp16":
        weights += ", or use mixed_precision=bf16 or no"
    if not target.isfinite().all():
        return guidance
    if not prediction.isfinite().all():
        return weights
    return guidance if target.abs().max() >= prediction.abs().max() else weights


def esd_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(widened(prediction), widened(target))


def negative_guidance_target(
    adapter: StableDiffusionAdapter,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    prompts: Prompts,
    rows: torch.Tensor,
    config: ESDConfig,
) -> torch.Tensor:
    """The target at ``x_t`` from the frozen model's predictions, in one batched call
    (see ``esd_target``)."""
    conds = [prompts.anchor.select(rows), prompts.concept.select(rows)]
    if config.erase_from is not None:
        conds.append(prompts.trained.select(rows))
    both = PromptEmbeddings.cat(conds)
    predictions = widened(adapter.predict_noise(torch.cat([x_t] * len(conds)), timestep, both)).chunk(len(conds))
    return esd_target(predictions[0], predictions[1], predictions[2] if len(conds) == 3 else None, config)


def esd_target(
    anchor: torch.Tensor, concept: torch.Tensor, trained: torch.Tensor | None, config: ESDConfig
) -> torch.Tensor:
    """``base - eta (eps*(c) - eps*(anchor))``, where ``base`` is ``eps*(anchor)``
    (paper), or the trained prompt's own prediction (2025 code, and always with
    ``erase_from``).

    Args:
        anchor: the frozen prediction for the anchor (``""`` or the concept's target).
        concept: the frozen prediction for the concept.
        trained: the frozen prediction for ``erase_from``'s prompt, or ``None`` without it.
        config: gives ``target_base`` and ``negative_guidance``.
    """
    if trained is not None:
        base = trained
    else:
        base = concept if config.target_base == "prompt" else anchor
    return base - config.negative_guidance * (concept - anchor)
