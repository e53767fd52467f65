"""MACE: Mass Concept Erasure in diffusion models (Lu, Wang, Li, Liu, Kong; CVPR 2024).

Three stages, for 1 to 100+ concepts at once (paper Sec. 3):

1. Closed-form refinement (Eq. 7) of every cross-attention key/value projection:

       W' = [ lam W0 + sum W0 e_g e_f^T + s (P1 + w D1) ]
          @ [ lam I  + sum e_f e_f^T    + s (P2 + w D2) ]^-1

   ``e_f``: the token vectors of the concept's prompts (about 30 templates) at the
   positions that co-exist with the concept (shared prefix and suffix, end token,
   padding; not the concept's own tokens, whose keys would otherwise be rewritten
   too); ``e_g``: the same positions of the prompt with the concept replaced by its
   mapping concept. ``P2 = sum e e^T`` over every token of a general caption set and
   ``P1 = W0 P2``; ``D1, D2`` likewise over a domain set (e.g. other celebrities).
2. One LoRA per concept on ``attn2.to_k/to_v`` of the refined UNet, trained to remove
   the attention that the concept's tokens receive inside the concept's mask (Eq. 8):
   ``sum_layers || A_l[mask, concept tokens] ||_F^2``, with timesteps drawn from the
   concept-focal importance distribution ``sigmoid(0.05(t-200)) - sigmoid(0.05(t-400))``.
3. Closed-form fusion of the LoRAs into one weight per matrix (Eq. 10):

       W* = [ lam W' + sum_i sum_j (W' + dW_i) e_j e_j^T + s_f (P1 + w D1) ]
          @ [ lam I  + sum_i sum_j e_j e_j^T             + s_f (P2 + w D2) ]^-1

   with ``e_j`` every token of concept i's prompts.

Every sum is a text-space Gram matrix (``erasure.closed_form``), streamed over concepts,
prompts and captions, so memory does not grow with the number of concepts; P2 and D2
are cached on disk (keyed by the text encoder's outputs and the prompt list).

This module holds the config and ``erase``, stage by stage; the parts live beside it:
``prompts`` (templates, captions), ``tokens`` (token positions), ``statistics`` (Gram
sums and their cache), ``lora`` (stage 2) and ``fusion`` (stage 3).

Defaults follow the paper where it and the authors' code differ; each difference has an
option, and ``configs/mace/authors-{object,celebrity,explicit,style}.yaml`` set them all
to the authors' (``docs/equivalence.md`` has the measured agreement):
- ``s`` multiplies the preservation terms once, as in Eq. 7; the authors' stage-1 code
  multiplies by ``s`` twice (effective ``s^2``): ``preserve_scale_rule: authors_code``.
- Our prompt templates; the authors' 30 per type are read from the user's checkout of
  their repository (``templates: authors-object``, ``templates_file``), since their
  licence is non-commercial. Their configs give celebrities and explicit content the
  object templates.
- The general captions are ours (``prompts.GENERAL_CAPTIONS``), their Gram sum
  rescaled to the 616,767 COCO 2014 captions the authors summed, so that the paper's
  ``s`` keeps its meaning (``general_equivalent_captions``; ``None`` disables it).
- The default masks are the base model's cross-attention maps (``erasure.concept_images``), not
  GroundingDINO + SAM, which remain available (``mask_source: grounded_sam``; the
  authors' union of every detected box: ``mask_boxes: all``).
- Training images are generated latents used directly, sampled with the pipeline's
  scheduler (the authors sample with DPM-Solver, ``generation_scheduler: dpm_solver``,
  save JPEGs, then VAE-encode them after an ImageNet normalisation meant for
  classifiers: not reproduced).
- The attention loss is squared as in Eq. 8 (the code takes the plain norm:
  ``attention_loss: norm``).
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ...adapters import StableDiffusionAdapter, adapter_for
from ...closed_form import GramAccumulator, MappingTerm, solve_projections
from ...concept_images import MaskSource, require_grounded_sam
from ...concepts import Concept, slug
from ...config import SEED_BOUNDS, MethodConfig, setting
from ...edit import Edit
from ...errors import ErasureError
from ...loading import model_folder
from ...training import Checkpoint, RunOptions
from . import prompts
from .fusion import LoRAFusion, fuse, fusion_scale
from .lora import concept_loras
from .prompts import ConceptPrompts
from .statistics import all_token_grams, cache_root, cached_grams, coexisting_grams, preservation_terms

COCO_2014_CAPTIONS = 616_767  # train (414,113) + val (202,654): the authors' P1/P2 set
MODEL_CAPTIONS = "general_captions.txt"  # in a model's folder: captions of what it was trained on


@dataclass
class MACEConfig(MethodConfig):
    """MACE settings. Defaults: the authors' object erasure (``configs/object/*.yaml``
    of the official code, paper Sec. 4.1); ``configs/mace/<type>.yaml`` override them.
    Where the paper and the authors' code differ, the defaults follow the paper (its
    equations, as published; see the module docstring), and
    ``configs/mace/authors-*.yaml`` hold the code's choices. Why: the paper's equations
    are the method its readers know, and the defaults then run anywhere, offline, with
    no extra models (GroundingDINO, SAM-HQ) and no text under the authors'
    non-commercial licence (their templates).

    Attributes:
        templates: prompt templates (``{}`` = the concept): a set of
            ``prompts.TEMPLATES`` (``object``, ``style``, ``celebrity``, ``nudity``),
            the authors' (``authors-object``, ``authors-style``: read from
            ``templates_file``) or your own list.
        templates_file: for the ``authors-*`` sets, your checkout of the authors'
            repository (github.com/Shilin-LU/MACE) or its ``src/cfr_utils.py``, which
            holds them; read as text, never run.
        mapping: what a concept becomes when it names no target (``"airplane->sky"``
            names one): objects -> a background, celebrities -> "a person", styles ->
            "art", nudity -> "a person wearing clothes".
        lam: weight of staying near the current weights in stages 1 and 3 (objects
            1e1..1e3; 0 for celebrities, styles and nudity).
        preserve_scale: ``s`` of stage 1 (objects 0, celebrities/styles 1e-4, nudity 7e-7).
        preserve_scale_rule: ``paper`` (stage 1 weighs the preservation terms by
            ``s``, Eq. 7) or ``authors_code`` (by ``s^2``, as their code does).
        fuse_preserve_scale: ``s_f`` of stage 3; ``None``: the same as ``s``.
        domain_weight: ``w``, weight of the domain set relative to the general one
            (celebrities 8e3 for 1 concept up to 2e5 for 100; styles 8e4).
        domain_concepts: names whose prompts (the templates) form the domain set, e.g.
            celebrities to keep; erased concepts are removed from it.
        general_captions: ``"builtin"`` (our COCO-style captions), ``"model"`` (the
            ``general_captions.txt`` the model's folder ships: mini-sd's are captions of
            its shapes world) or a text file, one caption a line.
        general_equivalent_captions: rescale P2 to this many captions (the authors'
            COCO count) so the paper's ``s`` applies; ``None``: the plain sum.
        cache_dir: where P2/D2 are cached; ``None``: ``~/.cache/erasure/mace``.
        train_steps: LoRA steps per concept (50; explicit content 120); 0 skips stage 2.
        learning_rate: AdamW (objects and explicit 1e-5, celebrities and styles 1e-4).
        lora_rank: rank of each concept's LoRA (1).
        weight_decay: AdamW weight decay (the authors' 1e-2).
        max_grad_norm: gradient clipping (1.0).
        importance_sampling: concept-focal timestep sampling (off for explicit content).
        attention_loss: ``squared`` Frobenius norm (paper Eq. 8) or plain ``norm`` (code).
        end_tokens: which positions besides the concept's words the loss covers:
            ``all`` (end token and padding: what the authors' ``use_pooler`` selects with
            SD 1.x's tokenizer, whose padding is the end token), ``first``, ``none``.
        images_per_concept: training images generated by the base model (8).
        image_prompt: prompt of those images (objects "a photo of the {}", styles
            "a photo in the style of {}").
        generation_steps, generation_guidance, resolution: generation settings;
            ``None``: the model's ``erasure_defaults.json`` if it has one, else the
            pipeline's defaults.
        generation_scheduler: ``pipeline`` (the pipeline's own) or ``dpm_solver``
            (diffusers' DPM-Solver multistep on the model's noise schedule, the authors').
        data_dir: a folder with ``<concept>/`` images (and ``<concept> mask/`` masks) to
            use instead of generated images (the authors' layout).
        mask_source: ``attention``, ``folder``, ``grounded_sam`` or ``whole_image``.
        mask_threshold: share of the attention map's peak that counts as the concept.
        mask_timesteps: noise levels whose attention maps are averaged for a mask.
        grounding_model, sam_model, grounding_label, box_threshold, text_threshold:
            GroundingDINO + SAM settings (label ``None``: the concept's name). The
            authors' models are GroundingDINO Swin-T OGC
            (``IDEA-Research/grounding-dino-tiny``) and SAM-HQ ViT-H
            (``syscv-community/sam-hq-vit-huge``), box threshold 0.3, text threshold
            0.25. Boxes are kept by the box threshold; the text threshold only decides
            which words name a box, so it does not change a mask (as in their code).
            The weights are not part of this package and are never downloaded by it:
            without them in the Hugging Face cache (or as local folders) erasing stops
            with an error naming both.
        mask_boxes: SAM segments the ``best`` box, or ``all`` boxes above the threshold,
            united (the authors').
        seed: seed of generation, timesteps, noise and LoRA initialisation.
    """

    templates: str | list[str] = "object"
    templates_file: str | None = None
    mapping: str = prompts.MAPPINGS["object"]
    lam: float = setting(1e3, min=0)
    preserve_scale: float = setting(0.0, min=0)
    preserve_scale_rule: Literal["paper", "authors_code"] = "paper"
    fuse_preserve_scale: float | None = setting(None, min=0)
    domain_weight: float = setting(0.0, min=0)
    domain_concepts: list[str] = field(default_factory=list)
    general_captions: str = "builtin"
    general_equivalent_captions: int | None = setting(COCO_2014_CAPTIONS, min=1)
    cache_dir: str | None = None
    train_steps: int = setting(50, min=0)
    learning_rate: float = setting(1e-5, above=0)
    lora_rank: int = setting(1, min=1)
    weight_decay: float = setting(1e-2, min=0)
    max_grad_norm: float = setting(1.0, above=0)
    importance_sampling: bool = True
    attention_loss: Literal["squared", "norm"] = "squared"
    end_tokens: Literal["all", "first", "none"] = "all"
    images_per_concept: int = setting(8, min=1)
    image_prompt: str = "a photo of the {}"
    generation_steps: int | None = setting(None, min=1)
    generation_guidance: float | None = setting(None, min=0)
    resolution: int | None = setting(None, min=8)
    generation_scheduler: Literal["pipeline", "dpm_solver"] = "pipeline"
    data_dir: str | None = None
    mask_source: MaskSource = "attention"
    mask_threshold: float = setting(0.4, above=0, below=1)
    mask_timesteps: list[int] = setting(default_factory=lambda: [200, 400, 600], min=0, max=999)
    grounding_model: str = "IDEA-Research/grounding-dino-base"
    sam_model: str = "facebook/sam-vit-huge"
    grounding_label: str | None = None
    box_threshold: float = setting(0.3, min=0, max=1)
    text_threshold: float = setting(0.25, min=0, max=1)
    mask_boxes: Literal["best", "all"] = "best"
    seed: int = setting(2024, **SEED_BOUNDS)

    def check(self) -> None:
        known = [*prompts.TEMPLATES, *prompts.AUTHORS_TEMPLATES]
        if isinstance(self.templates, str) and self.templates not in known:
            raise ErasureError(
                f"unknown MACE template set {self.templates!r}: use one of {', '.join(known)} "
                "or a list of templates containing {}"
            )
        if isinstance(self.templates, list) and (not self.templates or any("{}" not in t for t in self.templates)):
            raise ErasureError("every MACE template must contain {} where the concept goes, e.g. 'a photo of {}'")
        if "{}" not in self.image_prompt:
            raise ErasureError(f"MACEConfig.image_prompt {self.image_prompt!r} must contain {{}} where the concept goes")
        if self.mask_source == "folder" and self.data_dir is None:
            raise ErasureError("mask_source: folder needs data_dir, a folder with '<concept>/' and '<concept> mask/'")
        if not self.mask_timesteps:
            raise ErasureError("MACEConfig.mask_timesteps is empty: give at least one noise level, e.g. [200, 400, 600]")
        if self.resolution is not None and self.resolution % 8:
            raise ErasureError(f"MACEConfig.resolution must be a multiple of 8, got {self.resolution}")


def erase(pipe, concepts: list[Concept], config: MACEConfig, run: RunOptions = RunOptions()) -> Edit:
    """Erase ``concepts`` from ``pipe`` (left unchanged): refine, train one LoRA per
    concept, fuse.

    Args:
        pipe: a Stable Diffusion pipeline (SD 1.x, 2.x or SDXL) without LoRAs loaded.
        concepts: 1 to 100+ concepts; ``Concept("airplane", "sky")`` names a mapping.
        config: ``MACEConfig`` (see ``configs/mace/<concept_type>.yaml``).
        run: checkpoints of the finished LoRAs (one step per concept), resume, overwrite.

    Returns:
        An ``Edit`` of every ``attn2.to_k/to_v``; ``extra`` holds the seconds spent per
        stage and each LoRA's first and last loss.
    """
    adapter = adapter_for(pipe)
    refuse_loaded_adapters(adapter.unet)
    if config.mask_source == "grounded_sam" and config.train_steps > 0:
        require_grounded_sam(config.grounding_model, config.sam_model)
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    identity = {"method": "mace", "concepts": [str(c) for c in concepts], **dataclasses.asdict(config)}
    checkpoint = Checkpoint.open(run, identity, original, "MACE", f"mace-{slug(concepts)}")
    items = [prompts_for(c, config) for c in concepts]
    seconds: dict[str, float] = {}

    with timed(seconds, "preservation_statistics"):
        general, domain = preservation_grams(adapter, concepts, config, str(pipe.name_or_path))
    with timed(seconds, "stage1_refinement"):
        refined = refine(adapter, original, items, general, domain, config)
    with timed(seconds, "stage2_loras"):
        loras, losses = concept_loras(pipe, adapter, refined, items, config, checkpoint, run.checkpoint_every)
        fusion = LoRAFusion(adapter.text_dim, adapter.device)
        for item, lora in zip(items, loras):
            fusion.add(all_token_grams(adapter, item.prompts), lora)
    with timed(seconds, "stage3_fusion"):
        fused = fuse(original, refined, fusion, general, domain, config)
    return Edit.of_unet(original, fused, {"seconds": seconds, "lora_loss_first_last": losses})


@contextmanager
def timed(seconds: dict[str, float], stage: str):
    """Record the block's wall time as ``seconds[stage]``."""
    started = time.perf_counter()
    yield
    seconds[stage] = time.perf_counter() - started


# ---- prompts --------------------------------------------------------------------------


def templates_of(config: MACEConfig) -> list[str]:
    """The prompt templates: a named set, the authors' (read from ``templates_file``) or the list given."""
    if isinstance(config.templates, list):
        return list(config.templates)
    if config.templates in prompts.AUTHORS_TEMPLATES:
        if config.templates_file is None:
            raise ErasureError(
                f"templates: {config.templates} reads the MACE authors' templates from your checkout of their "
                "repository: --set templates_file=PATH/TO/MACE (their licence keeps them out of this package)"
            )
        return list(prompts.authors_templates(config.templates_file, prompts.AUTHORS_TEMPLATES[config.templates]))
    return list(prompts.TEMPLATES[config.templates])


def prompts_for(concept: Concept, config: MACEConfig) -> ConceptPrompts:
    return ConceptPrompts.of(concept, templates_of(config), config.mapping)


def refuse_loaded_adapters(unet: torch.nn.Module) -> None:
    """Stage 2 adds, then removes, PEFT layers: a UNet with the user's LoRAs loaded
    would lose them, and its projections have other parameter names."""
    if any(hasattr(module, "base_layer") for module in unet.modules()):
        raise ErasureError(
            "this UNet has LoRA/PEFT layers loaded: fuse and unload them first "
            "(pipe.fuse_lora(); pipe.unload_lora_weights())"
        )


# ---- preservation statistics ------------------------------------------------------------


def preservation_grams(adapter: StableDiffusionAdapter, concepts: list[Concept], config: MACEConfig, model: str):
    """``(P2, D2)``, each ``None`` when its weight is zero, loaded from the cache if there.

    Args:
        adapter: encodes.
        concepts: the erased concepts (removed from the domain set).
        config: the preservation settings.
        model: the pipeline's ``name_or_path`` (for ``general_captions: model``).
    """
    if max(config.preserve_scale, fusion_scale(config)) == 0:
        return None, None
    cache = cache_root(config.cache_dir)
    general = cached_grams(adapter, general_captions(config, model), "general", cache)
    erased = {c.text.lower() for c in concepts}
    names = [n for n in config.domain_concepts if n.lower() not in erased]
    domain = None
    if config.domain_weight > 0 and names:
        domain = cached_grams(adapter, [t.format(n) for n in names for t in templates_of(config)], "domain", cache)
    return general, domain


def general_captions(config: MACEConfig, model: str) -> list[str]:
    """The general caption set: ours, the model folder's ``general_captions.txt``, or a file."""
    if config.general_captions == "builtin":
        return list(prompts.GENERAL_CAPTIONS)
    if config.general_captions == "model":
        folder = model_folder(model)
        path = folder / MODEL_CAPTIONS if folder is not None else None
        if path is None or not path.is_file():
            raise ErasureError(
                f"general_captions: model reads {MODEL_CAPTIONS} from the model's folder, which {model!r} does not "
                "have: use builtin or a text file of captions"
            )
    else:
        path = Path(config.general_captions).expanduser()
        if not path.is_file():
            raise ErasureError(f"general_captions {str(path)!r}: use 'builtin', 'model' or a text file of captions")
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ErasureError(f"{path} holds no captions: write one a line")
    return captions


# ---- stage 1: closed-form refinement ----------------------------------------------------


def stage1_scale(config: MACEConfig) -> float:
    """The weight of stage 1's preservation terms: ``s`` (paper) or ``s^2`` (the authors'
    code, which scales the cached statistics by ``s`` and then the refinement's terms by ``s``)."""
    return config.preserve_scale**2 if config.preserve_scale_rule == "authors_code" else config.preserve_scale


def refine(adapter, original, items: list[ConceptPrompts], general: GramAccumulator | None,
           domain: GramAccumulator | None, config: MACEConfig) -> dict[str, torch.Tensor]:
    """Stage 1 (Eq. 7): co-existing tokens of the concepts' prompts take the mapped
    prompts' keys and values, in one closed-form solve for every projection.

    Args:
        adapter: the pipeline's adapter.
        original: ``W0`` by UNet parameter name.
        items: every concept's prompts and mapped prompts.
        general: ``P2`` (all-token Gram of the general captions) or ``None``.
        domain: ``D2`` or ``None``.
        config: ``lam``, ``preserve_scale``, ``domain_weight``...

    Returns:
        ``W'`` by UNet parameter name.
    """
    terms = [MappingTerm(original, coexisting_grams(adapter, items), 1.0)]
    terms += preservation_terms(original, general, domain, stage1_scale(config), config)
    return solve_projections(original, config.lam, terms)
