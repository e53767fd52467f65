"""AdvUnlearn: Defensive Unlearning with Adversarial Training for Robust Concept Erasure in
Diffusion Models (Zhang et al., NeurIPS 2024; OPTML-Group/AdvUnlearn).

A bi-level loop. The outer level is ESD's objective (``erasure.methods.esd``): prompted
with the concept ``c``, the edited model should predict what the frozen model predicts
under negative guidance away from ``c``,

    eps(x_t, t, T([delta; c]))  ->  eps*(x_t, t, "") - eta (eps*(x_t, t, c) - eps*(x_t, t, ""))

plus a utility-retaining regulariser on retain prompts ``r``,
``gamma * || eps(x_t', t, T(r)) - eps*(x_t', t, r) ||^2``. The inner level is an attack on
the current model: ``k`` free token vectors ``delta`` chosen to make the edited model
reproduce the frozen model's concept prediction,
``min_delta || eps(x_t, t, T([delta; c])) - eps*(x_t, t, c) ||^2``. Where they go
(``attack_type``): ``prefix`` puts them before the concept prompt, after the start token
(the authors' default ``prefix_k``; UnlearnDiffAtk's prefix attack with free vectors
instead of a distribution over tokens); ``replace`` puts them in place of the concept's
words (the authors' ``replace_k``; the place concept inversion's learned token takes);
``alternate`` switches between the two from one attack to the next. What the vectors
are scored on (``attack_objective``): ``prediction`` is the objective above, the
authors'; ``denoising`` is UnlearnDiffAtk's own and concept inversion's, reconstructing
the noise added to images of the concept,
``min_delta || eps - eps(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, T([delta; c])) ||^2``
(or the v-prediction target) at a uniform training timestep ``t``, ``x_0`` the end of a
frozen-model concept trajectory (not the authors'). The encoding is shared with
``erasure.attacks`` (``tokens.encode_with_vectors``). ``pgd``: Adam steps;
``fast``: the gradient replaced by its sign before each Adam step (the authors'
``fast_at``). The outer step then trains on the prompt with the adversarial vectors, so
the erasure must hold against them. The first ``warmup`` iterations train without the
attack. With ``attack_replay_every`` N, every N-th attack's vectors are kept for the rest
of the run, and each outer step also trains on one kept set, drawn at random, at a second
concept latent (not the authors': their outer step sees only the latest vectors).
With ``inversion_every`` N, every N-th iteration after the warm-up also runs concept
inversion's attack (``erasure.attacks.concept_inversion``) on the current model, once per
concept: one vector per token of the concept's words, in their place, starting from the
words' own vectors, trained by AdamW (weight decay 1e-2, that attack's) to reconstruct the
noise of frozen-model images of that concept; each outer step then also trains on one
kept inversion at a third concept latent, the inversion of that latent's own concept (not
the authors': the adversary the toolkit evaluates with, whose long optimisation from the
concept's word the short inner attacks do not reach).

What trains (``module``): the text encoder (default, the paper's finding: every encoder
layer and the final layer norm, not the token and position embeddings; each text
encoder of SDXL; ``encoder_layers`` narrows it to some layers, the authors'
``text_encoder_layer0``, ``text_encoder_layer01``, ...), the UNet's cross-attention
blocks (``unet-xattn``, the authors' ``xattn``, ESD's ``esd-x`` subset), or the UNet outside
them (``unet-noxattn``, the authors' ``noxattn``, ESD's ``esd-u`` subset).

Two stages (``second_stage``; not the authors', who train one module): a second AdvUnlearn
run, also from the base model, trains another module, and both runs' tensors go into one
weights file. With the text encoder first and the UNet outside cross-attention second, the
encoder keeps the concept's prompts away from it and the UNet stops drawing it from the
conditionings an attacker finds instead (STEREO, Srivatsan et al., CVPR 2025, adds a UNet
stage to an adversarially trained erasure for the same reason). Each stage is the
one-stage run of its settings, bit for bit; docs/advunlearn-mini-sd.md has the measurements.

Sources (``OPTML-Group/AdvUnlearn@9d23124``, ``train-scripts/``): ``AdvUnlearn.py``
(loop lines 72-206, argparse defaults lines 226-261), ``utils/attack_util.py`` (the
inner attack, ``soft_prompt_attack`` lines 126-222; where its vectors go,
``construct_embd`` lines 232-271), ``utils/get_loss.py``
(``get_train_loss_retain`` lines 270-366), ``utils/util.py`` (``text_encoder_full``
lines 36-67, ``text_encoder_layer0`` and the other layer choices after it; the ``x_t``
sampler lines 500-526). Defaults are argparse's, except where
the README's training commands set a value (``attack_init random``, retain ``reg`` with
weight 0.3 on the COCO-object prompts): the README's.

Speed: in text-encoder mode every ``x_t`` the authors train and attack on is sampled by
guided DDIM from the frozen UNet with the frozen text encoder's conditioning, so it does
not depend on training. A bank of base-model trajectories, built once with every
intermediate latent and the frozen model's conditional and unconditional predictions
at each, is therefore the same distribution; each draw picks a trajectory and a step.
The authors sample a fresh ``x_t`` (26.5 guided UNet calls on average) for each of the
30 attack steps and for the outer step: 97% of their UNet sample-forwards. Here every
frozen prediction comes from the bank and an iteration runs only the gradient passes.

Deviations (none in the objectives, unless ``attack_objective`` is ``denoising`` or
``attack_replay_every``, ``inversion_every`` or ``retain_embedding_weight`` is set):
- ``x_t`` comes from a finite bank (``bank_size`` concept trajectories, one per retain
  prompt) reused over iterations. In the UNet modes the authors sample ``x_t`` from
  the UNet being trained; the bank holds the frozen UNet's (as ESD's 2025 code's
  ``sample_from="frozen"``).
- ``x_t`` after ``k`` DDIM steps is scored at ``timesteps[k]``, as ``esd.py`` documents;
  the authors score it at a random DDPM step of a 1/50 bucket.
- the attack's gradient is zeroed every step (the authors' loop accumulates it over
  the 30 steps) and reaches only ``delta`` (the authors' also fills the UNet's).
- retain prompts are drawn at random per iteration (without replacement within one
  batch), the authors' draw without replacement across iterations until the set is
  used up; the retain set here is ``retain_prompts`` (the authors' 243 COCO-object
  prompts are not shipped), optionally with the empty prompt, which the trained encoder
  also encodes as the guidance's negative, and without prompts naming an erased
  concept's other names (``concept_synonyms``): on mini-sd a retain set with "box" and
  "wedge" captions held squares and triangles against their erasure.
- concept prompts can be templated (``concept_templates``; the authors train on the
  bare word): on the bundled mini-sd the bare word does not generalise to "a red circle".
- ``replace`` puts the vectors where the concept's words are in a templated prompt; the
  authors' ``replace_k`` replaces the whole prompt (their bare concept word, so the two
  agree on the ``{}`` template) and fills the replaced words' places with end tokens,
  where here the rest of the prompt closes up behind the vectors.
- ``attack_replay_every`` and ``inversion_every`` (off by default) add the kept vectors'
  terms to the outer loss, each with the weight of the latest vectors' term (1).
- several concepts (the authors erase one): the concept prompts are every template with
  every concept, concepts interleaved (``concept_prompts``), so that the bank, which takes
  the prompts in turn, holds every concept's trajectories (``bank_size`` at least the
  number of concepts); one attack's vectors serve every concept's prompts.
- ``retain_embedding_weight`` (off by default) adds a second utility term in the text
  encoder's output space, ``lambda * || T(r) - T*(r) ||^2`` over the batch's retain prompts
  (every token position, and SDXL's pooled vector), ``T*`` the frozen encoder. The authors
  guard utility through the UNet's prediction alone; on mini-sd, with their term at weight
  10, retained prompts' encodings drifted by 10-14% of their mean square (erased ones by
  27-34%), and ``lambda`` 0.3 cut that to 2-2.5% (erased: 18%).
- concepts mapped to a target (``"A->B"``) are refused: AdvUnlearn erases towards ``""``.
- tokens reach the encoder through a hook on its token table (``tokens``), not
  ``inputs_embeds``; the prompt's length comes from its tokens, not its word count.
"""

