"""What every attack shares: its interface, the model it attacks, its seeds and its results.

An ``Attack`` has a typed config (the authors' defaults, with their source in the
docstring), a ``scope`` (what one unit of work is: a prompt row, a distinct prompt, or
a concept shared by rows), and ``run(target, rows) -> list[AttackResult]``, one result
per row. The ``AttackTarget`` is the model under attack as a whole pipeline: whatever
the erasure changed (any UNet parameter, any text-encoder parameter) is inside every
call the attack makes, because white-box attacks differentiate through the pipeline's
own text encoder and UNet (``adapter.encode_ids``, ``adapter.predict_noise``) rather
than through a list of edited tensors. What an attack needs from the base model comes
through ``BaseView``: the base values of the tensors the erasure changed, swapped in
for the duration of a block.

Every unit of work draws its randomness from its own generator, seeded from the
attack's seed and the unit (``unit_generator``), never from global state: the same seed
gives the same prompt or embedding, whichever other rows run in the same batch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterator, Mapping, Protocol

import numpy as np
import torch

from ..config import SEED_BOUNDS, MethodConfig, setting
from ..errors import ErasureError
from ..generation import Conditioning, GenerationSettings, generate_in_memory
from ..training import swapped_parameters

SCOPES = ("row", "prompt", "concept")
OUTPUTS = ("prompt", "embedding", "token")


class Row(Protocol):
    """A prompt row as attacks read it (``erasure.eval.prompts.PromptRow`` is one)."""

    index: int
    prompt: str
    seed: int
    guidance: float | None
    label: str
    type: str


Judge = Callable[[list, list], list]  # (images, rows) -> one bool per image: is the concept there?


@dataclass
class AttackConfig(MethodConfig):
    """Fields every attack has.

    Attributes:
        seed: the attack's seed; each unit of work gets its own generator from it.
    """

    seed: int = setting(0, **SEED_BOUNDS)


class BaseView:
    """The base model's values of the parameters an erasure changed, for attacks that need
    the base (a target image, the original text encoder, images of the concept).

    ``original()`` swaps them into the pipeline for a block (pointer swaps: nothing is
    copied, the erased values come back on exit). A view with no tensors is the base
    itself: nothing was erased.

    Args:
        pipe: the pipeline under attack.
        originals: per pipeline component (``unet``, ``text_encoder``...), the base values
            under the component's parameter names.
    """

    def __init__(self, pipe, originals: Mapping[str, Mapping[str, torch.Tensor]] | None = None):
        self.pipe = pipe
        self.originals = {component: dict(values) for component, values in (originals or {}).items() if values}
        for component in self.originals:
            if getattr(pipe, component, None) is None:
                raise ErasureError(f"the base values are for a pipeline component {component!r} this pipeline lacks")

    @property
    def is_identity(self) -> bool:
        """True when the pipeline holds the base model itself."""
        return not self.originals

    def tensors(self, component: str) -> dict[str, torch.Tensor]:
        """The base values of one component's changed parameters (empty if it is unchanged)."""
        return dict(self.originals.get(component, {}))

    @contextmanager
    def original(self) -> Iterator[None]:
        """Within the block the pipeline is the base model."""
        with ExitStack() as stack:
            for component, values in self.originals.items():
                stack.enter_context(swapped_parameters(getattr(self.pipe, component), values))
            yield


