"""CLIP score: how well each image matches its own prompt.

    CLIPScore = 100 * max(cos(E_image, E_prompt), 0)

(Hessel et al., 2021, without their 2.5 rescaling; the convention of the erasure papers
and of torchmetrics' ``CLIPScore``). Reported per row group, each mean with its bootstrap 95%
interval over rows; with ``erased`` and ``retained`` rows also MACE's artist score
H_a = CLIP_retained - CLIP_erased.
Prompts longer than the text encoder's 77 tokens are truncated, as in every
implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..intervals import bootstrap, mean_interval
from ..prompts import PromptRow
from .base import Metric, batches, erased_group, groups_of, mean, rgb
from .clip_models import default_clip_for, load_clip


@dataclass
class ClipScoreConfig:
    model: str | None = None  # None: mini-clip for mini-sd, "ViT-L-14/openai" otherwise
    batch_size: int = 32  # images per forward pass


class ClipScore(Metric):
    name = "clip"
    Config = ClipScoreConfig

    @property
    def model_spec(self) -> str:
        return self.config.model or default_clip_for(self.context.model)

    def _load_models(self) -> None:
        self._clip = load_clip(self.model_spec, self.context.device)

    def settings(self) -> dict:
        self.require_loaded()
        return {**super().settings(), "clip_model": self.model_spec, **self._clip.info,
                "formula": "100 * max(cosine(image, prompt), 0)", "text_truncation": 77}

    def score(self, images: list, rows: list[PromptRow]) -> list[dict]:
        self.require_loaded()
        records = []
        for batch_images, batch_rows in zip(batches(rgb(images), self.config.batch_size), batches(rows, self.config.batch_size)):
            embeddings = self._clip.image_embeddings(batch_images, self.config.batch_size)
            texts = self._clip.text_embeddings([row.prompt for row in batch_rows])
            cosines = (embeddings * texts).sum(-1)
            records += [{"clip_score": 100.0 * max(float(c), 0.0)} for c in cosines]
        return records

    def summarize(self, rows: list[PromptRow], records: list[dict]) -> dict:
        scores = {g: [records[p]["clip_score"] for p in ps] for g, ps in groups_of(rows).items()}
        groups = {g: {"n": len(v), "mean": mean(v), "mean_ci": mean_interval(v)} for g, v in scores.items()}
        summary = {"groups": groups}
        if "erased" in groups and "retained" in groups:
            summary["h_a"] = groups["retained"]["mean"] - groups["erased"]["mean"]
            summary["h_a_ci"] = bootstrap([scores["retained"], scores["erased"]], lambda r, e: r - e)
        summary["headline"] = {f"CLIP score ({g})": v["mean"] for g, v in groups.items()}
        summary["headline_intervals"] = {f"CLIP score ({g})": v["mean_ci"] for g, v in groups.items()}
        if "h_a" in summary:
            label = "H_a = CLIP(retained) - CLIP(erased)"
            summary["headline"][label], summary["headline_intervals"][label] = summary["h_a"], summary["h_a_ci"]
        return summary

    def row_values(self, rows: list[PromptRow], records: list[dict]) -> dict[str, dict[int, float]]:
        return {f"CLIP score ({g})": {rows[p].index: records[p]["clip_score"] for p in ps}
                for g, ps in groups_of(rows).items()}

    def concept_presence(self, summary: dict) -> float:
        """The mean CLIP score of the erased rows' images with their prompts."""
        return erased_group(summary)["mean"]

    def describe(self, record: dict) -> str:
        return f"clip {record['clip_score']:.1f}"