from __future__ import annotations

import dataclasses
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..adapters import PromptEmbeddings, StableDiffusionAdapter, adapter_for
from ..attacks.tokens import SLOT, candidate_ids, encode_with_vectors
from ..concepts import Concept, slug
from ..config import SEED_BOUNDS, ConfigValueError, MethodConfig, build_config, setting
from ..edit import Edit
from ..errors import ErasureError
from ..loading import model_folder
from ..trajectories import StepPredictions, TrajectoryBank, ddim_step, widened
from ..training import (
    CHECKPOINT_INDEX,
    Checkpoint,
    RunOptions,
    TrainingState,
    check_finite_gradients,
    finite_value,
    run_steps,
    swapped_parameters,
    trainable_parameters,
)
from . import esd
from .mace import MACEConfig, general_captions

BANK_CHUNK = 64  # trajectories sampled per batch while building a bank (memory only)
# The UNet modes as ESD's variants: the authors' ``xattn`` and ``noxattn`` select the same
# parameters as ESD's (both names come from ESD's 2023 code).
UNET_MODULES = {"unet-xattn": "esd-x", "unet-noxattn": "esd-u"}
CONDITIONAL, UNCONDITIONAL = 0, 1  # where a bank's values hold the frozen predictions


@dataclass
class AdvUnlearnConfig(MethodConfig):
    """AdvUnlearn's settings; defaults are the authors' (sources in the module docstring).

    Attributes:
        module: what trains: ``"text_encoder"`` (authors' ``text_encoder_full``),
            ``"unet-xattn"`` (the UNet's cross-attention blocks, authors' ``xattn``) or
            ``"unet-noxattn"`` (the UNet outside them, authors' ``noxattn``).
        encoder_layers: with ``module: text_encoder``, train only these transformer
            layers (0 = the first), their attention, MLP and layer norms, and leave the
            final layer norm frozen: the authors' ``text_encoder_layer0``,
            ``text_encoder_layer01``, ..., ``text_encoder_layer0_11`` (``[0, 11]``) with
            ``--norm_layer`` off (``utils/util.py``, ``param_choices``). ``None``: every
            layer and the final layer norm (``text_encoder_full``, the default).
        iterations: outer Adam steps (authors: 1000). A resumed run may ask for more.
        warmup: first iterations without the attack (authors: 200).
        lr: outer Adam learning rate (authors: 1e-5).
        negative_guidance: ESD's ``eta`` (authors: 1).
        start_guidance: guidance of the DDIM runs ``x_t`` is sampled from (authors: 3).
        ddim_steps: their schedule (authors: 50).
        concept_templates: concept prompts, ``{}`` = the concept (authors: the bare word).
        attack: ``"pgd"`` (Adam steps) or ``"fast"`` (sign of the gradient, then Adam;
            the authors' ``fast_at``).
        attack_steps: inner steps per attack (authors: 30, also for ``fast_at``).
        attack_lr: the attack's Adam learning rate (authors: 1e-3).
        attack_tokens: adversarial vectors ``k`` (authors: 1).
        attack_type: where the vectors go: ``"prefix"`` (before the prompt; authors'
            default ``prefix_k``, ``AdvUnlearn.py`` line 256), ``"replace"`` (in place of
            the concept's words; authors' ``replace_k``, ``utils/attack_util.py`` lines
            235-237) or ``"alternate"`` (prefix, then replace, attack after attack; not
            the authors').
        attack_init: ``"random"`` (each attack starts from a random vocabulary word's
            vector; authors' README) or ``"latest"`` (from the previous attack's result at
            the same placement; authors' argparse default).
        attack_objective: ``"prediction"`` (match the frozen model's concept prediction
            at a bank latent; the authors') or ``"denoising"`` (reconstruct the noise of
            a noised frozen-model concept image: UnlearnDiffAtk's and concept
            inversion's objective; not the authors').
        attack_every: attack every N iterations after the warm-up (authors: 1).
        attack_replay_every: keep every N-th attack's vectors for the rest of the run and
            train each outer step also on one kept set at random (the module docstring);
            0: off, the authors' (the latest vectors only).
        inversion_every: every N iterations after the warm-up, run concept inversion's attack
            on the current model and keep its vectors; each outer step then also trains on
            one kept set at random (the module docstring); 0: off, the authors'. The
            three settings below have no authors' value; their defaults are what was
            measured on mini-sd (docs/advunlearn-mini-sd.md).
        inversion_steps: AdamW steps of each inversion (concept inversion's mini-sd
            config: 400; its authors': 5,000).
        inversion_lr: their learning rate (concept inversion's scaled rate: 5e-3 x batch 4).
        inversion_batch: noised concept images per step (concept inversion's: 4).
        attack_vocabulary: words ``random`` starts from: ``"all"``, ``"trained"`` (the
            model's trained ids) or a list (``erasure.attacks.tokens.candidate_ids``).
        retain_prompts: ``"builtin"`` (COCO-style captions), ``"model"`` (the model
            folder's ``general_captions.txt``) or a text file, one prompt a line.
            Prompts naming a concept, a ``retain_exclude`` word or an erased concept's
            ``concept_synonyms`` are dropped.
        retain_exclude: more words whose prompts leave the retain set, whatever is erased.
        concept_synonyms: other words for a concept (``{circle: [disk, round]}``): when an
            erased concept names it ("circle", "red circle"), prompts with them leave the
            retain set too, so that the retain loss does not hold the concept under another
            name (not the authors': their retain prompts are COCO captions).
        retain_limit: use at most this many retain prompts, drawn by ``seed``; ``None``: all.
        retain_empty_prompt: add ``""`` to the retain set.
        retain_batch: retain prompts per iteration (authors: 5).
        retain_weight: ``gamma`` (authors' README: 0.3).
        retain_embedding_weight: ``lambda``, the weight of the retain prompts' encoder-output
            term (the module docstring; 0: off, the authors'). Text-encoder modes only.
        bank_size: concept trajectories in the ``x_t`` bank (no authors' value: they
            sample afresh each time).
        seed: seeds the bank's noise and the run's draws.
        mixed_precision: ``"no"`` or ``"bf16"`` autocast around the models (weights and
            Adam state stay float32).
        second_stage: settings of a second run from the base model, each overriding this
            config's, e.g. ``{module: unet-noxattn, lr: 2.0e-4}``; it must train another
            module, and its tensors join this run's in the same file (the module
            docstring). Empty: one run, the authors'.
    """

    module: Literal["text_encoder", "unet-xattn", "unet-noxattn"] = "text_encoder"
    encoder_layers: list[int] | None = setting(None, min=0)
    iterations: int = setting(1000, min=1)
    warmup: int = setting(200, min=0)
    lr: float = setting(1e-5, above=0)
    negative_guidance: float = setting(1.0, min=0)
    start_guidance: float = setting(3.0, min=0)
    ddim_steps: int = setting(50, min=1)
    concept_templates: list[str] = setting(default_factory=lambda: ["{}"])
    attack: Literal["pgd", "fast"] = "pgd"
    attack_steps: int = setting(30, min=1)
    attack_lr: float = setting(1e-3, above=0)
    attack_tokens: int = setting(1, min=1, max=70)
    attack_type: Literal["prefix", "replace", "alternate"] = "prefix"
    attack_init: Literal["random", "latest"] = "random"
    attack_objective: Literal["prediction", "denoising"] = "prediction"
    attack_every: int = setting(1, min=1)
    attack_replay_every: int = setting(0, min=0)
    inversion_every: int = setting(0, min=0)
    inversion_steps: int = setting(200, min=1)
    inversion_lr: float = setting(2e-2, above=0)
    inversion_batch: int = setting(4, min=1)
    attack_vocabulary: str | list[str] = "all"
    retain_prompts: str = "builtin"
    retain_exclude: list[str] = setting(default_factory=list)
    concept_synonyms: dict[str, list[str]] = setting(default_factory=dict)
    retain_limit: int | None = setting(None, min=1)
    retain_empty_prompt: bool = False
    retain_batch: int = setting(5, min=1)
    retain_weight: float = setting(0.3, min=0)
    retain_embedding_weight: float = setting(0.0, min=0)
    bank_size: int = setting(256, min=1)
    seed: int = setting(0, **SEED_BOUNDS)
    mixed_precision: Literal["no", "bf16"] = "no"
    second_stage: dict[str, Any] = setting(default_factory=dict)

    def check(self) -> None:
        bad = [t for t in self.concept_templates if t.count("{}") != 1]
        if not self.concept_templates or bad:
            raise ErasureError(f"AdvUnlearnConfig.concept_templates needs templates with one {{}} each, got {bad or '[]'}")
        if self.encoder_layers is not None and (self.module != "text_encoder" or not self.encoder_layers):
            raise ErasureError("AdvUnlearnConfig.encoder_layers lists text-encoder layers to train: give at least one "
                               "with module text_encoder, or leave it null (every layer)")
        if self.retain_embedding_weight and self.module != "text_encoder":
            raise ErasureError("AdvUnlearnConfig.retain_embedding_weight holds the trained text encoder's outputs: "
                               f"set it to 0 with module {self.module}, whose encoder stays frozen")
        stage = self.second_stage_config()
        if stage is not None:  # kept as the stage reads them: "2e-4" from the command line is 0.0002
            self.second_stage = {key: getattr(stage, key) for key in self.second_stage}

    def second_stage_config(self) -> "AdvUnlearnConfig | None":
        """The second run's config: this one with ``second_stage``'s settings; ``None`` without one."""
        if not self.second_stage:
            return None
        if "second_stage" in self.second_stage:
            raise ErasureError("AdvUnlearnConfig.second_stage cannot have a second_stage of its own: two stages at most")
        settings = {key: value for key, value in dataclasses.asdict(self).items() if key != "second_stage"}
        unknown = sorted(set(self.second_stage) - set(settings))
        if unknown:
            raise ErasureError(f"AdvUnlearnConfig.second_stage: unknown key {unknown[0]!r}: it takes AdvUnlearnConfig's "
                               "own keys, e.g. {module: unet-noxattn, lr: 2.0e-4}")
        try:
            stage = build_config(AdvUnlearnConfig, settings, self.second_stage)
        except ConfigValueError as error:
            raise error.within(type(self).__name__, "second_stage") from None
        except ErasureError as error:
            raise ErasureError(f"AdvUnlearnConfig.second_stage takes this config's other settings: {error} "
                               "(override it in second_stage)") from None
        if stage.module == self.module:
            raise ErasureError(f"AdvUnlearnConfig.second_stage trains {stage.module}, as the first stage does: give it "
                               "another module, e.g. second_stage: {module: unet-noxattn}")
        return stage