@dataclass
class AttackTarget:
    """The model under attack and what the attacks may use.

    Attributes:
        pipe: the pipeline as attacked (erased weights applied, of any component).
        settings: how its images are generated (the evaluator's settings).
        base: the base model's values (``BaseView``); ``None`` when they are unknown,
            which attacks that need the base refuse.
        concepts: the erased concepts (the weights' own list, else the rows' classes).
        judge: ``(images, rows) -> [bool]``, is each image the row's concept; ``None``:
            no check (attacks that stop on success then run all their steps).
        judge_name: the metric behind ``judge``, for the record.
        judge_settings: that metric's config (part of what a cached result depends on).
        reference_images: the base model's images of rows (the evaluator passes its
            ``base/`` images); ``None``: generated here under ``base.original()``.
        own_images: the attacked model's images of the rows' own prompts (the evaluator's
            ``erased/`` images); ``None``: generated here.
        model_folder: the base model's folder, where ``trained_token_ids.json`` may be.
    """

    pipe: object
    settings: GenerationSettings
    base: BaseView | None
    concepts: list[str]
    judge: Judge | None = None
    judge_name: str | None = None
    judge_settings: dict | None = None
    reference_images: Callable[[list], list] | None = None
    own_images: Callable[[list], list] | None = None
    model_folder: Path | None = None

    @functools.cached_property
    def adapter(self):
        from ..adapters import adapter_for

        return adapter_for(self.pipe)

    def require_base(self, attack: str) -> BaseView:
        """The base view, or a one-line error naming the fix."""
        if self.base is None:
            raise ErasureError(f"attack {attack!r} needs the base model the weights were made from: give the base "
                               "pipeline and the erased weights (erase-eval --model BASE --weights FILE)")
        return self.base

    def render(self, rows: list[Row], conditioning: Conditioning | None = None) -> list:
        """The images of ``rows`` by the model as it is, as ``erase-eval`` generates them.

        Args:
            rows: rows (their prompts, seeds, guidance).
            conditioning: generate from it instead of the prompts.
        """
        return generate_in_memory(self.pipe, rows, self.settings, conditioning)

    def base_images(self, rows: list[Row]) -> list:
        """The base model's images of the rows' prompts, same seeds and settings."""
        if self.reference_images is not None:
            return self.reference_images(rows)
        with self.require_base("this attack").original():
            return self.render(rows)

    def attacked_images(self, rows: list[Row]) -> list:
        """The attacked model's images of the rows' own prompts."""
        return self.own_images(rows) if self.own_images is not None else self.render(rows)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block no model parameter takes a gradient (attacks differentiate with
        respect to their own variables only); every flag is restored on exit."""
        modules = [self.pipe.unet, self.pipe.vae, *self.adapter.text_encoders().values()]
        flags = [(param, param.requires_grad) for module in modules for param in module.parameters()]
        try:
            for module in modules:
                module.requires_grad_(False)
            yield
        finally:
            for param, flag in flags:
                param.requires_grad_(flag)

    def succeeded(self, images: list, rows: list[Row]) -> list[bool] | None:
        """The judge's verdict per image, or ``None`` without a judge."""
        return None if self.judge is None else [bool(v) for v in self.judge(images, rows)]


