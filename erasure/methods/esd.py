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
  holds those settings (200 iterations, lr 5e-5, eta 2, bf16 autocast);
- ``erase_from``: erase ``c`` from another prompt ``a`` (e.g. a style from "a
  painting"): ``x_t`` is sampled from ``a`` and ``eps_edited(a) -> eps*(a) - eta
  (eps*(c) - eps*(""))``.

Extension: a concept written ``"A->B"`` uses ``B`` instead of the empty prompt as the
neutral prediction, ``eps*(B) - eta (eps*(A) - eps*(B))``: prompts of ``A`` are guided
towards ``B``.

Deviations from the authors' code, none in the objective:
- ``x_t`` is scored at the DDIM timestep it was sampled to (as the 2025 code does);
  the 2023 code scored it at a random DDPM step of the 1/50 bucket its loop counter
  pointed to, two to three DDIM steps (40 to 60 DDPM steps) noisier than the latent.
- One UNet in memory instead of two: the frozen predictions come from the same UNet
  with the original values of the trained subset swapped in (pointer swaps, no copies).
- Several concepts in one run are drawn at random per batch element, as in the 2023
  code's ``--seperator`` option.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..adapters import PromptEmbeddings, StableDiffusionAdapter, adapter_for
from ..atomic import atomic_write
from ..concepts import Concept, slug
from ..errors import ErasureError
from ..weights import EditedWeights, fingerprint

logger = logging.getLogger(__name__)

Variant = Literal["esd-x", "esd-u", "esd-x-strict", "esd-all"]
VARIANTS = ("esd-x", "esd-u", "esd-x-strict", "esd-all")

# Top-level modules of diffusers' UNet2DConditionModel, the same in every family: the
# timestep (and SDXL's added-conditioning) embeddings and the output head, which the
# 2023 code's esd-u leaves frozen.
EMBEDDING_MODULES = ("time_embedding", "add_embedding", "class_embedding")
OUTPUT_MODULES = ("conv_norm_out", "conv_out")
# The layer types the 2025 code trains (norms never).
TRAINED_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d)

CHECKPOINT_INDEX = "esd-checkpoint.json"
CHECKPOINT_FORMAT = "erasure-esd-checkpoint"
# Settings that may change between a run and its resumption: they do not change what
# is computed (iterations only decides where to stop; the learning rate has no schedule).
RESUMABLE_CHANGES = ("iterations", "resume", "checkpoint_every", "checkpoint_dir", "gradient_checkpointing")


@dataclass
class ESDConfig:
    """ESD settings; defaults are the paper's (and its 2023 code, ``train-esd.py``).

    Attributes:
        variant: which parameters train: ``esd-x`` (cross-attention; artists, styles),
            ``esd-u`` (everything but cross-attention; nudity, objects),
            ``esd-x-strict`` (cross-attention keys and values), ``esd-all``.
        iterations: Adam steps (paper: 1000; 2025 code: 200).
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
        latent_size: side of the training latents; ``None``: the model's native size.
        seed: seeds the one random stream (concepts, steps, noise) a run draws from.
        mixed_precision: ``"no"``, or ``"bf16"``/``"fp16"`` autocast around the UNet
            (weights and Adam state stay float32; fp16 adds loss scaling).
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        checkpoint_every: write a resumable checkpoint every N iterations (0: only on
            Ctrl-C, on a non-finite loss and, if N > 0, at the end).
        checkpoint_dir: where checkpoints go; ``None``: ``esd-checkpoints/<concepts>-<variant>``.
        resume: continue from the checkpoint in ``checkpoint_dir`` (same settings required).
    """

    variant: Variant = "esd-x"
    iterations: int = 1000
    lr: float = 1e-5
    negative_guidance: float = 1.0
    start_guidance: float = 3.0
    ddim_steps: int = 50
    sample_from: Literal["edited", "frozen"] = "edited"
    target_base: Literal["anchor", "prompt"] = "anchor"
    parameter_rules: Literal["2023", "2025"] = "2023"
    erase_from: str | None = None
    batch_size: int = 1
    latent_size: int | None = None
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0
    checkpoint_dir: str | None = None
    resume: bool = False


# ---- the entry point -------------------------------------------------------------


