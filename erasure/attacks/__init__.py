"""Attacks that measure how much of an erased concept an adversary gets back.

    erase-eval --prompts shapes/circle --weights circle.safetensors --attack unlearndiffatk,ring-a-bell

Four attacks, each following its paper and the authors' code (the module docstrings
name the sources, the settings and the deviations):

- ``closed-form``: RECE's adversarial embedding for the cross-attention keys and values
  (Gong et al., ECCV 2024); an embedding, not a prompt.
- ``unlearndiffatk``: UnlearnDiffAtk (Zhang et al., ECCV 2024), white-box prompt tokens
  found with the erased model as a diffusion classifier; a real text prompt.
- ``ring-a-bell``: Ring-A-Bell (Tsai et al., ICLR 2024), a genetic search for a prompt
  whose base-text-encoder encoding is the prompt's plus a concept vector; model-agnostic.
- ``concept-inversion``: CCE (Pham et al., ICLR 2024), textual inversion of a new token
  on the erased model from the base model's images of the concept.

Each is an ``Attack`` (``base``) with a typed config; ``attack_config`` resolves it:
the dataclass defaults, then ``configs/attacks/<name>/<model>.yaml`` for a bundled
model that has one (the mini-sd settings), then the caller's overrides, then the budget.
The package is core-level: the evaluator (``erasure.eval.attack``) passes in the judge
and the images; nothing here imports ``eval`` or ``world``.
"""

from __future__ import annotations

from typing import Mapping

from ..config import build_config, configs_dir, read_yaml
from ..errors import ErasureError
from .base import Attack, AttackConfig, AttackResult, AttackTarget, BaseView
from .closed_form import DEFAULT_REG, ClosedFormAttack, closed_form_embedding, generate_from_embedding
from .concept_inversion import ConceptInversion
from .ring_a_bell import RingABell
from .unlearndiffatk import UnlearnDiffAtk

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (ClosedFormAttack, UnlearnDiffAtk, RingABell, ConceptInversion)
}

__all__ = ["ATTACKS", "DEFAULT_REG", "Attack", "AttackConfig", "AttackResult", "AttackTarget", "BaseView",
           "attack_config", "build_attack", "closed_form_embedding", "generate_from_embedding", "get_attack",
           "parse_attack_names"]


def get_attack(name: str) -> type[Attack]:
    """The attack class registered as ``name``, or a one-line error listing the names."""
    if name not in ATTACKS:
        raise ErasureError(f"unknown attack {name!r}: use one of {', '.join(ATTACKS)}")
    return ATTACKS[name]


def parse_attack_names(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"closed-form, ring-a-bell"`` (or a list) -> checked names, in order, once each."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise ErasureError(f"--attack is empty: name at least one of {', '.join(ATTACKS)}")
    for name in names:
        get_attack(name)
    return list(dict.fromkeys(names))


def model_settings_file(name: str, model: str):
    """``configs/attacks/<name>/<model>.yaml`` when the model has settings of its own there
    (the bundled mini-sd does), else ``None``."""
    path = configs_dir() / "attacks" / name / f"{model}.yaml"
    return path if "/" not in model and path.is_file() else None


def attack_config(name: str, model: str, overrides: Mapping | None = None, budget: float = 1.0):
    """An attack's config: defaults < the model's settings file < ``overrides`` < ``budget``.

    Args:
        name: a registered attack.
        model: the base model's name (``"mini-sd"`` selects ``configs/attacks/<name>/mini-sd.yaml``).
        overrides: config fields (``--set attack.<name>.<key>=``).
        budget: multiplies the main loop's length (``Attack.budget_field``); > 0.
    """
    cls = get_attack(name)
    check_budget(budget)
    path = model_settings_file(name, model)
    config = build_config(cls.Config, read_yaml(path) if path else {}, dict(overrides or {}),
                          source=f"attack.{name} option")
    return cls.with_budget(config, budget)


def build_attack(name: str, model: str, overrides: Mapping | None = None, budget: float = 1.0) -> Attack:
    """The attack ``name`` with its resolved config (``attack_config``); ``attack.notes``
    records which model settings file was applied."""
    attack = get_attack(name)(attack_config(name, model, overrides, budget))
    path = model_settings_file(name, model)
    attack.notes["settings_file"] = None if path is None else f"configs/attacks/{name}/{path.name}"
    attack.notes["budget"] = budget
    return attack


def check_budget(budget: float) -> None:
    """Refuse a budget that is not a finite number > 0."""
    import math

    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ErasureError(f"--attack-budget {budget} must be a finite number > 0: e.g. 1 (the attacks' own "
                           "lengths) or 0.5 (half their steps)")
