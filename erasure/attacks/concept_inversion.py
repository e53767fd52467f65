"""concept-inversion: Circumventing Concept Erasure (Pham, Marshall, Cohen, Hegde; ICLR 2024,
"Circumventing Concept Erasure Methods For Text-To-Image Generative Models";
NYU-DICE-Lab/circumventing-concept-erasure).

Textual inversion of one new token ``<c>`` on the *erased* model: with everything else
frozen, the token's vector ``v`` is trained so that the erased model denoises images of
the concept made by the base model,

    min_v E_{x0, t, eps, template} || eps - eps'(x_t, t, T'(template(<c>))) ||^2

(or the v-prediction target), ``x0`` a VAE posterior sample of a training image
(flipped at random), ``t`` uniform over the training noise levels, ``template`` drawn
at random. Then every attacked row is generated with ``<c>`` in place of the concept's
words (or before the prompt when it does not name the concept, as synonym rows).

Authors' settings (``esd/train.sh``, the same in their other method folders except
``sld/``; ``esd/concept_inversion.py``): 5,000 steps, batch 4 x 4 accumulation, lr
5e-3 scaled by batch x accumulation (0.08), AdamW (0.9, 0.999, weight decay 1e-2),
25 training images from the base model, random horizontal flip, one vector per token,
initialised from an initializer word.

Deviations:
- the token's vector enters through a forward hook on each text encoder's token table
  (``tokens.injected_tokens``), so the tokenizer and tables are never resized or
  modified; SDXL trains one vector per text encoder;
- templates are this package's own short lists per concept kind (``TEMPLATES``), not
  the authors' (the textual-inversion example's); mini-sd's config uses the world's
  phrasings;
- the training images are generated with the evaluator's settings and seeds drawn from
  the attack's seed (the authors' are unseeded), from the concept's attacked prompts in
  turn (the authors prompt with the concept name);
- fp32 unless the pipeline is half precision (the authors use fp16 mixed precision).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..adapters import PromptEmbeddings
from ..config import setting
from ..errors import ErasureError
from .base import Attack, AttackConfig, AttackResult, AttackTarget, Row, Stopwatch, concept_words, unit_generator, unit_seed
from .tokens import SLOT, encode_with_vectors

TEMPLATES = {
    "object": ["a photo of a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}", "a close-up of a {}",
               "a rendering of a {}", "a photo of the {}", "a small {}", "a large {}", "a {}"],
    "style": ["a painting in the style of {}", "an artwork in the style of {}", "a picture in the style of {}",
              "a drawing in the style of {}", "art by {}", "a landscape in the style of {}"],
    "person": ["a photo of {}", "a portrait of {}"],
}


@dataclass
class ConceptInversionConfig(AttackConfig):
    """Concept inversion's settings (authors' defaults; sources in the module docstring).

    Attributes:
        steps: optimiser steps (authors: 5,000).
        batch_size: examples per forward pass (authors: 4).
        grad_accumulation: passes per optimiser step (authors: 4).
        lr: base learning rate (authors: 5e-3).
        scale_lr: multiply ``lr`` by ``batch_size * grad_accumulation`` (authors: yes).
        weight_decay: AdamW's (authors: 1e-2).
        num_images: training images from the base model (authors: 25).
        templates: ``object``, ``style``, ``person``, a list of templates with ``{}``, or
            ``prompts``: each training image's own prompt with the token in place of the
            concept (not the authors'; mini-sd's captions name a colour, and generic
            templates teach a token that carries the training images' colours).
        initializer: the word whose vector ``v`` starts from; ``auto``: the concept itself
            when it is one token, else ``object`` (``art`` for the style templates).
        flip: flip training images horizontally at random (authors: yes).
    """

    steps: int = setting(5000, min=1)
    batch_size: int = setting(4, min=1)
    grad_accumulation: int = setting(4, min=1)
    lr: float = setting(5e-3, above=0)
    scale_lr: bool = True
    weight_decay: float = setting(1e-2, min=0)
    num_images: int = setting(25, min=1)
    templates: str | list[str] = "object"
    initializer: str = "auto"
    flip: bool = True

    def check(self) -> None:
        if isinstance(self.templates, str) and self.templates not in (*TEMPLATES, "prompts"):
            raise ErasureError(f"ConceptInversionConfig.templates {self.templates!r} is unknown: use "
                               f"{', '.join(TEMPLATES)}, prompts, or a list of templates with {{}}")
        if isinstance(self.templates, list) and (not self.templates or any("{}" not in t for t in self.templates)):
            raise ErasureError("ConceptInversionConfig.templates must be a non-empty list of templates with {}")


class ConceptInversion(Attack):
    name = "concept-inversion"
    Config = ConceptInversionConfig
    scope = "concept"
    output = "token"
    budget_field = "steps"

    def run(self, target: AttackTarget, rows: list[Row]) -> list[AttackResult]:
        target.require_base(self.name)
        by_concept: dict[str, list] = {}
        for row in rows:
            by_concept.setdefault(self.concept_of(row, target.concepts), []).append(row)
        results = {}
        for concept, concept_rows in by_concept.items():
            watch = Stopwatch()
            vectors, losses = self.invert(target, concept, concept_rows)
            share = watch.share(len(concept_rows))
            token = placeholder(concept)
            for row in concept_rows:
                results[row.index] = AttackResult(row.index, row.prompt, prompt=with_placeholder(row.prompt, concept, token),
                                                  tokens=vectors, steps=self.config.steps, losses=losses, **share)
        return [results[row.index] for row in rows]

    @staticmethod
    def concept_of(row, concepts: list[str]) -> str:
        """The erased concept a row is about: its class, else the concept it names, else the first."""
        if row.label in concepts:
            return row.label
        named = concept_words(row.prompt, concepts)
        return named[0] if named else concepts[0]

    def invert(self, target: AttackTarget, concept: str, rows: list[Row]) -> tuple[dict[str, torch.Tensor], list[float]]:
        """Train the token of ``concept`` on the attacked model; its vector per text encoder and the losses."""
        config, adapter = self.config, target.adapter
        generator = unit_generator(config.seed, "concept", concept)
        mean, std, image_prompts = self._training_latents(target, concept, rows)
        own_prompts = config.templates == "prompts"
        templates = config.templates if isinstance(config.templates, list) else TEMPLATES.get(config.templates)
        start = self._initial_vectors(target, concept)
        vectors = [v.clone().float().requires_grad_(True) for v in start]
        lr = config.lr * (config.batch_size * config.grad_accumulation if config.scale_lr else 1)
        optimizer = torch.optim.AdamW(vectors, lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, eps=1e-8)
        total = adapter.training_noise.config.num_train_timesteps
        losses = []
        with torch.enable_grad(), target.frozen():
            for _ in tqdm(range(config.steps), desc=f"attack {self.name}: {concept}", unit="step", leave=False):
                optimizer.zero_grad(set_to_none=True)
                step_loss = 0.0
                for _ in range(config.grad_accumulation):
                    picks = torch.randint(len(mean), (config.batch_size,), generator=generator)
                    noise_shape = (config.batch_size, *mean.shape[1:])
                    x0 = (mean[picks] + std[picks] * torch.randn(noise_shape, generator=generator)).to(adapter.device)
                    if own_prompts:
                        prompts = [with_placeholder(image_prompts[int(i)], concept, SLOT) for i in picks]
                    else:
                        drawn = torch.randint(len(templates), (config.batch_size,), generator=generator)
                        prompts = [templates[int(i)].format(SLOT) for i in drawn]
                    noise = torch.randn(noise_shape, generator=generator).to(x0)
                    t = torch.randint(total, (config.batch_size,), generator=generator).to(adapter.device)
                    cond = encode_with_token(adapter, prompts, [v[None].expand(config.batch_size, -1) for v in vectors])
                    prediction = adapter.predict_noise(adapter.add_noise(x0, noise, t), t, cond).float()
                    loss = ((prediction - adapter.training_target(x0, noise, t).float()) ** 2).mean()
                    (loss / config.grad_accumulation).backward()
                    step_loss += loss.item() / config.grad_accumulation
                optimizer.step()
                losses.append(step_loss)
        names = list(adapter.text_encoders())
        return {name: v.detach().cpu() for name, v in zip(names, vectors)}, losses

    def _training_latents(self, target: AttackTarget, concept: str, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The VAE posterior (mean, std) of the base model's images of the concept, and of
        their mirror images when ``flip`` (drawn from at random each step), with the
        prompt each image was made from."""
        config = self.config
        base = target.require_base(self.name)
        prompts = list(dict.fromkeys(row.prompt for row in rows)) or [concept]
        seeds = [unit_seed(config.seed, "concept images", concept, i) % 2**32 for i in range(config.num_images)]
        training_rows = [dataclasses.replace(rows[0], index=i, prompt=prompts[i % len(prompts)], seed=seeds[i])
                         for i in range(config.num_images)]
        with base.original():
            images = target.render(training_rows)
        image_prompts = [row.prompt for row in training_rows]
        if config.flip:
            from PIL import ImageOps

            images += [ImageOps.mirror(image) for image in images]
            image_prompts += image_prompts
        pipe = target.pipe
        size = target.settings.resolution
        with torch.no_grad():
            pixels = pipe.image_processor.preprocess(images, height=size, width=size).to(pipe.vae.device, pipe.vae.dtype)
            posterior = pipe.vae.encode(pixels).latent_dist
        scale = pipe.vae.config.scaling_factor
        return (posterior.mean * scale).float().cpu(), (posterior.std * scale).float().cpu(), image_prompts

    def _initial_vectors(self, target: AttackTarget, concept: str) -> list[torch.Tensor]:
        adapter = target.adapter
        word = self.config.initializer
        if word == "auto":
            single = len(adapter.concept_token_ids(concept)) == 1
            word = concept if single else ("art" if self.config.templates == "style" else "object")
        ids = adapter.concept_token_ids(word)
        if len(ids) != 1:
            raise ErasureError(f"concept-inversion initializer {word!r} is {len(ids)} tokens: use a one-token word")
        return [table.weight.detach()[ids[0]] for table in adapter.token_embeddings()]


def placeholder(concept: str) -> str:
    """The text that stands for a concept's inverted token in prompts and files: ``<circle-inv>``."""
    return "<" + (re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-") or "concept") + "-inv>"


def with_placeholder(prompt: str, concept: str, token: str) -> str:
    """``prompt`` with the concept's words replaced by ``token``, or ``token`` before it."""
    replaced, count = re.subn(rf"(?<!\w){re.escape(concept)}(?!\w)", token, prompt, flags=re.I)
    return replaced if count else f"{token} {prompt}"


def encode_with_token(adapter, prompts: list[str], vectors: list[torch.Tensor]) -> PromptEmbeddings:
    """Encode prompts in which ``tokens.SLOT`` stands for one learned vector per text encoder.

    Args:
        adapter: the model's adapter.
        prompts: each naming ``SLOT`` once or more.
        vectors: per text encoder, ``(len(prompts), width)``: each prompt's vector.
    """
    return encode_with_vectors(adapter, prompts, [v[:, None] for v in vectors])