# ---- the entry point -------------------------------------------------------------


def erase(pipe, concepts: list[Concept], config: AdvUnlearnConfig, run: RunOptions = RunOptions()) -> Edit:
    """Train the chosen module adversarially, then the ``second_stage``'s if there is one;
    ``pipe`` is left unchanged.

    Args:
        pipe: a Stable Diffusion 1.x, 2.x or SDXL pipeline with float32 weights.
        concepts: the concepts to erase (each prompt drawn from all of theirs).
        config: ``AdvUnlearnConfig``.
        run: checkpoint folder and interval, resume, overwrite, gradient checkpointing.

    Returns:
        An ``Edit`` keyed by component (``text_encoder``[, ``text_encoder_2``] and/or
        ``unet``); ``extra`` records the trained names, losses, the bank's size and the
        seconds spent building the bank, attacking and in the outer steps (the second
        stage's under ``second_stage``).
    """
    mapped = [str(c) for c in concepts if c.target is not None]
    if mapped:
        raise ErasureError(f"AdvUnlearn erases towards the empty prompt; {mapped[0]!r} maps to a target: "
                           "give the concept alone")
    if config.bank_size < len(concepts):
        raise ErasureError(f"AdvUnlearnConfig.bank_size {config.bank_size} is smaller than the {len(concepts)} concepts: "
                           f"set it to at least {len(concepts)}, so that every concept has a trajectory to train on")
    second = config.second_stage_config()
    if second is None:
        return train(pipe, concepts, config, run)[0]
    # The first stage's end is checkpointed, so that a run stopped in the second resumes
    # there; that checkpoint goes again at the end unless checkpoints were asked for.
    first, checkpoint = train(pipe, concepts, config, run, checkpoint_at_end=True)
    folder = checkpoint.folder / "second-stage"
    resume = run.resume and (folder / CHECKPOINT_INDEX).is_file()
    edit = joined(first, train(pipe, concepts, second, dataclasses.replace(run, checkpoint_dir=folder, resume=resume))[0])
    if not (run.checkpoint_every or run.resume):
        checkpoint.delete()
    return edit