def erase(pipe, concepts: list[Concept], config: ESDConfig) -> EditedWeights:
    """Fine-tune the chosen subset against negative guidance; ``pipe`` is left unchanged.

    Args:
        pipe: a Stable Diffusion 1.x, 2.x or SDXL pipeline with float32 UNet weights.
        concepts: the concepts to erase (one is drawn per batch element and iteration).
        config: ``ESDConfig``.

    Returns:
        ``EditedWeights`` of the trained parameters; ``extra`` records their names, the
        final loss and the loss history.
    """
    check_config(config)
    adapter = adapter_for(pipe)
    names = trainable_parameter_names(adapter.unet, set(adapter.cross_attention_modules()), config)
    check_trainable(adapter.unet, names)
    subset = TrainedSubset(adapter.unet, names)
    checkpoints = Checkpoints(checkpoint_folder(concepts, config), concepts, config, subset)
    try:
        with training_mode(adapter.unet, names, config.gradient_checkpointing):
            losses = train(adapter, subset, concepts, config, checkpoints)
    finally:
        trained = subset.take_trained()
    return EditedWeights.from_edit(
        subset.original,
        trained,
        method="esd",
        concepts=[str(c) for c in concepts],
        config=dataclasses.asdict(config),
        base_model=str(pipe.name_or_path),
        extra={"parameters": names, "final_loss": losses[-1] if losses else None, "losses": losses},
    )


def check_config(config: ESDConfig) -> None:
    if config.variant not in VARIANTS:
        raise ErasureError(f"unknown ESD variant {config.variant!r}: use one of {', '.join(VARIANTS)}")
    for name in ("iterations", "ddim_steps", "batch_size"):
        if getattr(config, name) < 1:
            raise ErasureError(f"ESDConfig.{name} must be at least 1, got {getattr(config, name)}")
    if config.lr <= 0:
        raise ErasureError(f"ESDConfig.lr must be positive, got {config.lr}")
    if config.checkpoint_every < 0:
        raise ErasureError(f"ESDConfig.checkpoint_every must be 0 (off) or positive, got {config.checkpoint_every}")
    if config.latent_size is not None and config.latent_size < 1:
        raise ErasureError(f"ESDConfig.latent_size must be positive or null, got {config.latent_size}")
    if config.erase_from is not None and not config.erase_from.strip():
        raise ErasureError("ESDConfig.erase_from is empty: give a prompt (e.g. 'a painting') or null")


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


def check_trainable(unet: torch.nn.Module, names: list[str]) -> None:
    params = dict(unet.named_parameters())
    dtype = params[names[0]].dtype
    if dtype != torch.float32:
        raise ErasureError(
            f"ESD trains float32 weights but this UNet is {str(dtype).replace('torch.', '')}: load the model with "
            "dtype=float32 (use mixed_precision=bf16 for speed on a GPU)"
        )


class TrainedSubset:
    """The trained parameters and a copy of their original values.

    The frozen model is the same UNet with the originals swapped in: swapping exchanges
    tensor pointers (``param.data``), so it copies nothing and memory stays at one UNet
    plus one copy of the subset.
    """

    def __init__(self, unet: torch.nn.Module, names: list[str]):
        params = dict(unet.named_parameters())
        self.params = {name: params[name] for name in names}
        self.original = {name: p.detach().clone() for name, p in self.params.items()}

    @contextmanager
    def frozen(self):
        """Within the block the UNet is the original model."""
        edited = {}
        for name, param in self.params.items():
            edited[name], param.data = param.data, self.original[name]
        try:
            yield
        finally:
            for name, param in self.params.items():
                param.data = edited[name]

    @torch.no_grad()
    def load(self, values: dict[str, torch.Tensor]) -> None:
        for name, param in self.params.items():
            param.copy_(values[name])

    def take_trained(self) -> dict[str, torch.Tensor]:
        """Put the original values back (the UNet is unchanged again) and return the trained ones."""
        trained = {}
        for name, param in self.params.items():
            trained[name], param.data = param.data, self.original[name]
            param.grad = None
        return trained


@contextmanager
def training_mode(unet: torch.nn.Module, names: list[str], gradient_checkpointing: bool):
    """Gradients for the subset only, optional gradient checkpointing; all restored after."""
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    was_checkpointing = unet.is_gradient_checkpointing
    chosen = set(names)
    for name, param in unet.named_parameters():
        param.requires_grad_(name in chosen)
    if gradient_checkpointing and not was_checkpointing:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if gradient_checkpointing and not was_checkpointing:
            unet.disable_gradient_checkpointing()
        for name, param in unet.named_parameters():
            param.requires_grad_(flags[name])


# ---- the training loop -------------------------------------------------------------


