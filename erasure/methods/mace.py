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

Deviations from the authors' code (paper followed where they differ):
- ``s`` multiplies the preservation terms once, as in Eq. 7; the authors' stage-1 code
  multiplies by ``s`` twice (effective ``s^2``).
- The general captions are ours (``mace_prompts.GENERAL_CAPTIONS``), their Gram sum
  rescaled to the 616,767 COCO 2014 captions the authors summed, so that the paper's
  ``s`` keeps its meaning (``general_equivalent_captions``; ``None`` disables it).
- The default masks are the base model's cross-attention maps (``erasure.masks``), not
  GroundingDINO + SAM, which remain available (``mask_source: grounded_sam``).
- Training images are generated latents used directly (the authors save JPEGs, then
  VAE-encode them after an ImageNet normalisation meant for classifiers).
- The attention loss is squared as in Eq. 8 (the code takes the plain norm:
  ``attention_loss: norm``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..adapters import PromptEmbeddings, StableDiffusionAdapter, adapter_for
from ..atomic import atomic_write
from ..attention import feature_size, observe_cross_attention, resize_mask
from ..closed_form import SOLVE_DTYPE, GramAccumulator, MappingTerm, solve_projections
from ..concepts import Concept
from ..errors import ErasureError
from ..generation import generation_settings
from ..concept_images import (
    MaskSource,
    attention_masks,
    decode_latents,
    encode_images,
    folder_masks,
    generate_latents,
    grounded_sam_masks,
    read_images,
)
from ..weights import EditedWeights
from . import mace_prompts

ADAPTER_NAME = "mace"
COCO_2014_CAPTIONS = 616_767  # train (414,113) + val (202,654): the authors' P1/P2 set
_CACHE_VERSION = "1"
_PROBE_PROMPTS = ["a photo of a cat on a sofa", ""]


@dataclass
class MACEConfig:
    """MACE settings. Defaults: the authors' object erasure (``configs/object/*.yaml``
    of the official code, paper Sec. 4.1); ``configs/mace/<type>.yaml`` override them.

    Attributes:
        templates: prompt templates (``{}`` = the concept): a set of
            ``mace_prompts.TEMPLATES`` (``object``, ``style``, ``celebrity``, ``nudity``)
            or your own list.
        mapping: what a concept becomes when it names no target (``"airplane->sky"``
            names one): objects -> a background, celebrities -> "a person", styles ->
            "art", nudity -> "a person wearing clothes".
        lam: weight of staying near the current weights in stages 1 and 3 (objects
            1e1..1e3; 0 for celebrities, styles and nudity).
        preserve_scale: ``s`` of stage 1 (objects 0, celebrities/styles 1e-4, nudity 7e-7).
        fuse_preserve_scale: ``s_f`` of stage 3; ``None``: the same as ``s``.
        domain_weight: ``w``, weight of the domain set relative to the general one
            (celebrities 8e3 for 1 concept up to 2e5 for 100; styles 8e4).
        domain_concepts: names whose prompts (the templates) form the domain set, e.g.
            celebrities to keep; erased concepts are removed from it.
        general_captions: ``"builtin"`` (our COCO-style captions), ``"world"`` (captions
            of the shapes world of ``mini-sd``) or a text file, one caption a line.
        general_caption_count: how many ``"world"`` captions to draw.
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
        data_dir: a folder with ``<concept>/`` images (and ``<concept> mask/`` masks) to
            use instead of generated images (the authors' layout).
        mask_source: ``attention``, ``folder``, ``grounded_sam`` or ``whole_image``.
        mask_threshold: share of the attention map's peak that counts as the concept.
        mask_timesteps: noise levels whose attention maps are averaged for a mask.
        grounding_model, sam_model, grounding_label, box_threshold: GroundingDINO + SAM
            settings (label ``None``: the concept's name).
        seed: seed of generation, timesteps, noise and LoRA initialisation.
    """

    templates: str | list[str] = "object"
    mapping: str = mace_prompts.MAPPINGS["object"]
    lam: float = 1e3
    preserve_scale: float = 0.0
    fuse_preserve_scale: float | None = None
    domain_weight: float = 0.0
    domain_concepts: list[str] = field(default_factory=list)
    general_captions: str = "builtin"
    general_caption_count: int = 1000
    general_equivalent_captions: int | None = COCO_2014_CAPTIONS
    cache_dir: str | None = None
    train_steps: int = 50
    learning_rate: float = 1e-5
    lora_rank: int = 1
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    importance_sampling: bool = True
    attention_loss: Literal["squared", "norm"] = "squared"
    end_tokens: Literal["all", "first", "none"] = "all"
    images_per_concept: int = 8
    image_prompt: str = "a photo of the {}"
    generation_steps: int | None = None
    generation_guidance: float | None = None
    resolution: int | None = None
    data_dir: str | None = None
    mask_source: MaskSource = "attention"
    mask_threshold: float = 0.4
    mask_timesteps: list[int] = field(default_factory=lambda: [200, 400, 600])
    grounding_model: str = "IDEA-Research/grounding-dino-base"
    sam_model: str = "facebook/sam-vit-huge"
    grounding_label: str | None = None
    box_threshold: float = 0.3
    seed: int = 2024


@dataclass
class ConceptPrompts:
    """A concept's prompts and, template by template, its mapping concept's."""

    concept: Concept
    mapping: str
    prompts: list[str]
    mapped: list[str]


def erase(pipe, concepts: list[Concept], config: MACEConfig) -> EditedWeights:
    """Erase ``concepts`` from ``pipe`` (left unchanged) and return the fused projections.

    Args:
        pipe: a Stable Diffusion pipeline (SD 1.x, 2.x or SDXL) without LoRAs loaded.
        concepts: 1 to 100+ concepts; ``Concept("airplane", "sky")`` names a mapping.
        config: ``MACEConfig`` (see ``configs/mace/<concept_type>.yaml``).

    Returns:
        ``EditedWeights`` of every ``attn2.to_k/to_v``; ``extra`` holds the seconds spent
        per stage and each LoRA's first and last loss.
    """
    check_config(config)
    adapter = adapter_for(pipe)
    refuse_loaded_adapters(adapter.unet)
    original = {name: w.detach().clone() for name, w in adapter.cross_attention_weights().items()}
    concept_prompts = [prompts_for(c, config) for c in concepts]
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    general, domain = preservation_grams(adapter, concepts, config)
    seconds["preservation_statistics"] = time.perf_counter() - clock

    clock = time.perf_counter()
    refined = refine(adapter, original, concept_prompts, general, domain, config)
    seconds["stage1_refinement"] = time.perf_counter() - clock

    clock = time.perf_counter()
    fusion = LoRAFusion(adapter.text_dim, adapter.device)
    losses = []
    for index, item in enumerate(tqdm(concept_prompts, desc="MACE: one LoRA per concept", disable=len(concepts) < 2)):
        lora, loss_curve = concept_lora(pipe, adapter, refined, item, config, seed=config.seed + index)
        fusion.add(all_token_grams(adapter, item.prompts), lora)
        losses.append(loss_curve)
    seconds["stage2_loras"] = time.perf_counter() - clock

    clock = time.perf_counter()
    fused = fuse(original, refined, fusion, general, domain, config)
    seconds["stage3_fusion"] = time.perf_counter() - clock
    return EditedWeights.from_edit(
        original,
        fused,
        method="mace",
        concepts=[str(c) for c in concepts],
        config=dataclasses.asdict(config),
        base_model=str(pipe.name_or_path),
        extra={"seconds": seconds, "lora_loss_first_last": losses},
    )


# ---- configuration and prompts ------------------------------------------------------


def check_config(config: MACEConfig) -> None:
    """Reject settings that cannot work, with the fix in the message."""
    if isinstance(config.templates, str) and config.templates not in mace_prompts.TEMPLATES:
        raise ErasureError(
            f"unknown MACE template set {config.templates!r}: use one of {', '.join(mace_prompts.TEMPLATES)} "
            "or a list of templates containing {}"
        )
    if isinstance(config.templates, list) and (not config.templates or any("{}" not in t for t in config.templates)):
        raise ErasureError("every MACE template must contain {} where the concept goes, e.g. 'a photo of {}'")
    if "{}" not in config.image_prompt:
        raise ErasureError(f"image_prompt {config.image_prompt!r} must contain {{}} where the concept goes")
    if min(config.lam, config.preserve_scale, config.domain_weight, config.fuse_preserve_scale or 0.0) < 0:
        raise ErasureError("lam, preserve_scale, fuse_preserve_scale and domain_weight must be >= 0")
    if config.train_steps < 0 or config.lora_rank < 1 or config.images_per_concept < 1:
        raise ErasureError("train_steps must be >= 0, lora_rank and images_per_concept >= 1")
    if config.mask_source == "folder" and config.data_dir is None:
        raise ErasureError("mask_source: folder needs data_dir, a folder with '<concept>/' and '<concept> mask/'")
    if not 0 < config.mask_threshold < 1:
        raise ErasureError(f"mask_threshold must be between 0 and 1, got {config.mask_threshold}")


def templates_of(config: MACEConfig) -> list[str]:
    return list(mace_prompts.TEMPLATES[config.templates] if isinstance(config.templates, str) else config.templates)


def prompts_for(concept: Concept, config: MACEConfig) -> ConceptPrompts:
    mapping = config.mapping if concept.target is None else concept.target
    templates = templates_of(config)
    return ConceptPrompts(
        concept, mapping, [t.format(concept.text) for t in templates], [t.format(mapping).strip() for t in templates]
    )


def refuse_loaded_adapters(unet: torch.nn.Module) -> None:
    """Stage 2 adds, then removes, PEFT layers: a UNet with the user's LoRAs loaded
    would lose them, and its projections have other parameter names."""
    if any(hasattr(module, "base_layer") for module in unet.modules()):
        raise ErasureError(
            "this UNet has LoRA/PEFT layers loaded: fuse and unload them first "
            "(pipe.fuse_lora(); pipe.unload_lora_weights())"
        )


# ---- token positions ------------------------------------------------------------------


def token_ids(adapter: StableDiffusionAdapter, prompt: str) -> list[int]:
    """Token ids with start and end tokens, no padding (the first tokenizer's: SDXL's
    two tokenizers share CLIP's vocabulary, so positions agree)."""
    tokenizer = adapter.pipe.tokenizer
    return tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids


def coexisting_positions(source: list[int], target: list[int], length: int) -> tuple[list[int], list[int]]:
    """Positions shared by a concept prompt and its mapped prompt, paired one to one.

    The shared prefix (start token included), the shared suffix (end token included)
    and then the padding, paired from the end of each prompt on: every position except
    the words that differ (the concept and its mapping).
    """
    prefix = 0
    while prefix < min(len(source), len(target)) and source[prefix] == target[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(source), len(target)) - prefix and source[-1 - suffix] == target[-1 - suffix]:
        suffix += 1
    padding = length - max(len(source), len(target))

    def positions(ids: list[int]) -> list[int]:
        n = len(ids)
        return list(range(prefix)) + list(range(n - suffix, n)) + list(range(n, n + padding))

    return positions(source), positions(target)


def concept_positions(adapter: StableDiffusionAdapter, prompt: str, concept: str, end_tokens: str, length: int) -> torch.Tensor:
    """``(length,)`` booleans: the concept's tokens in ``prompt`` and the chosen end positions."""
    ids = token_ids(adapter, prompt)
    word = adapter.pipe.tokenizer(concept, add_special_tokens=False).input_ids
    starts = [i for i in range(len(ids) - len(word) + 1) if ids[i : i + len(word)] == word]
    if not word or not starts:
        raise ErasureError(f"the concept {concept!r} is not found in the prompt {prompt!r}: check the templates")
    mask = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        mask[start : start + len(word)] = True
    end = len(ids) - 1
    if end_tokens == "all":
        mask[end:] = True
    elif end_tokens == "first":
        mask[end] = True
    return mask


# ---- Gram statistics ---------------------------------------------------------------------


def coexisting_grams(adapter: StableDiffusionAdapter, items: list[ConceptPrompts]) -> GramAccumulator:
    """``sum e_f e_f^T`` (keys) and ``sum e_g e_f^T`` (cross) over every concept's prompts."""
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    for item in items:
        source, target = adapter.encode(item.prompts).hidden, adapter.encode(item.mapped).hidden
        for i, (prompt, mapped) in enumerate(zip(item.prompts, item.mapped)):
            src, tgt = coexisting_positions(token_ids(adapter, prompt), token_ids(adapter, mapped), source.shape[1])
            grams.add(source[i, src], target[i, tgt])
    return grams


def all_token_grams(adapter: StableDiffusionAdapter, prompts: list[str]) -> GramAccumulator:
    """``sum e e^T`` over every token (padding included) of ``prompts``, streamed."""
    grams = GramAccumulator(adapter.text_dim, adapter.device)
    for _, embeddings in adapter.encode_in_batches(prompts):
        grams.add(embeddings.hidden)
    grams.count = len(prompts)  # prompts, not tokens: what general_equivalent_captions rescales
    return grams


def preservation_grams(adapter, concepts: list[Concept], config: MACEConfig):
    """``(P2, D2)``, each ``None`` when its weight is zero, loaded from the cache if there."""
    if max(config.preserve_scale, fusion_scale(config)) == 0:
        return None, None
    general = cached_grams(adapter, general_captions(config), "general", config)
    erased = {c.text.lower() for c in concepts}
    names = [n for n in config.domain_concepts if n.lower() not in erased]
    domain = None
    if config.domain_weight > 0 and names:
        domain = cached_grams(adapter, [t.format(n) for n in names for t in templates_of(config)], "domain", config)
    return general, domain


def general_captions(config: MACEConfig) -> list[str]:
    if config.general_captions == "builtin":
        return list(mace_prompts.GENERAL_CAPTIONS)
    if config.general_captions == "world":
        from ..world import caption
        from ..world.data import TRAIN_SEED, sample_scenes, scene_rng

        scenes = sample_scenes(config.general_caption_count, TRAIN_SEED)
        return [caption(scene, scene_rng(TRAIN_SEED + 1, i)) for i, scene in enumerate(scenes)]
    path = Path(config.general_captions).expanduser()
    if not path.is_file():
        raise ErasureError(f"general_captions {str(path)!r}: use 'builtin', 'world' or a text file of captions")
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ErasureError(f"{path} holds no captions: write one a line")
    return captions


def cached_grams(adapter, prompts: list[str], kind: str, config: MACEConfig) -> GramAccumulator:
    """All-token Grams of ``prompts``, cached under a key of the text encoder's outputs
    and the prompts: the same model and captions never pay twice."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256((encoder_key(adapter) + "\n" + "\n".join(prompts)).encode()).hexdigest()[:24]
    path = cache_root(config) / f"{kind}-{key}.safetensors"
    if path.is_file():
        stored = load_file(str(path))
        grams = GramAccumulator(adapter.text_dim, adapter.device)
        grams.keys = stored["gram"].to(adapter.device, SOLVE_DTYPE)
        grams.cross = grams.keys.clone()
        grams.count = int(stored["count"])
        return grams
    grams = all_token_grams(adapter, prompts)
    tensors = {"gram": grams.keys.cpu().contiguous(), "count": torch.tensor(grams.count)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"kind": kind, "prompts": str(len(prompts))}))
    return grams


def cache_root(config: MACEConfig) -> Path:
    return Path(config.cache_dir).expanduser() if config.cache_dir else Path.home() / ".cache" / "erasure" / "mace"


def encoder_key(adapter) -> str:
    """A fingerprint of what the text encoder computes: its outputs for fixed prompts
    (rounded), so every family, encoder and tokenizer is covered alike."""
    hidden = adapter.encode(_PROBE_PROMPTS).hidden.float().cpu()
    digest = hashlib.sha256(torch.round(hidden * 1000).to(torch.int64).numpy().tobytes())
    digest.update(f"{_CACHE_VERSION}:{adapter.text_dim}:{tuple(hidden.shape)}".encode())
    return digest.hexdigest()


def preservation_terms(original, general, domain, scale: float, config: MACEConfig) -> list[MappingTerm]:
    """``s (P1 + w D1)`` and ``s (P2 + w D2)`` as terms mapping to the original weights."""
    terms = []
    if general is not None and scale > 0:
        size = 1.0
        if config.general_equivalent_captions is not None:
            size = config.general_equivalent_captions / max(1, general.count)
        terms.append(MappingTerm(original, general, scale * size))
    if domain is not None and scale > 0:
        terms.append(MappingTerm(original, domain, scale * config.domain_weight))
    return terms


# ---- stage 1: closed-form refinement ------------------------------------------------------


def refine(adapter, original, items: list[ConceptPrompts], general, domain, config: MACEConfig):
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
    terms += preservation_terms(original, general, domain, config.preserve_scale, config)
    return solve_projections(original, config.lam, terms)


# ---- stage 2: one LoRA per concept ----------------------------------------------------------


@dataclass
class TrainingData:
    """A concept's training latents (UNet space) and masks (``None``: whole image)."""

    latents: torch.Tensor
    masks: torch.Tensor | None


def concept_lora(pipe, adapter, refined, item: ConceptPrompts, config: MACEConfig, seed: int):
    """Train concept ``item``'s LoRA on the refined UNet; the pipe is restored after.

    Returns:
        ``({projection weight name: (B, A)}, [first loss, last loss])`` with ``B A`` the
        weight update (scale folded into ``B``); an empty dict when ``train_steps`` is 0.
    """
    if config.train_steps == 0:
        return {}, []
    generator = torch.Generator().manual_seed(seed)
    data = training_data(pipe, adapter, item, config, generator)
    with loaded_weights(adapter, refined), torch.random.fork_rng(devices=_cuda(adapter)):
        torch.manual_seed(seed)  # peft's LoRA initialisation draws from the global generator
        with temporary_lora(adapter, config.lora_rank) as layers:
            losses = train_lora(adapter, layers, data, item, config, generator)
            lora = {f"{name}.weight": lora_factors(layer) for name, layer in layers.items()}
    return lora, [losses[0], losses[-1]]


def train_lora(adapter, layers: dict, data: TrainingData, item: ConceptPrompts, config: MACEConfig, generator):
    """The attention-map loss, one image and one prompt per step (batch 1, AdamW)."""
    cond = adapter.encode(item.prompts)
    length = cond.hidden.shape[1]
    positions = torch.stack(
        [concept_positions(adapter, p, item.concept.text, config.end_tokens, length) for p in item.prompts]
    ).to(adapter.device)
    params = [p for layer in layers.values() for p in lora_parameters(layer)]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = noise_scheduler(adapter)
    weights = timestep_weights(scheduler.config.num_train_timesteps, config.importance_sampling)
    modules = adapter.cross_attention_modules()
    losses = []
    for _ in range(config.train_steps):
        image = int(torch.randint(len(data.latents), (1,), generator=generator))
        prompt = int(torch.randint(len(item.prompts), (1,), generator=generator))
        t = torch.multinomial(weights, 1, generator=generator).to(adapter.device)
        latents = data.latents[image : image + 1].to(adapter.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        mask = None if data.masks is None else data.masks[image : image + 1].to(adapter.device)
        loss = MaskedAttentionLoss(positions[prompt : prompt + 1], mask, tuple(latents.shape[-2:]), config.attention_loss)
        with observe_cross_attention(modules, loss):
            adapter.predict_noise(scheduler.add_noise(latents, noise, t), t, _select(cond, prompt))
        loss.total.backward()
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.total.detach()))
    return losses


