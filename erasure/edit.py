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

    Components are the pipeline's attribute names (``"unet"``, ``"text_encoder"``,
    ``"text_encoder_2"``: ``erasure.weights.COMPONENTS``), parameter names those of
    ``getattr(pipe, component).named_parameters()``; a method may edit several.

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
        return cls.of("unet", original, new, extra)

    @classmethod
    def of(cls, component: str, original: dict[str, torch.Tensor], new: dict[str, torch.Tensor],
           extra: dict | None = None) -> "Edit":
        """An edit of one component's tensors (``Edit.of("text_encoder", ...)``).

        Args:
            component: the pipeline attribute, e.g. ``"text_encoder"``.
            original: original values by the component's parameter name.
            new: new values under the same names.
            extra: method-specific results.
        """
        return cls({component: new}, {component: original}, dict(extra or {}))
