"""erasure: erase concepts from text-to-image diffusion models, measure the erasure,
and hand back weights that load in diffusers.

    import erasure
    pipe = erasure.load_pipeline("mini-sd")
    edited = erasure.erase(pipe, "uce", "circle")
    edited.save("circle.safetensors")
    erasure.apply(pipe, "circle.safetensors")
"""

from __future__ import annotations

__version__ = "0.1.0"

import dataclasses
from pathlib import Path

from .concepts import CONCEPT_TYPES, Concept, check_concept_type, parse_concepts
from .config import build_config, packaged_overrides, read_yaml
from .errors import ErasureError
from .loading import load_pipeline
from .training import RunOptions
from .weights import BaseMismatchWarning, EditedWeights, apply

__all__ = [
    "BaseMismatchWarning",
    "CONCEPT_TYPES",
    "Concept",
    "EditedWeights",
    "ErasureError",
    "RunOptions",
    "apply",
    "erase",
    "evaluate",
    "load_pipeline",
    "resolve_config",
]


def __getattr__(name: str):
    """``erasure.evaluate`` is ``erasure.eval.evaluate``, imported on first use (the
    evaluator's imports are not needed to erase)."""
    if name == "evaluate":
        from .eval import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_config(method: str, concept_type: str = "object", config=None, **overrides):
    """The method's config: paper defaults < ``configs/<method>/<concept_type>.yaml`` <
    ``config`` (a mapping, a YAML path or a config instance) < ``overrides``.

    Args:
        method: a registered method's name.
        concept_type: one of ``CONCEPT_TYPES``; selects the packaged YAML.
        config: overrides as a mapping, a YAML file or a config instance.
        **overrides: individual fields, applied last (``**{"uce.lam": 0.5}`` for nested ones).
    """
    from .methods import get_method

    spec = get_method(method)
    check_concept_type(concept_type)
    if isinstance(config, spec.config_class):
        user = dataclasses.asdict(config)
    elif isinstance(config, (str, Path)):
        user = read_yaml(config)
    else:
        user = dict(config or {})
    run_options = sorted((set(user) | set(overrides)) & {f.name for f in dataclasses.fields(RunOptions)})
    if run_options:
        raise ErasureError(
            f"{run_options[0]} is a run option, not part of the {method} config: pass run=RunOptions("
            f"{run_options[0]}=...) (the erase command: --resume, --overwrite, --checkpoint-every)"
        )
    return build_config(spec.config_class, packaged_overrides(method, concept_type), user, overrides)


def erase(
    pipe, method: str, concepts, concept_type: str = "object", config=None, run: RunOptions | None = None, **overrides
) -> EditedWeights:
    """Erase concepts from a pipeline with one of the registered methods.

    Args:
        pipe: a pipeline from ``load_pipeline``; it is left unchanged.
        method: ``"uce"``, ``"esd"``, ``"rece"`` or ``"mace"``.
        concepts: ``"airplane, car"``, a list of names, or ``Concept`` objects
            (``"cat->dog"`` maps a concept to a chosen target).
        concept_type: one of ``CONCEPT_TYPES``; selects ``configs/<method>/<type>.yaml``.
        config: overrides as a mapping, a YAML file or a config instance.
        run: how a training method runs: checkpoint folder and interval, resume,
            overwrite, gradient checkpointing (``RunOptions``; default: its defaults).
        **overrides: individual config fields, applied last.

    Returns:
        ``EditedWeights``: ``.apply(pipe)``, ``.save(path)``.
    """
    from .methods import get_method

    spec = get_method(method)
    resolved = resolve_config(method, concept_type, config, **overrides)
    if isinstance(concepts, str):
        parsed = parse_concepts(concepts)
    else:
        concepts = [concepts] if isinstance(concepts, Concept) else concepts
        parsed = [c if isinstance(c, Concept) else parse_concepts([c])[0] for c in concepts]
    if not parsed:
        raise ErasureError("no concepts given: name at least one concept to erase")
    return spec.run(pipe, parsed, resolved, run)