class MaskedAttentionLoss:
    """Observer summing, over cross-attention layers, the attention that the concept's
    token positions receive at pixels inside the mask (Eq. 8)."""

    def __init__(self, positions: torch.Tensor, mask: torch.Tensor | None, latent_size, kind: str = "squared"):
        self.positions, self.mask, self.latent_size, self.kind = positions, mask, latent_size, kind
        self.total = torch.zeros(())
        self.layer_masses: list[float] = []  # per layer: mean attention on the positions inside the mask

    def __call__(self, name: str, probs: torch.Tensor) -> None:
        selected = probs.float() * self.positions[:, None, None, :].float()
        if self.mask is not None:
            inside = resize_mask(self.mask, feature_size(probs.shape[2], self.latent_size))
            selected = selected * inside[:, None, :, None].float()
        value = selected.pow(2).sum() if self.kind == "squared" else selected.norm()
        self.total = self.total.to(value.device) + value
        pixels = probs.shape[0] * probs.shape[2] if self.mask is None else inside.sum().clamp_min(1)
        self.layer_masses.append(float(selected.detach().sum() / (probs.shape[1] * pixels)))

    @property
    def mass(self) -> float:
        """Share of the attention that pixels inside the mask pay to the concept's
        positions, averaged over heads and layers (0 to 1)."""
        return sum(self.layer_masses) / max(1, len(self.layer_masses))