def joined(first: Edit, second: Edit) -> Edit:
    """One ``Edit`` of both stages' tensors (their parameters are disjoint: other modules)."""
    new, original = {}, {}
    for stage in (first, second):
        for component in stage.new:
            new.setdefault(component, {}).update(stage.new[component])
            original.setdefault(component, {}).update(stage.original[component])
    parameters = first.extra["parameters"] + second.extra["parameters"]
    return Edit(new, original, {**first.extra, "parameters": parameters, "second_stage": second.extra})


def train(pipe, concepts: list[Concept], config: AdvUnlearnConfig, run: RunOptions,
          checkpoint_at_end: bool = False) -> tuple[Edit, Checkpoint]:
    """One AdvUnlearn run from the base model (``erase``'s arguments; the first stage
    alone); ``checkpoint_at_end``: save the final state. Returns the edit and the run's
    checkpoint."""
    adapter = adapter_for(pipe)
    trained_modules = trained_parameter_names(adapter, config.module, config.encoder_layers)
    original = {f"{component}.{name}": module.get_parameter(name).detach()
                for component, (module, names) in trained_modules.items() for name in names}
    esd.check_float32(original)
    checkpoint = Checkpoint.open(run, run_identity(concepts, config), original, f"AdvUnlearn ({config.module})",
                                 f"advunlearn-{slug(concepts)}")
    prompts = concept_prompts(concepts, config.concept_templates)
    retain = retain_prompts(concepts, config, str(pipe.name_or_path))

    started = time.perf_counter()
    scheduler = adapter.ddim_scheduler(config.ddim_steps)
    concept_bank, retain_bank = sample_banks(adapter, scheduler, prompts, retain, config)
    retain_frozen = None
    if config.retain_embedding_weight:
        with torch.no_grad(), esd.autocast(adapter, config):  # before the trained tensors are swapped in
            retain_frozen = adapter.encode_ids(adapter.tokenize(retain))
    bank_seconds = time.perf_counter() - started

    trained = {name: value.clone() for name, value in original.items()}
    candidates, vocabulary = candidate_ids(adapter, config.attack_vocabulary, model_folder(str(pipe.name_or_path)))
    generator = torch.Generator().manual_seed(config.seed + 1)
    # The latest vectors per placement: ``alternate`` with ``latest`` continues each from its own.
    placements = ("prefix", "replace") if config.attack_type == "alternate" else (config.attack_type,)
    delta = {placement: random_prefix(adapter, candidates, config.attack_tokens, generator) for placement in placements}
    with ExitStack() as stack:
        subsets = {}
        for component, module in components(adapter).items():
            names = trained_modules.get(component, (module, []))[1]
            values = {name: trained[f"{component}.{name}"] for name in names}
            stack.enter_context(swapped_parameters(module, values))
            # Frozen modules get requires_grad False too: no wasted weight gradients.
            subsets[component] = stack.enter_context(trainable_parameters(module, names, run.gradient_checkpointing))
        params = [p for subset in subsets.values() for p in subset.values()]
        state = TrainingState(
            tensors={**trained, **{f"attack/{p}/{i}": d for p, vectors in delta.items() for i, d in enumerate(vectors)}},
            optimizer=torch.optim.Adam(params, lr=config.lr),
            generator=generator,
            extra={"seconds": {"inner_attack": 0.0, "inversion": 0.0, "outer": 0.0}, "attack_losses": [],
                   "inversion_losses": []},
        )
        concept = ([c.text for c in concepts], prompts, adversarial_prompts(concepts, config.concept_templates),
                   concept_bank)
        loop = Loop(adapter, scheduler, concept, (retain, retain_bank, retain_frozen), candidates, delta, config, state)
        losses = run_steps(loop.step, state, config.iterations, checkpoint, run.checkpoint_every, unit="iteration")
        if checkpoint_at_end:
            checkpoint.save(state)
    seconds = {"bank": round(bank_seconds, 3), **{k: round(v, 3) for k, v in state.extra["seconds"].items()}}
    extra = {
        "final_loss": losses[-1], "losses": losses, "seconds": seconds, "attack_losses": state.extra["attack_losses"],
        "bank": {"concept_trajectories": len(concept_bank), "retain_trajectories": len(retain_bank),
                 "steps": concept_bank.steps},
        "attack_vocabulary": vocabulary, "concept_prompts": prompts, "retain_prompts": len(retain),
        "kept_attack_sets": {placement: len(loop.kept_vectors(placement)) for placement in placements},
        "kept_inversions": len(loop.kept_vectors("inversion")), "inversion_losses": state.extra["inversion_losses"],
    }
    return edit_of(original, trained, extra), checkpoint