@dataclass
class AttackResult:
    """What an attack found for one row.

    Attributes:
        row_index: the row's index.
        original_prompt: the row's prompt.
        prompt: the adversarial prompt (discrete attacks; concept inversion: the prompt
            with its placeholder), or ``None``.
        embedding: what the row is generated from instead of a prompt (closed-form), or ``None``.
        tokens: concept inversion's learned vector per text encoder, or ``None``.
        success_any_step: UnlearnDiffAtk: succeeded before the attack or at an in-loop check.
        skipped: why the row was not attacked (``"pre-attack success"``), or ``None``.
        steps: optimisation steps (generations) run for this row's unit.
        seconds: this row's share of the unit's wall time.
        cpu_seconds: this row's share of the unit's CPU time (this process, all its
            threads): what the unit costs, whatever else the machine is running.
        losses: the objective per step (or per generation), for inspection.
    """

    row_index: int
    original_prompt: str
    prompt: str | None = None
    embedding: object | None = None
    tokens: dict[str, torch.Tensor] | None = None
    success_any_step: bool | None = None
    skipped: str | None = None
    steps: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    losses: list[float] = field(default_factory=list)

    def record(self) -> dict:
        """The JSON-able part (no tensors)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("embedding", "tokens")}
        values["losses"] = [round(float(v), 6) for v in self.losses]
        values["seconds"] = round(float(self.seconds), 4)
        values["cpu_seconds"] = round(float(self.cpu_seconds), 4)
        return values


class Attack:
    """Base of the attacks. Subclasses set the class attributes and implement ``run``.

    Attributes:
        name: registry key, CLI name, and the report's ``attacked-<name>`` variant.
        Config: the typed config dataclass (authors' defaults).
        scope: ``row`` (one run per row), ``prompt`` (per distinct prompt text) or
            ``concept`` (per concept, shared by its rows).
        output: ``prompt`` (a real text prompt), ``embedding`` or ``token``.
        budget_field: the config field that ``--attack-budget`` multiplies (the main
            loop's length), or ``None``.
        reads_attacked_model: ``False`` when the result depends on the base model only
            (Ring-A-Bell): erased models of one base share it.
        cached: worth keeping across runs (``False`` for closed-form, a solve in a second).
        seeded: its result depends on ``config.seed`` (``False`` for closed-form, a
            deterministic solve): only then does a restart with another seed try anything new.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    scope: ClassVar[str]
    output: ClassVar[str]
    budget_field: ClassVar[str | None] = None
    reads_attacked_model: ClassVar[bool] = True
    cached: ClassVar[bool] = True
    seeded: ClassVar[bool] = True

    def __init__(self, config):
        self.config = config
        self.notes: dict = {}  # what a run decided, for the record (e.g. the vocabulary used)

    def run(self, target: AttackTarget, rows: list[Row]) -> list[AttackResult]:
        """Attack ``rows`` of ``target``; one result per row, in row order.

        Args:
            target: the model under attack.
            rows: the rows to attack.
        """
        raise NotImplementedError

    def describe(self, target: AttackTarget) -> None:
        """Note in ``notes`` what the attack uses on ``target`` without running it (the
        vocabulary of a discrete attack), for results taken from a cache.

        Args:
            target: the model under attack.
        """
        vocabulary = getattr(self.config, "vocabulary", None)
        if vocabulary is not None:
            from .tokens import candidate_ids

            _, self.notes["vocabulary"] = candidate_ids(target.adapter, vocabulary, target.model_folder)

    def record(self) -> dict:
        """The attack's name, resolved settings and what its last run decided."""
        return {"name": self.name, "config": dataclasses.asdict(self.config), **self.notes}

    @classmethod
    def with_budget(cls, config, budget: float):
        """``config`` with the main loop's length multiplied by ``budget`` (at least 1).

        Args:
            config: a ``cls.Config``.
            budget: a factor > 0.
        """
        if cls.budget_field is None or budget == 1:
            return config
        value = getattr(config, cls.budget_field)
        return dataclasses.replace(config, **{cls.budget_field: max(1, round(value * budget))})


class Stopwatch:
    """Wall and CPU seconds since it was made, shared out over the rows of a unit of work."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def share(self, rows: int) -> dict[str, float]:
        """``seconds`` and ``cpu_seconds`` so far, divided by ``rows`` (``AttackResult`` fields).

        Args:
            rows: how many rows share the unit (at least 1 counted).
        """
        rows = max(rows, 1)
        return {"seconds": (time.perf_counter() - self.wall) / rows, "cpu_seconds": (time.process_time() - self.cpu) / rows}


def stable_hash(*parts) -> int:
    """A 64-bit number from JSON-able parts, the same in every process and Python run."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def unit_seed(seed: int, *unit) -> int:
    """The seed of one unit of work (a row, a prompt, a concept) of an attack seeded ``seed``."""
    state = np.random.SeedSequence([seed, stable_hash(*unit)]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def unit_generator(seed: int, *unit) -> torch.Generator:
    """A CPU generator for one unit of work (``unit_seed``)."""
    return torch.Generator("cpu").manual_seed(unit_seed(seed, *unit))


def row_unit(row) -> tuple:
    """What identifies a row's unit of work: its index, prompt and seed."""
    return ("row", row.index, row.prompt, row.seed)


def concept_words(prompt: str, concepts: list[str]) -> list[str]:
    """The concepts named in ``prompt`` (whole words, any case), longest first."""
    found = [c for c in concepts if re.search(rf"(?<!\w){re.escape(c)}(?!\w)", prompt, flags=re.I)]
    return sorted(found, key=len, reverse=True)