def masked_attention_mass(adapter, data: TrainingData, item: ConceptPrompts, config: MACEConfig, timestep: int = 300) -> float:
    """``MaskedAttentionLoss.mass`` averaged over the concept's images and prompts, at one
    noise level with fixed noise: how much the masked pixels still attend to the concept."""
    cond = adapter.encode(item.prompts)
    scheduler = noise_scheduler(adapter)
    modules = adapter.cross_attention_modules()
    generator = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for prompt, text in enumerate(item.prompts):
            positions = concept_positions(adapter, text, item.concept.text, config.end_tokens, cond.hidden.shape[1])
            for image in range(len(data.latents)):
                latents = data.latents[image : image + 1].to(adapter.device)
                noise = torch.randn(latents.shape, generator=generator).to(latents)
                t = torch.tensor([timestep], device=adapter.device)
                mask = None if data.masks is None else data.masks[image : image + 1].to(adapter.device)
                loss = MaskedAttentionLoss(positions[None].to(adapter.device), mask, tuple(latents.shape[-2:]))
                with observe_cross_attention(modules, loss):
                    adapter.predict_noise(scheduler.add_noise(latents, noise, t), t, _select(cond, prompt))
                total += loss.mass
    return total / (len(item.prompts) * len(data.latents))


def timestep_weights(num_timesteps: int, importance_sampling: bool) -> torch.Tensor:
    """Sampling weights of the training timesteps: concept-focal (paper Sec. 3.3) or uniform."""
    t = torch.arange(num_timesteps, dtype=torch.float64)
    if not importance_sampling:
        return torch.ones_like(t)
    return torch.sigmoid(0.05 * (t - 200)) - torch.sigmoid(0.05 * (t - 400))


