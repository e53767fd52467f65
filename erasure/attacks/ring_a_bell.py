"""ring-a-bell: Ring-A-Bell (Tsai, Hsu, Xie, Lin, Chen, Yu, Chen, Hsu, Chen; ICLR 2024, "Ring-A-Bell!
How Reliable are Concept Removal Methods for Diffusion Models?"; chiayi-hsu/Ring-A-Bell).

Model-agnostic: it needs only the base model's text encoder ``E`` (the authors use SD
1.4's original CLIP for every erased model), never the erased model.

1. Concept vector: ``v = mean_i [E(q_i+) - E(q_i-)]`` over prompt pairs with and
   without the concept, ``E`` the full ``77 x d`` last hidden state
   (``Get_Concept_Vector.ipynb``).
2. For each prompt ``p``: the target ``Y = E(p) + eta v``.
3. A genetic search over prompts of ``length`` tokens, ``[start, x_1..x_K, end, pad...]``,
   minimising ``||Y - E(x)||^2`` summed over every position and dimension
   (``InversePrompt.ipynb`` cells 2, 9, 12): a random population; per generation keep
   the better half; each survivor stays and, with probability ``crossover_rate``, makes
   two children with a random survivor at one cut point; then each individual (survivors
   included) has, with probability ``mutation_rate``, one position set to a random
   token. After the last generation (which only selects) the best is the prompt. It
   replaces the row's prompt.

Authors' settings: population 200, 3000 generations, mutation 0.25, crossover 0.5,
K = 16 (77 for "length 75"), eta 3 for nudity (their violence prompts: eta 5-5.5, K 38
or 77).

Here:
- pairs: a CSV (``pairs``, columns ``with`` and ``without``), else one pair per
  distinct attacked prompt that names an erased concept: the prompt, and the prompt with
  the concept's words removed (the authors' nudity pairs are such rewrites); else the
  concept word against the empty prompt. The authors' CSVs are not shipped.
- prompts are searched once per distinct prompt text (rows repeating a prompt with
  other seeds share it); each from its own generator; fitness values of individuals
  that did not change are kept instead of recomputed (same search).
- ``E`` is ``adapter.encode`` under ``BaseView.original()``; on SDXL the fitness also
  counts the pooled vector (an extension; the authors target SD 1.4 only).
- candidates are round-trip-safe ids (``vocabulary``; the authors draw from ids
  1..49405 and decode without checking), so the prompt found is the prompt replayed.
- the result depends only on the base model, the prompt and these settings; the
  evaluator shares it between erased models of one base (``erasure.eval.attack``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapters import PromptEmbeddings
from ..config import setting
from ..errors import ErasureError
from .base import Attack, AttackConfig, AttackResult, AttackTarget, Row, Stopwatch, concept_words, unit_seed
from .tokens import candidate_ids, compose_ids, words_of


@dataclass
class RingABellConfig(AttackConfig):
    """Ring-A-Bell's settings (authors' defaults for nudity; sources in the module docstring).

    Attributes:
        population: individuals per generation (authors: 200).
        generations: (authors: 3000).
        mutation_rate: chance an individual has one token replaced (authors: 0.25).
        crossover_rate: chance a survivor makes two children (authors: 0.5).
        length: tokens in the prompt, K (authors: 16; 75 for their "K = 77").
        eta: weight of the concept vector (authors: 3 for nudity).
        pairs: a CSV with ``with`` and ``without`` columns, or ``None`` (from the prompts).
        vocabulary: ``all``, ``trained`` or a list of words (``tokens.candidate_ids``).
        batch_size: individuals per text-encoder call (memory only).
    """

    population: int = setting(200, min=2)
    generations: int = setting(3000, min=1)
    mutation_rate: float = setting(0.25, min=0, max=1)
    crossover_rate: float = setting(0.5, min=0, max=1)
    length: int = setting(16, min=1, max=75)
    eta: float = 3.0
    pairs: str | None = None
    vocabulary: str | list[str] = "all"
    batch_size: int = setting(256, min=1)


class RingABell(Attack):
    name = "ring-a-bell"
    Config = RingABellConfig
    scope = "prompt"
    output = "prompt"
    budget_field = "generations"
    reads_attacked_model = False

    def run(self, target: AttackTarget, rows: list[Row]) -> list[AttackResult]:
        base = target.require_base(self.name)
        candidates, self.notes["vocabulary"] = candidate_ids(target.adapter, self.config.vocabulary, target.model_folder)
        prompts = list(dict.fromkeys(row.prompt for row in rows))
        found = {}
        with base.original(), torch.no_grad():
            pairs = self.pairs(rows, target.concepts)
            self.notes["pairs"] = len(pairs)
            vector = self.concept_vector(target, pairs)
            for prompt in tqdm(prompts, desc=f"attack {self.name}", unit="prompt"):
                watch = Stopwatch()
                ids, losses = self.search(target, prompt, vector, candidates)
                sharing = sum(row.prompt == prompt for row in rows)
                found[prompt] = (" ".join(words_of(target.adapter, ids)), losses, watch.share(sharing))
        return [AttackResult(row.index, row.prompt, prompt=found[row.prompt][0], steps=self.config.generations,
                             losses=found[row.prompt][1], **found[row.prompt][2])
                for row in rows]

    def pairs(self, rows: list[Row], concepts: list[str]) -> list[tuple[str, str]]:
        """The (with, without) prompt pairs of the concept vector (see the module docstring).

        Args:
            rows: the attacked rows.
            concepts: the erased concepts.
        """
        if self.config.pairs is not None:
            return read_pairs(Path(self.config.pairs))
        pairs = []
        for prompt in dict.fromkeys(row.prompt for row in rows):
            named = concept_words(prompt, concepts)
            if named:
                without = prompt
                for word in named:
                    without = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", " ", without, flags=re.I)
                pairs.append((prompt, " ".join(without.split())))
        return pairs or [(concept, "") for concept in concepts]

    def concept_vector(self, target: AttackTarget, pairs: list[tuple[str, str]]) -> PromptEmbeddings:
        """``mean E(with) - E(without)`` (hidden states, and SDXL's pooled vectors)."""
        adapter = target.adapter
        present = adapter.encode([p for p, _ in pairs])
        absent = adapter.encode([q for _, q in pairs])
        pooled = None if present.pooled is None else (present.pooled - absent.pooled).mean(0, keepdim=True)
        return PromptEmbeddings((present.hidden - absent.hidden).mean(0, keepdim=True), present.token_counts[:1], pooled)

    def search(self, target: AttackTarget, prompt: str, vector: PromptEmbeddings, candidates: torch.Tensor):
        """The genetic search for one prompt: the best ids found and the best fitness per generation."""
        config, adapter = self.config, target.adapter
        encoded = adapter.encode([prompt])
        goal_hidden = (encoded.hidden + config.eta * vector.hidden).float()
        goal_pooled = None if encoded.pooled is None else (encoded.pooled + config.eta * vector.pooled).float()
        rng = np.random.default_rng(unit_seed(config.seed, "prompt", prompt))

        def fitness(population: np.ndarray) -> np.ndarray:
            scores = []
            for start in range(0, len(population), config.batch_size):
                chunk = candidates[torch.from_numpy(population[start:start + config.batch_size])]
                ids, _ = compose_ids(adapter, [[row] for row in chunk])
                found = adapter.encode_ids(ids)
                score = ((found.hidden.float() - goal_hidden) ** 2).sum((1, 2))
                if goal_pooled is not None:
                    score = score + ((found.pooled.float() - goal_pooled) ** 2).sum(1)
                scores.append(score.cpu().double().numpy())
            return np.concatenate(scores)

        population = rng.integers(len(candidates), size=(config.population, config.length))
        scores = np.full(len(population), np.nan)
        best_per_generation = []
        for generation in range(config.generations):
            unknown = np.isnan(scores)
            if unknown.any():
                scores[unknown] = fitness(population[unknown])
            order = np.argsort(scores, kind="stable")[: config.population // 2]
            population, scores = population[order], scores[order]
            best_per_generation.append(float(scores[0]))
            if generation < config.generations - 1:
                population, scores = self._offspring(population, scores, rng, len(candidates))
        return candidates[torch.from_numpy(population[0])], best_per_generation

    def _offspring(self, parents: np.ndarray, scores: np.ndarray, rng: np.random.Generator, size: int):
        """Crossover (each survivor kept, two children with a random survivor at one cut
        point) then mutation (one random token, survivors included)."""
        config = self.config
        children, child_scores = [], []
        for i in range(len(parents)):
            children.append(parents[i].copy())
            child_scores.append(scores[i])
            if rng.random() < config.crossover_rate:
                mate = int(rng.integers(len(parents)))
                cut = int(rng.integers(0, config.length))  # the authors' point 1..K in [start, x_1..x_K]
                children += [np.concatenate([parents[i][:cut], parents[mate][cut:]]),
                             np.concatenate([parents[mate][:cut], parents[i][cut:]])]
                child_scores += [np.nan, np.nan]
        population, scores = np.stack(children), np.array(child_scores)
        for i in range(len(population)):
            if rng.random() < config.mutation_rate:
                population[i, int(rng.integers(config.length))] = int(rng.integers(size))
                scores[i] = np.nan
        return population, scores


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(with, without) prompt pairs from a CSV with those two columns.

    Args:
        path: the CSV file.
    """
    if not path.is_file():
        raise ErasureError(f"ring-a-bell pairs file {path} not found: give a CSV with 'with' and 'without' columns")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"with", "without"} <= set(reader.fieldnames or []):
            raise ErasureError(f"{path} needs 'with' and 'without' columns (it has {', '.join(reader.fieldnames or [])})")
        pairs = [(row["with"], row["without"]) for row in reader]
    if not pairs:
        raise ErasureError(f"{path} has no pairs: add at least one (with, without) row")
    return pairs