def sample_banks(adapter: StableDiffusionAdapter, scheduler, concept_prompts: list[str], retain: list[str],
                 config: AdvUnlearnConfig) -> tuple[TrajectoryBank, TrajectoryBank]:
    """The frozen model's concept trajectories (``bank_size``, with the ``""`` predictions
    ESD's target needs) and one trajectory per retain prompt, noise drawn from ``seed``."""
    generator = torch.Generator().manual_seed(config.seed)
    with torch.no_grad(), esd.autocast(adapter, config):
        concept = frozen_bank(adapter, scheduler, concept_prompts, config.bank_size, config.start_guidance,
                              generator, keep_unconditional=True)
        retained = frozen_bank(adapter, scheduler, retain, len(retain), config.start_guidance, generator,
                               keep_unconditional=False)
    return concept, retained


def edit_of(original: dict[str, torch.Tensor], trained: dict[str, torch.Tensor], extra: dict) -> Edit:
    """The ``Edit`` of the tensors that changed (``component.name`` keys), by component.

    Tensors no gradient reached stay out: SDXL's first encoder gives the UNet its
    penultimate layer, so its last layer and final norm never train.
    """
    changed = [name for name in original if not torch.equal(trained[name], original[name])]
    new: dict[str, dict[str, torch.Tensor]] = {}
    old: dict[str, dict[str, torch.Tensor]] = {}
    for name in changed:
        component, parameter = name.split(".", 1)
        new.setdefault(component, {})[parameter] = trained[name]
        old.setdefault(component, {})[parameter] = original[name]
    return Edit(new, old, {"parameters": changed, **extra})


def run_identity(concepts: list[Concept], config: AdvUnlearnConfig) -> dict:
    """What a resumed run must share with its checkpoint: everything but ``iterations``
    and ``second_stage``."""
    settings = dataclasses.asdict(config)
    # A stage's run does not depend on the other stage's settings (and one-stage
    # checkpoints from before two stages existed still resume).
    del settings["iterations"], settings["second_stage"]
    # Several concepts' prompts were once ordered concept by concept: such a checkpoint's
    # bank rows mean other prompts, so its identity differs.
    order = {"prompt_order": "interleaved"} if len(concepts) > 1 else {}
    return {"method": "advunlearn", "concepts": [str(c) for c in concepts], **settings, **order}


# ---- what trains, and on what --------------------------------------------------------


def components(adapter: StableDiffusionAdapter) -> dict[str, torch.nn.Module]:
    """The pipeline's UNet and text encoders by component name."""
    return {"unet": adapter.unet, **adapter.text_encoders()}


def trained_parameter_names(adapter: StableDiffusionAdapter, module: str,
                            encoder_layers: list[int] | None = None) -> dict[str, tuple[torch.nn.Module, list[str]]]:
    """Per trained component, the module and its trained parameter names.

    Text encoder: every parameter but the token and position tables (the authors'
    ``text_encoder_full``), whatever transformers' naming; with ``encoder_layers``, only
    the parameters of those transformer layers. UNet: ESD's subset of the same reach
    (``UNET_MODULES``).

    Args:
        adapter: the model's adapter.
        module: ``"text_encoder"``, ``"unet-xattn"`` or ``"unet-noxattn"``.
        encoder_layers: the text-encoder layers that train (``None``: all, and the final norm).
    """
    if module in UNET_MODULES:
        names = esd.trainable_parameter_names(adapter.unet, set(adapter.cross_attention_modules()),
                                              esd.ESDConfig(variant=UNET_MODULES[module]))
        return {"unet": (adapter.unet, names)}
    chosen = {}
    for component, encoder in adapter.text_encoders().items():
        tables = [m for m in encoder.modules() if isinstance(m, torch.nn.Embedding)]
        skipped = {id(p) for table in tables for p in table.parameters()}
        names = [n for n, p in encoder.named_parameters() if id(p) not in skipped]
        chosen[component] = (encoder, names if encoder_layers is None else layer_parameter_names(
            component, encoder, names, encoder_layers))
    return chosen


def layer_parameter_names(component: str, encoder: torch.nn.Module, names: list[str], layers: list[int]) -> list[str]:
    """The names among ``names`` that belong to transformer layers ``layers`` of ``encoder``
    (``...layers.<i>.``); ``ErasureError`` for a layer the encoder does not have."""
    count = encoder.config.num_hidden_layers
    missing = sorted(set(layers) - set(range(count)))
    if missing:
        raise ErasureError(f"AdvUnlearnConfig.encoder_layers {missing}: {component} has {count} layers, "
                           f"numbered 0-{count - 1}")
    pattern = re.compile(rf"(?:^|\.)layers\.({'|'.join(map(str, layers))})\.")
    return [name for name in names if pattern.search(name)]


def retain_prompts(concepts: list[Concept], config: AdvUnlearnConfig, model: str) -> list[str]:
    """The retain set: the captions of ``retain_prompts`` that name no concept, none of
    its ``concept_synonyms`` and no ``retain_exclude`` word, at most ``retain_limit`` of
    them (drawn by ``seed``), and ``""`` if asked.

    Args:
        concepts: the erased concepts.
        config: the retain settings.
        model: the pipeline's ``name_or_path`` (for ``retain_prompts: model``).
    """
    captions = general_captions(MACEConfig(general_captions=config.retain_prompts), model)
    banned = [c.text for c in concepts] + list(config.retain_exclude)
    banned += [word for name, words in config.concept_synonyms.items()
               if any(_any_word([name]).search(c.text) for c in concepts) for word in words]
    pattern = _any_word(banned)
    kept = [prompt for prompt in captions if not pattern.search(prompt)]
    if not kept:
        raise ErasureError(f"no retain prompt of {config.retain_prompts!r} is free of the erased concepts: "
                           "give another retain_prompts file")
    if config.retain_limit is not None and len(kept) > config.retain_limit:
        order = torch.randperm(len(kept), generator=torch.Generator().manual_seed(config.seed))
        kept = [kept[i] for i in sorted(order[: config.retain_limit].tolist())]
    return kept + ([""] if config.retain_empty_prompt else [])


