"""What a method's ``erase`` returns: new values of some model tensors, the original
values they replace, and the method's own results. Provenance (method, concepts,
config, base model, costs) is added once, by the registry
(``erasure.methods.Method.run``), which turns an ``Edit`` into ``EditedWeights``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Edit:
    """Tensors a method changed, per pipeline component.

    Components are the pipeline's attribute names: ``"unet"`` today, ``"text_encoder"``
    for a method that edits the text encoder (AdvUnlearn). The weight file holds UNet
    tensors only, so the registry refuses other components until the format grows.

    Attributes:
        new: ``{component: {parameter name: new value}}``.
        original: the same names, original values (the base fingerprint is taken from them).
        extra: method-specific results (e.g. RECE's chosen epoch), JSON-serialisable.
    """

    new: dict[str, dict[str, torch.Tensor]]
    original: dict[str, dict[str, torch.Tensor]]
    extra: dict = field(default_factory=dict)

    @classmethod
    def of_unet(cls, original: dict[str, torch.Tensor], new: dict[str, torch.Tensor], extra: dict | None = None) -> "Edit":
        """An edit of UNet tensors.

        Args:
            original: original values by UNet parameter name.
            new: new values under the same names.
            extra: method-specific results.
        """
        return cls({"unet": new}, {"unet": original}, dict(extra or {}))
