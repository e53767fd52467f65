"""The method registry: one module per method, each exposing a config dataclass and
``erase(pipe, concepts, config) -> EditedWeights``. Names here are the CLI's
``--method`` choices, the ``configs/<name>/`` folders and the ``method`` metadata field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ErasureError
from . import esd, mace, rece, uce


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        name: registry name.
        config_class: its typed config dataclass (paper defaults).
        erase: ``erase(pipe, concepts, config) -> EditedWeights``; leaves ``pipe`` unchanged.
        trains: whether it fine-tunes by gradient descent (then weights load in float32).
    """

    name: str
    config_class: type
    erase: Callable
    trains: bool


METHODS: dict[str, Method] = {
    "uce": Method("uce", uce.UCEConfig, uce.erase, trains=False),
    "esd": Method("esd", esd.ESDConfig, esd.erase, trains=True),
    "mace": Method("mace", mace.MACEConfig, mace.erase, trains=True),
    "rece": Method("rece", rece.RECEConfig, rece.erase, trains=False),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ErasureError(f"unknown method {name!r}: use one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