def _any_word(words: list[str]) -> re.Pattern:
    """A pattern finding any of ``words`` as a whole word ("red circle" holds circle), any case."""
    return re.compile("|".join(rf"\b{re.escape(word)}\b" for word in words), re.IGNORECASE)


# ---- the x_t bank --------------------------------------------------------------------


def frozen_bank(adapter: StableDiffusionAdapter, scheduler, prompts: list[str], count: int, guidance: float,
                generator: torch.Generator, keep_unconditional: bool) -> TrajectoryBank:
    """``count`` guided DDIM runs of the model as it is (the frozen one), prompts taken in
    turn (the bank's ``rows`` index ``prompts``), noise from ``generator``, sampled
    ``BANK_CHUNK`` runs at a time. Each latent keeps the frozen predictions there:
    ``values[k, i, CONDITIONAL]`` under the run's prompt, ``values[k, i, UNCONDITIONAL]``
    under ``""`` if kept.

    Args:
        adapter: the model (its weights as they are now: the frozen ones).
        scheduler: a DDIM scheduler with its timesteps set.
        prompts: the prompts, cycled over.
        count: trajectories.
        guidance: classifier-free guidance of the runs.
        generator: the noise's random stream.
        keep_unconditional: keep the ``""`` predictions too (the ESD target needs them).
    """
    rows = torch.arange(count) % len(prompts)
    channels, height, width = adapter.latent_shape
    noise = torch.randn((count, channels, height, width), generator=generator).to(adapter.device)
    empty = adapter.encode([""])
    chunks = []
    for start in range(0, count, BANK_CHUNK):
        chunk = rows[start:start + BANK_CHUNK]
        both = PromptEmbeddings.cat([empty.repeat(len(chunk)), adapter.encode([prompts[i] for i in chunk.tolist()])])
        predict = guided_predictions(adapter, both, guidance, keep_unconditional)
        noise_of_chunk = noise[start:start + len(chunk)]
        chunks.append(TrajectoryBank.sample(scheduler, noise_of_chunk, chunk, predict, with_values=True))
    return TrajectoryBank.cat(chunks)