@dataclass
class Prompts:
    """Encoded conditionings, one row per concept: the concept, its neutral anchor
    (``""`` or the concept's target), the prompt that is trained and sampled (the concept
    itself unless ``erase_from`` is set), and the empty prompt for guidance."""

    concept: PromptEmbeddings
    anchor: PromptEmbeddings
    trained: PromptEmbeddings
    empty: PromptEmbeddings

    @classmethod
    def encode(cls, adapter: StableDiffusionAdapter, concepts: list[Concept], erase_from: str | None) -> "Prompts":
        texts = [c.text for c in concepts]
        anchors = ["" if c.target is None else c.target for c in concepts]
        trained = texts if erase_from is None else [erase_from] * len(concepts)
        return cls(adapter.encode(texts), adapter.encode(anchors), adapter.encode(trained), adapter.encode([""]))


def select_rows(embeddings: PromptEmbeddings, rows: torch.Tensor) -> PromptEmbeddings:
    pooled = None if embeddings.pooled is None else embeddings.pooled[rows]
    return PromptEmbeddings(embeddings.hidden[rows], embeddings.token_counts[rows], pooled)


def train(
    adapter: StableDiffusionAdapter, subset: TrainedSubset, concepts: list[Concept], config: ESDConfig, checkpoints
) -> list[float]:
    """Run (or continue) the ESD iterations; returns the loss of every iteration."""
    prompts = Prompts.encode(adapter, concepts, config.erase_from)
    scheduler = ddim_scheduler(adapter, config.ddim_steps)
    optimizer = torch.optim.Adam(list(subset.params.values()), lr=config.lr)
    scaler = torch.amp.GradScaler(adapter.device.type, enabled=config.mixed_precision == "fp16")
    generator = torch.Generator().manual_seed(config.seed)
    state = TrainingState(optimizer, scaler, generator, losses=[])
    if config.resume:
        checkpoints.load(state)
        if len(state.losses) > config.iterations:
            raise ErasureError(
                f"the checkpoint is at iteration {len(state.losses)}, past iterations={config.iterations}: "
                "ask for at least as many iterations"
            )
    progress = tqdm(total=config.iterations, initial=len(state.losses), desc="ESD", dynamic_ncols=True)
    with progress, deferred_interrupt() as interrupted:
        for iteration in range(len(state.losses), config.iterations):
            rng_before = generator.get_state()
            try:
                loss = training_step(adapter, subset, prompts, scheduler, config, state)
            except NonFiniteError as error:
                generator.set_state(rng_before)  # the checkpoint is the state before this iteration
                path = checkpoints.save(state)
                raise ErasureError(
                    f"ESD {error} at iteration {iteration + 1}, so training stopped; the last good state is in "
                    f"{path}: lower lr or use mixed_precision=no (or bf16 instead of fp16) and start again"
                ) from None
            state.losses.append(loss)
            progress.update()
            progress.set_postfix(loss=f"{loss:.4g}")
            done = iteration + 1
            if interrupted.is_set():
                path = checkpoints.save(state)
                logger.warning("interrupted after iteration %d; checkpoint saved to %s (resume with --resume)", done, path)
                raise KeyboardInterrupt
            if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.iterations):
                checkpoints.save(state)
    return state.losses


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the trained values themselves."""

    optimizer: torch.optim.Adam
    scaler: torch.amp.GradScaler
    generator: torch.Generator
    losses: list[float]


def ddim_scheduler(adapter: StableDiffusionAdapter, steps: int):
    """A DDIM schedule of the pipeline's own noise schedule (left untouched)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(adapter.pipe.scheduler.config)
    scheduler.set_timesteps(steps, device=adapter.device)
    return scheduler


@contextmanager
def model_phase(subset: TrainedSubset, adapter: StableDiffusionAdapter, config: ESDConfig, frozen: bool):
    """The original (``frozen``) or the edited UNet, under the configured autocast.

    Each phase is its own autocast region, entered after the swap and left before the
    swap back: autocast caches weight casts by tensor identity, which swapping
    ``param.data`` keeps, so one region spanning a swap would reuse the other model's
    weights.
    """
    with subset.frozen() if frozen else nullcontext(), autocast(adapter, config):
        yield


def autocast(adapter: StableDiffusionAdapter, config: ESDConfig):
    if config.mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if config.mixed_precision == "bf16" else torch.float16
    return torch.autocast(adapter.device.type, dtype=dtype)