def noise_scheduler(adapter):
    """A DDPM scheduler with the model's training noise schedule (for ``add_noise``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(adapter.pipe.scheduler.config)


@contextmanager
def temporary_lora(adapter, rank: int):
    """PEFT LoRA layers on every ``attn2.to_k/to_v``, removed afterwards with the UNet's
    own ``requires_grad`` flags restored (PEFT freezes everything else)."""
    from peft import LoraConfig

    unet = adapter.unet
    flags = {name: p.requires_grad for name, p in unet.named_parameters()}
    names = list(adapter.cross_attention_projections())
    lora_config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=names)
    unet.add_adapter(lora_config, adapter_name=ADAPTER_NAME)
    try:
        layers = {name: unet.get_submodule(name) for name in names}
        for layer in layers.values():
            for p in lora_parameters(layer):  # train in float32 whatever the UNet's dtype
                p.data = p.data.float()
        yield layers
    finally:
        unet.unload_lora()
        for name, p in unet.named_parameters():
            p.requires_grad_(flags[name])


def lora_parameters(layer) -> list[torch.nn.Parameter]:
    return [layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight]


def lora_factors(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B * scaling, A)``: the layer's weight update is their product."""
    up, down = layer.lora_B[ADAPTER_NAME].weight, layer.lora_A[ADAPTER_NAME].weight
    return (up.detach().float() * layer.scaling[ADAPTER_NAME]).clone(), down.detach().float().clone()