def guided_predictions(adapter: StableDiffusionAdapter, both: PromptEmbeddings, guidance: float,
                       keep_unconditional: bool) -> StepPredictions:
    """``predict(x, t)`` for ``TrajectoryBank.sample``: the ``""`` and prompt predictions in
    one call, their guided mix (which continues the run) and the kept ones, stacked.

    Args:
        adapter: the model.
        both: the empty prompt's conditioning for every run, then each run's prompt's.
        guidance: classifier-free guidance scale.
        keep_unconditional: keep the ``""`` prediction after the prompt's.
    """

    def predict(model_input: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        uncond, cond = widened(adapter.predict_noise(torch.cat([model_input] * 2), timestep, both)).chunk(2)
        kept = (cond, uncond) if keep_unconditional else (cond,)
        return uncond + guidance * (cond - uncond), torch.stack(kept, dim=1)

    return predict


def final_latents(bank: TrajectoryBank, scheduler, guidance: float) -> torch.Tensor:
    """Each concept trajectory's end, ``x_0``: its last DDIM step from the kept predictions."""
    last = bank.values[-1]
    guided = last[:, UNCONDITIONAL] + guidance * (last[:, CONDITIONAL] - last[:, UNCONDITIONAL])
    return ddim_step(scheduler, guided, scheduler.timesteps[-1], bank.latents[-1])


# ---- the loop ------------------------------------------------------------------------


def encoding_drift(current: PromptEmbeddings, frozen: PromptEmbeddings) -> torch.Tensor:
    """The mean squared change of the encodings: every token vector, and SDXL's pooled one."""
    drift = F.mse_loss(current.hidden.float(), frozen.hidden.float())
    if current.pooled is not None:
        drift = drift + F.mse_loss(current.pooled.float(), frozen.pooled.float())
    return drift


def concept_prompts(concepts: list[Concept], templates: list[str], word: str | None = None) -> list[str]:
    """Every template with every concept, template by template, so that prompt ``i`` is
    about concept ``i % len(concepts)`` and any ``len(concepts)`` prompts in a row hold each
    concept once (the bank takes the prompts in turn).

    Args:
        concepts: the erased concepts.
        templates: ``concept_templates``.
        word: what stands in each concept's place (default: its own text).
    """
    return [template.format(c.text if word is None else word) for template in templates for c in concepts]


def adversarial_prompts(concepts: list[Concept], templates: list[str]) -> dict[str, list[str]]:
    """Per placement (``prefix``, ``replace``), the concept prompts in ``concept_prompts``'
    order with ``tokens.SLOT`` where the adversarial vectors go: before the prompt, or in
    place of the concept's words."""
    return {"prefix": [SLOT + prompt for prompt in concept_prompts(concepts, templates)],
            "replace": concept_prompts(concepts, templates, SLOT)}


def random_prefix(adapter: StableDiffusionAdapter, candidates: torch.Tensor, k: int,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """``k`` token vectors of words drawn from ``candidates``, ``(1, k, width)`` per text encoder."""
    return token_vectors(adapter, candidates[torch.randint(len(candidates), (k,), generator=generator)])


def token_vectors(adapter: StableDiffusionAdapter, ids: torch.Tensor) -> list[torch.Tensor]:
    """Copies of the token tables' rows ``ids``, ``(1, k, width)`` per text encoder."""
    return [table.weight.detach()[ids.to(table.weight.device)].unsqueeze(0).clone() for table in adapter.token_embeddings()]


@dataclass
class AttackDraw:
    """One attack step's examples: concept prompts ``rows``, the latents at ``timestep`` and
    the predictions the vectors should make the model give there."""

    rows: list[int]
    latents: torch.Tensor
    timestep: torch.Tensor
    target: torch.Tensor


class Loop:
    """One AdvUnlearn run's iterations: the attack (after the warm-up) and the outer step.

    ``delta`` holds the latest adversarial vectors (per placement, per text encoder),
    updated in place so that the checkpoint, which holds the same tensors, saves and
    restores them.
    """

    def __init__(self, adapter, scheduler, concept: tuple[list[str], list[str], dict[str, list[str]], TrajectoryBank],
                 retain: tuple[list[str], TrajectoryBank, PromptEmbeddings | None], candidates: torch.Tensor,
                 delta: dict[str, list[torch.Tensor]], config: AdvUnlearnConfig, state: TrainingState):
        """
        Args:
            adapter: the model's adapter (its trained modules swapped in).
            scheduler: the banks' DDIM scheduler.
            concept: each concept's words (where its inversions start), the concept
                prompts (``concept_prompts``: prompt ``i`` is about concept ``i % len(words)``),
                the same per placement with the vectors' place marked
                (``adversarial_prompts``), and their bank (``frozen_bank``, with ``""``
                predictions).
            retain: the retain prompts, their bank and their frozen encodings (only with
                ``retain_embedding_weight``, else ``None``).
            candidates: token ids a random attack start is drawn from.
            delta: the latest adversarial vectors per placement, updated in place.
            config: the run's settings.
            state: the optimiser, the run's generator and the records.
        """
        self.adapter, self.scheduler, self.config, self.state = adapter, scheduler, config, state
        self.concept_words, self.concept_prompts, self.adversarial_prompts, self.concept_bank = concept
        self.retain_prompts, self.retain_bank, self.retain_frozen = retain
        # ESD's target, anchored at the "" prediction (the paper's and the authors').
        self.objective = esd.ESDConfig(negative_guidance=config.negative_guidance, target_base="anchor")
        self.candidates, self.delta = candidates, delta
        if config.attack_objective == "denoising" or config.inversion_every:
            self.concept_images = final_latents(self.concept_bank, scheduler, config.start_guidance)

    def step(self, index: int) -> float:
        """Iteration ``index``: attack if due, then one outer Adam step; returns the loss."""
        config, seconds = self.config, self.state.extra["seconds"]
        adversarial = index >= config.warmup
        placement = self.placement(index) if adversarial else None
        if adversarial and (index - config.warmup) % config.attack_every == 0:
            started = time.perf_counter()
            found, losses = self.attack(placement)
            for current, new in zip(self.delta[placement], found):
                current.copy_(new)
            self.keep_for_replay(index, placement)
            seconds["inner_attack"] += time.perf_counter() - started
            self.state.extra["attack_losses"].append([losses[0], losses[-1]])
        if adversarial and config.inversion_every and (index - config.warmup) % config.inversion_every == 0:
            started = time.perf_counter()
            for concept in range(len(self.concept_words)):  # kept in this order: set i is concept i % count
                found, losses = self.invert(concept)
                self.keep("inversion", found)
                self.state.extra["inversion_losses"].append([losses[0], losses[-1]])
            seconds["inversion"] += time.perf_counter() - started
        started = time.perf_counter()
        loss = self.outer_step(placement)
        seconds["outer"] += time.perf_counter() - started
        return loss

    def placement(self, index: int) -> str:
        """Where iteration ``index`` puts the vectors: ``prefix`` or ``replace`` (``alternate``:
        by the attack round the iteration belongs to, so a resumed run continues the turn)."""
        if self.config.attack_type != "alternate":
            return self.config.attack_type
        round_ = (index - self.config.warmup) // self.config.attack_every
        return ("prefix", "replace")[round_ % 2]

    def keep_for_replay(self, index: int, placement: str) -> None:
        """After the attack of iteration ``index``: keep its vectors if it is an
        ``attack_replay_every``-th one (counting from 1). They go into the state's tensors,
        so that a checkpoint holds them."""
        config = self.config
        attack = (index - config.warmup) // config.attack_every + 1
        if config.attack_replay_every and attack % config.attack_replay_every == 0:
            self.keep(placement, self.delta[placement])

    def keep(self, kind: str, vectors: list[torch.Tensor]) -> None:
        """Keep a vector set (one tensor per text encoder) of ``kind``, a placement or
        ``inversion``, in the state's tensors, so that a checkpoint holds it."""
        kept = len(self.kept_vectors(kind))
        for encoder, values in enumerate(vectors):
            self.state.tensors[f"replay/{kind}/{kept:05d}/{encoder}"] = values.clone()

    def kept_vectors(self, kind: str) -> list[list[torch.Tensor]]:
        """The vector sets kept of ``kind`` (a placement or ``inversion``), oldest first, one
        tensor per text encoder each (a restored checkpoint's are on the CPU)."""
        prefix = f"replay/{kind}/"
        kept: dict[str, list[torch.Tensor]] = {}
        for name in sorted(n for n in self.state.tensors if n.startswith(prefix)):
            kept.setdefault(name.split("/")[2], []).append(self.state.tensors[name])
        return list(kept.values())

    def kept_set_for(self, kind: str, sets: list[list[torch.Tensor]], row: int) -> list[torch.Tensor]:
        """A kept set of ``kind`` drawn at random for concept prompt ``row``. Each
        inversion round keeps one set per concept, in order, and the row gets its own
        concept's; attack sets serve every concept."""
        count = len(self.concept_words) if kind == "inversion" else 1
        round_ = int(torch.randint(len(sets) // count, (1,), generator=self.state.generator))
        return sets[round_ * count + row % count]

    def encode(self, prompts: list[str]) -> PromptEmbeddings:
        """The prompts through the current text encoder, with gradients."""
        return self.adapter.encode_ids(self.adapter.tokenize(prompts))

    def encode_adversarial(self, rows: list[int], vectors: list[torch.Tensor], placement: str) -> PromptEmbeddings:
        """Concept prompts ``rows`` with ``vectors`` (``(1, k, width)`` per text encoder)
        before them (``prefix``) or in place of the concept's words (``replace``), with
        gradients."""
        prompts = [self.adversarial_prompts[placement][row] for row in rows]
        return encode_with_vectors(self.adapter, prompts, [v.expand(len(rows), -1, -1) for v in vectors])

    def attack_draw(self) -> AttackDraw:
        """Where the next attack step scores the vectors (``attack_objective``)."""
        generator = self.state.generator
        if self.config.attack_objective == "prediction":
            draw = self.concept_bank.draw(generator, 1)
            return AttackDraw([int(draw.rows[0])], draw.latents, self.scheduler.timesteps[draw.step],
                              draw.values[:, CONDITIONAL])
        return self.denoising_draw(1)

    def denoising_draw(self, count: int, concept: int | None = None) -> AttackDraw:
        """``count`` frozen-model concept images drawn at random (of one ``concept``, an
        index into the concept words, if given), each noised at a uniform training
        timestep, and the noise (or v-prediction) target."""
        adapter, generator = self.adapter, self.state.generator
        eligible = torch.arange(len(self.concept_bank))
        if concept is not None:
            eligible = eligible[self.concept_bank.rows % len(self.concept_words) == concept]
        picks = eligible[torch.randint(len(eligible), (count,), generator=generator)]
        x0 = self.concept_images[picks.to(self.concept_images.device)]
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        timestep = torch.randint(adapter.training_noise.config.num_train_timesteps, (count,), generator=generator)
        timestep = timestep.to(x0.device)
        return AttackDraw(self.concept_bank.rows[picks].tolist(), adapter.add_noise(x0, noise, timestep), timestep,
                          adapter.training_target(x0, noise, timestep).float())

    def attack(self, placement: str) -> tuple[list[torch.Tensor], list[float]]:
        """The inner level: ``attack_steps`` steps on free vectors at ``placement``, each
        minimising the squared error of the model's prediction at an ``attack_draw``.
        Returns the vectors found and the loss of each step."""
        config = self.config
        start = self.delta[placement] if config.attack_init == "latest" else \
            random_prefix(self.adapter, self.candidates, config.attack_tokens, self.state.generator)
        vectors = [d.clone().requires_grad_(True) for d in start]
        optimizer = torch.optim.Adam(vectors, lr=config.attack_lr)
        losses = self.descend(vectors, optimizer, config.attack_steps, self.attack_draw, placement,
                              sign=config.attack == "fast")
        return [v.detach() for v in vectors], losses

    def invert(self, concept: int) -> tuple[list[torch.Tensor], list[float]]:
        """Concept inversion's attack on the current model (``inversion_every``): the
        vectors of concept ``concept``'s words, in their place, trained for
        ``inversion_steps`` AdamW steps on ``inversion_batch`` noised images of it each.
        Returns the vectors found and the loss of each step."""
        config = self.config
        ids = torch.tensor(self.adapter.concept_token_ids(self.concept_words[concept]))
        vectors = [v.requires_grad_(True) for v in token_vectors(self.adapter, ids)]
        optimizer = torch.optim.AdamW(vectors, lr=config.inversion_lr, weight_decay=1e-2)
        losses = self.descend(vectors, optimizer, config.inversion_steps,
                              lambda: self.denoising_draw(config.inversion_batch, concept), "replace")
        return [v.detach() for v in vectors], losses

    def descend(self, vectors: list[torch.Tensor], optimizer: torch.optim.Optimizer, steps: int, draw,
                placement: str, sign: bool = False) -> list[float]:
        """``steps`` optimiser steps on ``vectors`` at ``placement``, each minimising the
        squared error of the model's prediction at ``draw()`` (an ``AttackDraw``); with
        ``sign`` the gradient's sign replaces it (``fast``). Returns each step's loss."""
        adapter, losses = self.adapter, []
        for _ in range(steps):
            example = draw()
            with esd.autocast(adapter, self.config):
                cond = self.encode_adversarial(example.rows, vectors, placement)
                prediction = adapter.predict_noise(example.latents, example.timestep, cond)
            loss = F.mse_loss(prediction.float(), example.target)
            losses.append(loss.item())
            grads = torch.autograd.grad(loss, vectors)  # to the vectors only: the model's weights get none
            for vector, grad in zip(vectors, grads):
                vector.grad = grad.sign() if sign else grad
            optimizer.step()
        return losses

    def outer_step(self, placement: str | None) -> float:
        """ESD's loss on the concept prompt (with the adversarial vectors at ``placement``,
        if any, and at more concept latents with a kept attack set and a kept inversion
        drawn, if any) plus ``gamma`` times the retain loss, in one UNet call, plus
        ``lambda`` times the retain encodings' drift (``retain_embedding_weight``); one
        Adam step. Raises ``NonFiniteError`` before the step."""
        config, adapter, generator = self.config, self.adapter, self.state.generator
        kept = {kind: self.kept_vectors(kind) for kind in (placement, "inversion")} if placement is not None else {}
        kept = {kind: sets for kind, sets in kept.items() if sets}
        concept = self.concept_bank.draw(generator, 1 + len(kept))
        retain = self.retain_bank.at(torch.randperm(len(self.retain_bank), generator=generator)[: config.retain_batch],
                                     concept.step)
        vector_sets = [(placement, self.delta[placement])] if placement is not None else []
        for kind, sets in kept.items():  # only the drawn sets go to the model's device
            drawn = self.kept_set_for(kind, sets, int(concept.rows[len(vector_sets)]))
            vector_sets.append(("replace" if kind == "inversion" else kind, [v.to(adapter.device) for v in drawn]))
        target = esd.esd_target(concept.values[:, UNCONDITIONAL], concept.values[:, CONDITIONAL], None, self.objective)
        retain_target = retain.values[:, CONDITIONAL]
        latents = torch.cat([concept.latents, retain.latents])

        self.state.optimizer.zero_grad(set_to_none=True)
        with esd.autocast(adapter, config):
            rows = [int(row) for row in concept.rows]
            concept_cond = [self.encode([self.concept_prompts[rows[0]]])] if placement is None else \
                [self.encode_adversarial([row], vectors, where) for row, (where, vectors) in zip(rows, vector_sets)]
            retain_cond = self.encode([self.retain_prompts[int(i)] for i in retain.rows])
            prediction = adapter.predict_noise(latents, self.scheduler.timesteps[concept.step],
                                               PromptEmbeddings.cat([*concept_cond, retain_cond])).float()
        erased = len(rows)
        # Each adversarial set's term has ESD's weight 1: the kept sets' add to the latest's.
        esd_loss = F.mse_loss(prediction[:erased], target, reduction="none").flatten(1).mean(1).sum()
        loss = esd_loss + config.retain_weight * F.mse_loss(prediction[erased:], retain_target)
        if config.retain_embedding_weight:
            drift = encoding_drift(retain_cond, self.retain_frozen.select(retain.rows))
            loss = loss + config.retain_embedding_weight * drift
        diverged = f"the trained weights diverged: lower lr (now {config.lr:g})"
        value = finite_value(loss, diverged)
        loss.backward()
        params = [p for group in self.state.optimizer.param_groups for p in group["params"]]
        check_finite_gradients(params, diverged)
        self.state.optimizer.step()
        return value