def training_step(
    adapter: StableDiffusionAdapter,
    subset: TrainedSubset,
    prompts: Prompts,
    scheduler,
    config: ESDConfig,
    state: TrainingState,
) -> float:
    """One ESD iteration: sample ``x_t``, build the negatively guided target with the
    frozen model, and take one optimiser step towards it. Returns the loss; raises
    ``NonFiniteError``, before any step, on a NaN or infinite loss or gradient."""
    generator = state.generator
    rows = torch.randint(len(prompts.concept), (config.batch_size,), generator=generator)
    step = int(torch.randint(config.ddim_steps, (1,), generator=generator))
    channels, height, width = adapter.latent_shape
    if config.latent_size is not None:
        height = width = config.latent_size
    noise = torch.randn((config.batch_size, channels, height, width), generator=generator).to(adapter.device)
    trained_prompt = select_rows(prompts.trained, rows)
    timestep = scheduler.timesteps[step]

    with torch.no_grad():
        with model_phase(subset, adapter, config, frozen=config.sample_from == "frozen"):
            x_t = sample_until(adapter, scheduler, noise, step, trained_prompt, prompts.empty, config.start_guidance)
        with model_phase(subset, adapter, config, frozen=True):
            target = negative_guidance_target(adapter, x_t, timestep, prompts, rows, config)

    state.optimizer.zero_grad(set_to_none=True)
    with model_phase(subset, adapter, config, frozen=False):
        prediction = adapter.predict_noise(x_t, timestep, trained_prompt)
    loss = esd_loss(prediction, target)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteError(f"loss became {value}")
    state.scaler.scale(loss).backward()
    # fp16's loss scaler skips steps with overflowing gradients by itself.
    if not state.scaler.is_enabled() and not gradients_finite(subset):
        raise NonFiniteError("gradient became non-finite")
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return value


class NonFiniteError(Exception):
    """A NaN or infinite loss or gradient: no step was taken."""


def gradients_finite(subset: TrainedSubset) -> bool:
    grads = [p.grad for p in subset.params.values() if p.grad is not None]
    return bool(torch.stack([g.isfinite().all() for g in grads]).all()) if grads else True


def esd_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float())


def sample_until(
    adapter: StableDiffusionAdapter,
    scheduler,
    noise: torch.Tensor,
    steps: int,
    cond: PromptEmbeddings,
    empty: PromptEmbeddings,
    guidance: float,
) -> torch.Tensor:
    """``steps`` DDIM steps (eta 0) from ``noise`` with classifier-free guidance: the
    latent at noise level ``scheduler.timesteps[steps]``."""
    latents = noise * scheduler.init_noise_sigma
    uncond = empty.repeat(len(cond))
    for timestep in scheduler.timesteps[:steps]:
        model_input = scheduler.scale_model_input(latents, timestep)
        prediction = adapter.predict_noise(model_input, timestep, cond, uncond, guidance)
        latents = scheduler.step(prediction.float(), timestep, latents, eta=0.0).prev_sample
    return latents


def negative_guidance_target(
    adapter: StableDiffusionAdapter,
    x_t: torch.Tensor,
    timestep: torch.Tensor,
    prompts: Prompts,
    rows: torch.Tensor,
    config: ESDConfig,
) -> torch.Tensor:
    """``base - eta (eps*(c) - eps*(anchor))`` from the frozen model, in one batched call.

    ``base`` is ``eps*(anchor)`` (paper), or the trained prompt's own prediction
    (2025 code, and always with ``erase_from``).
    """
    conds = [select_rows(prompts.anchor, rows), select_rows(prompts.concept, rows)]
    separate_base = config.erase_from is not None
    if separate_base:
        conds.append(select_rows(prompts.trained, rows))
    both = PromptEmbeddings.cat(conds)
    predictions = adapter.predict_noise(torch.cat([x_t] * len(conds)), timestep, both).float().chunk(len(conds))
    anchor, concept = predictions[0], predictions[1]
    if separate_base:
        base = predictions[2]
    else:
        base = concept if config.target_base == "prompt" else anchor
    return base - config.negative_guidance * (concept - anchor)


