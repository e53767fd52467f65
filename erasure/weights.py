"""The one weight format: a ``.safetensors`` file of the changed tensors of a pipeline's
UNet and text encoders.

Format 2 (written now): UNet keys are the diffusers UNet parameter names, bare as in
format 1, so ``pipe.unet.load_state_dict(load_file(path), strict=False)`` keeps
loading every UNet tensor; text-encoder keys are ``text_encoder.<name>`` and
``text_encoder_2.<name>`` (diffusers' component names; no UNet parameter name starts
with them), ``<name>`` being the encoder's ``state_dict()`` name in the transformers
that wrote it. Diffusers' own ``unet.`` prefix is left out on purpose: with it, that
plain UNet load would silently load nothing. Metadata ``components`` lists the components held and
``key_layout`` records, per text encoder, whether its names carry transformers 4.x's
``text_model.`` prefix (transformers 5 dropped it for ``CLIPTextModel``): a
``load_state_dict(..., strict=False)`` with the other layout loads nothing and says so
only in ``unexpected_keys``. ``apply`` matches every name to a parameter of the
pipeline at hand, adding or removing that prefix, and refuses a name that matches none.
Format 1 (UNet only, no component metadata) still loads.

In memory (``EditedWeights.tensors``) names are the file's keys; ``components`` groups
them by component.
The header metadata records what made the file and which base model it belongs to;
``erasure.apply`` checks that before touching a pipeline.

The base-model fingerprint is a few statistics and sampled values of every original
tensor the file replaces, in every component, compared with a tolerance rather than hashed: a base model
loaded in float16 or bfloat16 is the same base model, another checkpoint is not. It
must cover exactly the tensors the file holds: a tensor without one would be applied
unchecked, so a missing, empty or malformed fingerprint is refused unless the caller
asks for no check (``check_base=False``, ``erase-eval --no-check-base``). Unchecked, a
base that differs (or cannot be checked) is applied with a ``BaseMismatchWarning``:
that is how a text encoder is transferred to another model of its family. Shapes are
checked either way: another family is refused.

NaN or infinite values are never saved, loaded or applied: a diverged edit is an error
naming the settings that produced it, not a model that scores as a perfect erasure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_dir, atomic_write, remove_orphans, reported_write_errors
from .errors import ErasureError

FORMAT_NAME = "erasure"
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")  # 1: UNet tensors under bare names
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")  # diffusers' attribute and key prefixes
TEXT_MODEL_PREFIX = "text_model."  # transformers 4.x CLIPTextModel names (5.x: none)
_PROBE_POINTS = 8
# bfloat16 keeps 8 bits of mantissa: a base model loaded in bf16 must still match.
_PROBE_RTOL, _PROBE_ATOL = 2e-2, 1e-3


def tensor_fingerprint(tensor: torch.Tensor) -> list[float]:
    """Mean, standard deviation and values at fixed positions of one tensor."""
    flat = tensor.detach().flatten().float().cpu()
    positions = torch.linspace(0, flat.numel() - 1, _PROBE_POINTS).long()
    return [flat.mean().item(), flat.std().item(), *flat[positions].tolist()]


def fingerprint(tensors: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {name: tensor_fingerprint(tensors[name]) for name in sorted(tensors)}


def _is_tensor_fingerprint(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2 + _PROBE_POINTS
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _suspect_settings(config: dict) -> str:
    """The settings to check when an edit diverged: the non-finite ones if any, else
    every real-valued one (``lam=0, erase_scale=1``)."""
    numbers = {key: value for key, value in config.items() if isinstance(value, float)}
    suspects = {key: value for key, value in numbers.items() if not math.isfinite(value)} or numbers
    return ", ".join(f"{key}={value:g}" for key, value in suspects.items()) or "its settings"


def _versions() -> dict[str, str]:
    from importlib.metadata import version  # not ``import diffusers``: saving needs no seconds of imports

    from . import __version__

    return {
        "erasure": __version__,
        "torch": torch.__version__,
        "diffusers": version("diffusers"),
        "transformers": version("transformers"),
        "python": platform.python_version(),
    }


class BaseMismatchWarning(UserWarning):
    """Weights applied unchecked (``check_base=False``) to a model whose tensors differ
    from the base they were made for: a plug-and-play transfer, not the measured model."""


def split_name(name: str) -> tuple[str, str]:
    """``(component, parameter name)`` of a name in ``EditedWeights.tensors``.

    Args:
        name: ``"text_encoder.<name>"``, ``"text_encoder_2.<name>"``, or a bare UNet name.
    """
    head, dot, rest = name.partition(".")
    if dot and head in COMPONENTS[1:]:
        return head, rest
    return "unet", name


def joined_name(component: str, name: str) -> str:
    """The name of a component's parameter in ``EditedWeights.tensors`` (UNet names bare).

    Args:
        component: ``"unet"``, ``"text_encoder"`` or ``"text_encoder_2"``.
        name: the parameter's name inside that component.
    """
    return name if component == "unet" else f"{component}.{name}"


def _key_layout(names) -> str:
    """How a text encoder's names were written: with transformers 4.x's ``text_model.``
    prefix (and 5.x's ``CLIPTextModelWithProjection``), or without (5.x ``CLIPTextModel``)."""
    return TEXT_MODEL_PREFIX if any(name.startswith(TEXT_MODEL_PREFIX) for name in names) else ""


def _modules(target) -> dict[str, torch.nn.Module]:
    """The editable components of a pipeline, or ``{"unet": target}`` for a bare UNet."""
    if isinstance(target, torch.nn.Module):
        return {"unet": target}
    return {c: getattr(target, c) for c in COMPONENTS if isinstance(getattr(target, c, None), torch.nn.Module)}


@dataclass(frozen=True)
class EditedWeights:
    """The result of an erasure: new values for some tensors of a pipeline's UNet and text
    encoders, and their provenance.

    Attributes:
        tensors: new values by name: UNet parameter names bare (``down_blocks.0...``),
            text-encoder names prefixed with their component (``text_encoder.encoder...``,
            ``text_encoder_2.text_model...``); ``components`` groups them.
        method: registry name of the method that made them (``"uce"``, ``"esd"``...).
        concepts: the erased concepts as given.
        config: the fully resolved method config.
        base_model: the base model's id or path.
        base_fingerprint: ``fingerprint()`` of the original tensors these replace, under
            the same names (as read from a file: possibly malformed, which ``check_base``
            refuses).
        extra: method-specific results (e.g. RECE's chosen epoch), JSON-serialisable.
    """

    tensors: dict[str, torch.Tensor]
    method: str
    concepts: list[str]
    config: dict
    base_model: str
    base_fingerprint: dict[str, list[float]] | None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_edit(cls, original: dict[str, dict[str, torch.Tensor]], new: dict[str, dict[str, torch.Tensor]],
                  **provenance) -> "EditedWeights":
        """Build from the original and new values of the same tensors, per component.

        Args:
            original: ``{component: {parameter name: original value}}``.
            new: the same components and names, new values.
            provenance: ``method``, ``concepts``, ``config``, ``base_model``, ``extra``.
        """
        unknown = sorted(set(new) - set(COMPONENTS))
        if unknown:
            raise ErasureError(f"an edit of {unknown[0]!r}: the weight format holds {', '.join(COMPONENTS)} tensors")
        tensors, before = {}, {}
        for component, values in new.items():
            for name, value in values.items():
                key = joined_name(component, name)
                tensors[key] = value.detach().to("cpu", torch.float32).contiguous()
                before[key] = original[component][name]
        return cls(tensors=tensors, base_fingerprint=fingerprint(before), **provenance)

    @property
    def components(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{component: {parameter name: new value}}``, components in pipeline order."""
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for name in sorted(self.tensors, key=lambda n: COMPONENTS.index(split_name(n)[0])):
            component, rest = split_name(name)
            grouped.setdefault(component, {})[rest] = self.tensors[name]
        return grouped

    def only(self, components) -> "EditedWeights":
        """These weights restricted to some components (with their fingerprints), e.g. the
        text encoder alone for a plug-and-play transfer to another model of the family.

        Args:
            components: names among ``self.components``.
        """
        wanted = [components] if isinstance(components, str) else list(components)
        missing = [c for c in wanted if c not in self.components]
        if missing:
            raise ErasureError(
                f"these weights hold no {missing[0]} tensors: choose among {', '.join(self.components) or 'none'}"
            )
        keep = [name for name in self.tensors if split_name(name)[0] in wanted]
        prints = self.base_fingerprint
        if isinstance(prints, dict):
            prints = {name: value for name, value in prints.items() if split_name(name)[0] in wanted}
        return dataclasses.replace(self, tensors={name: self.tensors[name] for name in keep}, base_fingerprint=prints)

    def check_finite(self) -> None:
        """Raise ``ErasureError`` if a tensor holds NaN or infinity, naming the settings to check."""
        for name, value in self.tensors.items():
            if not torch.isfinite(value).all():
                raise ErasureError(
                    f"{self.method} produced NaN or infinite values in {name}: check its settings "
                    f"({_suspect_settings(self.config)}) and erase again"
                )

    def _fingerprint_problem(self) -> str | None:
        """What is wrong with ``base_fingerprint``, or ``None`` if it covers exactly the tensors."""
        prints = self.base_fingerprint
        if not isinstance(prints, dict) or not all(
            isinstance(name, str) and _is_tensor_fingerprint(value) for name, value in prints.items()
        ):
            return "a malformed base fingerprint"
        if not prints:
            return "no base fingerprint"
        unlisted = sorted(set(self.tensors) - set(prints))
        if unlisted:
            return f"no base fingerprint for {unlisted[0]}"
        foreign = sorted(set(prints) - set(self.tensors))
        if foreign:
            return f"a base fingerprint for {foreign[0]}, a tensor they do not hold"
        return None

    # -- applying ----------------------------------------------------------------

    def _targets(self, pipe) -> dict[str, tuple[torch.nn.Module, dict[str, str]]]:
        """Per component: the pipeline's module and, for each tensor held, the name of the
        parameter it replaces (text-encoder names matched with or without ``text_model.``).
        Refuses, checked or not, a component or parameter the pipeline lacks and a shape
        that differs (a model of another family)."""
        modules, targets = _modules(pipe), {}
        for component, values in self.components.items():
            if component not in modules:
                where = "a UNet alone: pass the pipeline" if isinstance(pipe, torch.nn.Module) else "this pipeline"
                raise ErasureError(f"these weights edit the {component}, which {where} lacks: they were made for "
                                   f"{self.base_model!r}")
            params = dict(modules[component].named_parameters())
            names = {}
            for name, value in values.items():
                candidates = [name] if component == "unet" else [
                    name, TEXT_MODEL_PREFIX + name, name.removeprefix(TEXT_MODEL_PREFIX)]
                found = next((c for c in candidates if c in params), None)
                if found is None:
                    raise ErasureError(
                        f"these weights edit {joined_name(component, name)!r}, which this pipeline's {component} "
                        f"({type(modules[component]).__name__}) does not have: they were made for "
                        f"{self.base_model!r}; load a model of that family"
                    )
                if tuple(params[found].shape) != tuple(value.shape):
                    raise ErasureError(
                        f"{joined_name(component, name)} has shape {tuple(value.shape)} in the weights but "
                        f"{tuple(params[found].shape)} in this pipeline's {component}: the weights were made for "
                        f"{self.base_model!r}, a model of another family; load a model of that family"
                    )
                names[name] = found
            targets[component] = (modules[component], names)
        return targets

    def parameters_in(self, pipe) -> dict[str, dict[str, torch.nn.Parameter]]:
        """The parameters of ``pipe`` these weights replace, per component, under the
        component's own names (``text_model.`` added or removed as the installed
        transformers names it): what an attack reads as the base values before applying.

        Args:
            pipe: a pipeline of the weights' family (another family is refused).
        """
        parameters = {}
        for component, (module, names) in self._targets(pipe).items():
            params = dict(module.named_parameters())
            parameters[component] = {found: params[found] for found in names.values()}
        return parameters

    def _differing(self, targets) -> list[str]:
        """The names whose current value is not the base value the fingerprint recorded."""
        differing = []
        for component, (module, names) in targets.items():
            params = dict(module.named_parameters())
            for name, found in names.items():
                key = joined_name(component, name)
                actual = torch.tensor(tensor_fingerprint(params[found]))
                if not torch.allclose(actual, torch.tensor(self.base_fingerprint[key]), rtol=_PROBE_RTOL, atol=_PROBE_ATOL):
                    differing.append(key)
        return differing

    def check_base(self, pipe) -> None:
        """Raise ``ErasureError`` unless every component these weights edit is that of the
        base model they were made for (every tensor, compared with its fingerprint).

        Args:
            pipe: the pipeline the weights are about to be loaded into (a UNet alone is
                accepted for UNet-only weights).
        """
        problem = self._fingerprint_problem()
        if problem is not None:
            raise ErasureError(
                f"these weights have {problem}, so the base model cannot be checked: re-create them with erase, "
                "or apply them unchecked with check_base=False (erase-eval: --no-check-base)"
            )
        differing = self._differing(self._targets(pipe))
        if differing:
            component, name = split_name(differing[0])
            transfer = (f"; to transfer the {component} alone to another model of its family, apply with "
                        f"components=[{component!r}], check_base=False") if component != "unet" else ""
            raise ErasureError(
                f"this pipeline's {component} differs from the base model the weights were made for "
                f"({self.base_model!r}) in {name} and {len(differing) - 1} other tensor(s): load that model, or apply "
                f"anyway with check_base=False (erase-eval: --no-check-base){transfer}"
            )

    def _check_applicable(self, pipe, check_base: bool):
        """The targets, after refusing non-finite values, other families and (if asked) another
        base; unchecked, a base that differs is applied with a ``BaseMismatchWarning``."""
        self.check_finite()  # refused whether or not the base is checked
        if check_base:
            self.check_base(pipe)
        targets = self._targets(pipe)
        if not check_base:
            problem = self._fingerprint_problem()
            differing = [] if problem else self._differing(targets)
            if problem or differing:
                components = " and ".join(sorted({split_name(name)[0] for name in differing}))
                what = (f"their base model cannot be checked ({problem})" if problem else
                        f"this pipeline's {components} differs from their base model, so the result is a transfer, "
                        "not the model the erasure was made and measured on")
                warnings.warn(f"applying weights made for {self.base_model!r} unchecked: {what}",
                              BaseMismatchWarning, stacklevel=3)
        return targets

    def apply(self, pipe, check_base: bool = True):
        """Load the new tensors into the pipeline's components in place (their device and
        dtype) and return ``pipe``.

        Args:
            pipe: a pipeline of the base model these weights were made for.
            check_base: refuse a pipeline that is not that base model; ``False`` applies to
                another model of the same family with a ``BaseMismatchWarning`` (NaN or
                infinite values and other families are refused either way).
        """
        targets = self._check_applicable(pipe, check_base)
        with torch.no_grad():
            for component, (module, names) in targets.items():
                params = dict(module.named_parameters())
                for name, value in self.components[component].items():
                    params[names[name]].copy_(value)
        return pipe

    @contextmanager
    def applied(self, pipe, check_base: bool = True):
        """``pipe`` with the new tensors inside the block and its own values afterwards
        (an evaluator or an exporter borrowing the caller's pipeline), every component.

        Args:
            pipe: a pipeline of the base model these weights were made for.
            check_base: refuse a pipeline that is not that base model (``False``: warn).
        """
        from .training import swapped_parameters

        targets = self._check_applicable(pipe, check_base)
        with ExitStack() as stack:
            for component, (module, names) in targets.items():
                values = {names[name]: value for name, value in self.components[component].items()}
                stack.enter_context(swapped_parameters(module, values))
            yield pipe

    # -- the file format -----------------------------------------------------------

    def metadata(self) -> dict[str, str]:
        components = self.components
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "components": json.dumps(list(components)),
            "key_layout": json.dumps({c: _key_layout(names) for c, names in components.items() if c != "unet"}),
            "method": self.method,
            "concepts": json.dumps(self.concepts),
            "config": json.dumps(self.config, sort_keys=True),
            "base_model": self.base_model,
            "base_fingerprint": json.dumps(self.base_fingerprint),
            "extra": json.dumps(self.extra, sort_keys=True),
            "versions": json.dumps(_versions()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the file (format 2) atomically; refuse to replace an existing one unless ``overwrite``.

        Of two processes saving to the same new path at once, one succeeds and the other
        gets ``ErasureError`` ("already exists"); nothing is ever half-written.

        Args:
            path: a ``.safetensors`` file name.
            overwrite: replace an existing file (atomically).

        Returns:
            ``path``.
        """
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ErasureError(f"{path}: the output must end in .safetensors")
        if path.is_dir():
            raise ErasureError(f"{path} is a folder: give a file name ending in .safetensors")
        if path.exists() and not overwrite:
            raise ErasureError(f"{path} already exists: pass --overwrite (overwrite=True) to replace it")
        self.check_finite()
        remove_orphans(path)
        with reported_write_errors(path):
            atomic_write(path, lambda tmp: save_file(self.tensors, tmp, metadata=self.metadata()), replace=overwrite)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EditedWeights":
        """Read a file written by ``save`` (format 1 or 2); safetensors only, nothing is unpickled.

        Args:
            path: the ``.safetensors`` weights file.
        """
        path = Path(path)
        if not path.is_file():
            raise ErasureError(f"{path}: no such weights file")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ErasureError(f"{path} is not a readable .safetensors file ({error}): re-create it") from None
        if meta.get("format") != FORMAT_NAME:
            raise ErasureError(f"{path} is a safetensors file but not an erasure weights file (no erasure metadata)")
        version = meta.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ErasureError(
                f"{path} has format version {version}, this erasure reads {', '.join(READABLE_VERSIONS)}: upgrade erasure"
            )
        prints = _read_fingerprint(meta.get("base_fingerprint"))
        try:
            weights = cls(
                tensors=tensors,
                method=meta["method"],
                concepts=json.loads(meta["concepts"]),
                config=json.loads(meta["config"]),
                base_model=meta["base_model"],
                base_fingerprint=prints,
                extra=json.loads(meta.get("extra", "{}")),
            )
        except (KeyError, json.JSONDecodeError) as error:
            raise ErasureError(f"{path} has damaged erasure metadata ({error}): re-create it") from None
        if not isinstance(weights.config, dict):
            raise ErasureError(f"{path} has damaged erasure metadata (config is not a mapping): re-create it")
        try:
            weights.check_finite()
        except ErasureError as error:
            raise ErasureError(f"{path} is unusable: {error}") from None
        return weights



def _read_fingerprint(text: str | None):
    """The fingerprint as stored; a missing or unparsable one is kept as such for
    ``check_base`` to refuse (or a caller with ``check_base=False`` to ignore)."""
    if text is None:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def export_pipeline(edited: EditedWeights, pipe, folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a full diffusers pipeline folder with the edit applied to every component it
    changes (``from_pretrained`` opens it).

    ``pipe`` is edited for the save and restored afterwards; the folder appears only once
    complete, and without ``overwrite`` never replaces one that exists (even one that
    appeared meanwhile).

    Args:
        edited: the erased weights, made from ``pipe``'s model.
        pipe: the base pipeline.
        folder: the folder to write.
        overwrite: replace an existing folder (atomically).

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise ErasureError(f"{folder} already exists: pass --overwrite to replace it")
    if folder.exists() and not folder.is_dir():
        raise ErasureError(f"{folder} exists and is not a folder: remove it or choose another path")
    remove_orphans(folder)
    with reported_write_errors(folder), atomic_dir(folder, replace=overwrite) as staging, edited.applied(pipe):
        pipe.save_pretrained(staging, safe_serialization=True)
    return folder


def apply(pipe, weights: "str | os.PathLike | EditedWeights", check_base: bool = True, components=None):
    """Load erased weights (a path or an ``EditedWeights``) into a diffusers pipeline.

    Args:
        pipe: a Stable Diffusion pipeline of the base model the weights were made for.
        weights: a ``.safetensors`` file written by ``erase`` or an ``EditedWeights``.
        check_base: refuse weights made for another base model (recommended). ``False``
            applies them to another model of the same family with a ``BaseMismatchWarning``
            (another family, by its shapes, is refused either way).
        components: apply only these components (e.g. ``["text_encoder"]``: AdvUnlearn's
            text encoder plugged into another model of its family, with ``check_base=False``);
            default: every component the weights hold.

    Returns:
        The same pipeline, edited in place.
    """
    if not isinstance(weights, EditedWeights):
        weights = EditedWeights.load(weights)
    if components is not None:
        weights = weights.only(components)
    return weights.apply(pipe, check_base=check_base)