@contextmanager
def loaded_weights(adapter, tensors: dict[str, torch.Tensor]):
    """The UNet with ``tensors`` in place of its parameters, restored on exit."""
    params = dict(adapter.unet.named_parameters())
    saved = {name: params[name].detach().clone() for name in tensors}
    try:
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def _select(cond: PromptEmbeddings, index: int) -> PromptEmbeddings:
    pooled = None if cond.pooled is None else cond.pooled[index : index + 1]
    return PromptEmbeddings(cond.hidden[index : index + 1], cond.token_counts[index : index + 1], pooled)


def _cuda(adapter) -> list:
    return [adapter.device] if adapter.device.type == "cuda" else []


# ---- stage 2 data: images of the concept and their masks ------------------------------------


def training_data(pipe, adapter, item: ConceptPrompts, config: MACEConfig, generator) -> TrainingData:
    """Latents of the concept's images (generated by the base model, or the user's) and masks."""
    concept = item.concept.text
    settings = generation_settings(pipe, num_inference_steps=config.generation_steps,
                                   guidance_scale=config.generation_guidance, resolution=config.resolution)
    images = None
    if config.data_dir is not None:
        folder = Path(config.data_dir).expanduser() / concept
        if not folder.is_dir():
            raise ErasureError(f"no training images for {concept!r}: expected a folder {folder}")
        images = read_images(folder)
        latents = encode_images(pipe, images, settings.resolution)
    else:
        prompt = config.image_prompt.format(concept)
        latents = generate_latents(pipe, prompt, config.images_per_concept, generator, settings)
    return TrainingData(latents.float().cpu(), concept_masks(pipe, adapter, item, config, latents, images, generator))