@contextmanager
def deferred_interrupt():
    """Turn the first Ctrl-C into a flag, checked between iterations, so that the
    checkpoint written on interrupt is a consistent state; a second Ctrl-C interrupts at once."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_interrupt(signum, frame):
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        tqdm.write("ESD: finishing this iteration, then saving a checkpoint (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- checkpoints -------------------------------------------------------------------


def checkpoint_folder(concepts: list[Concept], config: ESDConfig) -> Path:
    if config.checkpoint_dir is not None:
        return Path(config.checkpoint_dir)
    return Path("esd-checkpoints") / f"{slug(concepts)}-{config.variant}"


class Checkpoints:
    """Resumable training state in one folder.

    ``esd-state-<iteration>.safetensors`` holds the trained values, Adam's moments and
    step counts, and the random generator's state; ``esd-checkpoint.json`` (written
    second, atomically) names the current state file and records the iteration, the
    config, the concepts, the parameter names, the loss history and the loss scaler.
    A crash at any moment leaves the index pointing at a complete state file.
    """

    def __init__(self, folder: Path, concepts: list[Concept], config: ESDConfig, subset: TrainedSubset):
        self.folder, self.config, self.subset = folder, config, subset
        self.concepts = [str(c) for c in concepts]
        self.names = list(subset.params)
        self._base_fingerprint = None

    @property
    def base_fingerprint(self) -> dict[str, list[float]]:
        if self._base_fingerprint is None:
            self._base_fingerprint = fingerprint(self.subset.original)
        return self._base_fingerprint

    def save(self, state: TrainingState) -> Path:
        iteration = len(state.losses)
        tensors = {f"param/{name}": p.detach().cpu().contiguous() for name, p in self.subset.params.items()}
        for name, param in self.subset.params.items():
            for key, value in state.optimizer.state.get(param, {}).items():
                tensors[f"adam/{name}/{key}"] = value.detach().cpu().contiguous()
        tensors["rng/generator"] = state.generator.get_state()
        state_file = f"esd-state-{iteration:07d}.safetensors"
        metadata = {"format": CHECKPOINT_FORMAT, "iteration": str(iteration)}
        atomic_write(self.folder / state_file, lambda tmp: save_file(tensors, tmp, metadata=metadata))
        index = {
            "format": CHECKPOINT_FORMAT,
            "iteration": iteration,
            "state_file": state_file,
            "config": dataclasses.asdict(self.config),
            "concepts": self.concepts,
            "parameters": self.names,
            "base_fingerprint": self.base_fingerprint,
            "losses": state.losses,
            "grad_scaler": state.scaler.state_dict(),
        }
        atomic_write(self.folder / CHECKPOINT_INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)))
        for old in self.folder.glob("esd-state-*.safetensors"):
            if old.name != state_file:
                old.unlink(missing_ok=True)
        return self.folder

    def load(self, state: TrainingState) -> None:
        """Restore the trained values and ``state`` from the folder, after checking it
        belongs to this run."""
        index = self._read_index()
        self._check_matches(index)
        try:
            tensors = load_file(str(self.folder / index["state_file"]))
        except (SafetensorError, OSError) as error:
            raise ErasureError(f"ESD checkpoint {self.folder} is unreadable ({error}): delete it and start again") from None
        self.subset.load({name: tensors[f"param/{name}"] for name in self.names})
        moments: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam/"):
                name, moment = key[len("adam/") :].rsplit("/", 1)
                moments.setdefault(name, {})[moment] = value
        optimizer_state = state.optimizer.state_dict()
        optimizer_state["state"] = {i: moments[name] for i, name in enumerate(self.names) if name in moments}
        state.optimizer.load_state_dict(optimizer_state)
        state.generator.set_state(tensors["rng/generator"])
        if index["grad_scaler"]:
            state.scaler.load_state_dict(index["grad_scaler"])
        state.losses[:] = [float(x) for x in index["losses"]]

    def _read_index(self) -> dict:
        path = self.folder / CHECKPOINT_INDEX
        if not path.is_file():
            raise ErasureError(f"no ESD checkpoint in {self.folder}: run once without --resume (or set checkpoint_dir)")
        try:
            index = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ErasureError(f"{path} is damaged ({error}): delete {self.folder} and start again") from None
        if index.get("format") != CHECKPOINT_FORMAT:
            raise ErasureError(f"{path} is not an ESD checkpoint")
        return index

    def _check_matches(self, index: dict) -> None:
        saved, current = index["config"], dataclasses.asdict(self.config)
        changed = [k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k]]
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise ErasureError(f"the checkpoint in {self.folder} was made with other settings ({diffs}): use the same ones")
        if index["concepts"] != self.concepts:
            raise ErasureError(
                f"the checkpoint in {self.folder} erases {index['concepts']}, not {self.concepts}: give the same concepts"
            )
        if index["parameters"] != self.names:
            raise ErasureError(f"the checkpoint in {self.folder} trains other parameters: it was made for another model")
        for name, expected in index["base_fingerprint"].items():
            actual = self.base_fingerprint[name]
            if not torch.allclose(torch.tensor(actual), torch.tensor(expected), rtol=1e-5, atol=1e-7):
                raise ErasureError(
                    f"the checkpoint in {self.folder} was made from another base model ({name} differs): load that model"
                )