def concept_masks(pipe, adapter, item, config: MACEConfig, latents, images, generator) -> torch.Tensor | None:
    concept = item.concept.text
    if config.mask_source == "whole_image":
        return None
    if config.mask_source == "folder":
        return folder_masks(Path(config.data_dir).expanduser() / f"{concept} mask", len(latents))
    if config.mask_source == "grounded_sam":
        images = images if images is not None else decode_latents(pipe, latents)
        label = config.grounding_label or concept
        return grounded_sam_masks(images, label, config.grounding_model, config.sam_model, config.box_threshold, adapter.device)
    prompt = config.image_prompt.format(concept)
    cond = adapter.encode([prompt])
    positions = concept_positions(adapter, prompt, concept, "none", cond.hidden.shape[1])[None].to(adapter.device)
    scheduler = noise_scheduler(adapter)
    return attention_masks(
        adapter, latents.to(adapter.device), cond, positions, config.mask_timesteps, scheduler.add_noise,
        config.mask_threshold, generator,
    )


# ---- stage 3: closed-form fusion ---------------------------------------------------------------


class LoRAFusion:
    """Streams stage 3's sums over concepts: ``G = sum_i G_i`` and, per matrix,
    ``sum_i dW_i G_i`` (with ``G_i`` the Gram of concept i's prompt tokens). Memory:
    one Gram and one weight-sized sum per matrix, however many concepts."""

    def __init__(self, dim: int, device):
        self.grams = GramAccumulator(dim, device)
        self.updates: dict[str, torch.Tensor] = {}
        self.concepts = 0

    def add(self, concept_grams: GramAccumulator, lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.grams.keys += concept_grams.keys
        self.grams.cross += concept_grams.keys
        for name, (up, down) in lora.items():
            # (B A) G_i = B (A G_i): rank-r factors keep this O(out * dim).
            product = up.to(self.grams.keys) @ (down.to(self.grams.keys) @ concept_grams.keys)
            self.updates[name] = self.updates[name] + product if name in self.updates else product
        self.concepts += 1

    def terms(self, refined: dict[str, torch.Tensor]) -> list[MappingTerm]:
        """``sum_i (W' + dW_i) G_i = W' G + sum_i dW_i G_i``, and ``G`` on the left."""
        terms = [MappingTerm(refined, self.grams, 1.0)]
        if self.updates:
            terms.append(constant_term(self.updates, self.grams.keys.shape[0], self.grams.keys.device))
        return terms


def constant_term(values: dict[str, torch.Tensor], dim: int, device) -> MappingTerm:
    """A term adding ``values_l`` to the right-hand side and nothing to the Gram sum:
    ``MappingTerm`` contributes ``M_l C`` and ``G``; here ``M_l = values_l``, ``C = I``, ``G = 0``."""
    grams = GramAccumulator(dim, device)
    grams.cross = torch.eye(dim, dtype=SOLVE_DTYPE, device=device)
    return MappingTerm(values, grams, 1.0)


def fusion_scale(config: MACEConfig) -> float:
    """``s_f``: its own setting, or ``s``."""
    return config.preserve_scale if config.fuse_preserve_scale is None else config.fuse_preserve_scale


def fuse(original, refined, fusion: LoRAFusion, general, domain, config: MACEConfig):
    """Stage 3 (Eq. 10): one weight per matrix that carries every concept's LoRA on its prompts.

    Args:
        original: ``W0`` (the preservation terms' targets, as in stage 1).
        refined: ``W'``, the anchor.
        fusion: the streamed sums of every concept's LoRA.
        general, domain: ``P2``, ``D2`` or ``None``.
        config: ``lam``, ``fuse_preserve_scale``, ``domain_weight``...
    """
    terms = fusion.terms(refined) + preservation_terms(original, general, domain, fusion_scale(config), config)
    return solve_projections(refined, config.lam, terms)

