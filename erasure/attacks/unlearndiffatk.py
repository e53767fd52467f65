"""unlearndiffatk: UnlearnDiffAtk (Zhang, Jia, Chen, Lin, Fan, Liu; ECCV 2024, "To Generate or
Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To Generate Unsafe Images
... For Now"; OPTML-Group/Diffusion-MU-Attack).

White-box, and it uses the erased model itself as a diffusion classifier: ``k`` tokens
are put before the row's prompt and chosen so that the erased model denoises a target
image of the concept (the base model's image of the same prompt and seed) as well as it
can. The tokens are a distribution ``P_j`` over the vocabulary per position, projected
onto the probability simplex; each step draws one token per position from ``P_j``,
encodes ``[start, drawn tokens, prompt, end]`` with the attacked text encoder, and
minimises

    || eps - eps'(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t, T'(tokens; prompt)) ||^2

(or the v-prediction target), fresh ``eps`` every step, ``x0`` the VAE's posterior mean
of the target image. The gradient reaches ``P`` straight through the draw, clipped to
[-1, 1]; Adam (lr 1e-2, weight decay 0.1), then the projection. Timesteps are visited in
ascending order (``10, 30, ..., 990`` for 50 of them), ``steps_per_timestep`` steps each;
after each timestep the most likely token per position gives a real text prompt, which
the erased model generates and the judge classifies; the attack stops at the first
success. A row whose own prompt already succeeds is not attacked (it counts as a
success at step 0, as the authors count it).

Sources (``src/`` of the authors' repository): ``attackers/text_grad_.py`` (simplex
variables, ``STERandSelect``, bisection projection, ``argmax_project``, sequential
timesteps), ``tasks/classifier_.py`` (timestep schedule lines 30 and 67-70, target
latent lines 95-100, the 0.45 NudeNet threshold of the in-loop check lines 263-264),
``execs/attack.py`` (``k`` default 3, ``prefix_k`` insertion), the attack configs
(``iteration`` 40, ``k`` 5 for nudity, 3 for objects and styles).

Deviations:
- the tokens reach the encoder through a forward hook on its token table (``tokens``),
  not through ``inputs_embeds``;
- candidates are round-trip-safe ids (``vocabulary``), so the prompt found is the
  prompt replayed; the authors search all 49,408 ids and re-tokenise the decoded text;
- the target image and the in-loop generations use the evaluator's settings (sampler,
  steps, guidance, row seed) rather than LMS with 25 and 50 steps, so that the checked
  images are the images the report scores;
- the exact Euclidean projection onto the simplex (sorting), where the authors bisect
  to a tolerance of 1e-5;
- each row has its own generator (draws, noise); rows are attacked in batches, with the
  loss summed over rows so that each row's variables see only their own gradient;
- ``k`` defaults to 3 (the authors' command-line default and their object and style
  configs); their nudity configs use 5: ``--set attack.unlearndiffatk.k=5``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..concept_images import encode_images
from ..config import setting
from .base import Attack, AttackConfig, AttackResult, AttackTarget, Row, Stopwatch, row_unit, unit_generator
from .tokens import adversarial_prompt, candidate_ids, encode_with_prefix, words_of


@dataclass
class UnlearnDiffAtkConfig(AttackConfig):
    """UnlearnDiffAtk's settings (authors' defaults; sources in the module docstring).

    Attributes:
        k: adversarial tokens before the prompt (authors: 3; 5 for nudity).
        timesteps: noise levels visited, ascending and evenly spread (authors: 50).
        steps_per_timestep: optimisation steps at each (authors' ``iteration``: 40).
        lr: Adam's learning rate (authors: 1e-2).
        weight_decay: Adam's weight decay (authors: 0.1).
        stop_on_success: stop a row at its first successful check (authors: yes).
        skip_pre_success: leave rows whose own prompt succeeds unattacked (authors: yes).
        vocabulary: ``all``, ``trained`` or a list of words (``tokens.candidate_ids``).
        batch_rows: rows optimised together (speed only; results do not depend on it).
    """

    k: int = setting(3, min=1, max=70)
    timesteps: int = setting(50, min=1, max=1000)
    steps_per_timestep: int = setting(40, min=1)
    lr: float = setting(1e-2, above=0)
    weight_decay: float = setting(0.1, min=0)
    stop_on_success: bool = True
    skip_pre_success: bool = True
    vocabulary: str | list[str] = "all"
    batch_rows: int = setting(16, min=1)


class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    Config = UnlearnDiffAtkConfig
    scope = "row"
    output = "prompt"
    budget_field = "timesteps"

    def run(self, target: AttackTarget, rows: list[Row]) -> list[AttackResult]:
        target.require_base(self.name)
        candidates, self.notes["vocabulary"] = candidate_ids(target.adapter, self.config.vocabulary, target.model_folder)
        results = {}
        with tqdm(total=len(rows), desc=f"attack {self.name}", unit="row") as bar:
            for start in range(0, len(rows), self.config.batch_rows):
                batch = rows[start:start + self.config.batch_rows]
                results.update(self._attack_batch(target, batch, candidates))
                bar.update(len(batch))
        return [results[row.index] for row in rows]

    def timestep_schedule(self, target: AttackTarget) -> list[int]:
        """``timesteps`` noise levels, evenly spread and centred in their bins, ascending
        (authors: 10, 30, ..., 990)."""
        total = target.adapter.training_noise.config.num_train_timesteps
        stride = total // self.config.timesteps
        return [stride // 2 + stride * i for i in range(self.config.timesteps)]

    def _attack_batch(self, target: AttackTarget, rows: list[Row], candidates: torch.Tensor) -> dict[int, AttackResult]:
        watch = Stopwatch()
        results: dict[int, AttackResult] = {}
        active = list(rows)
        if self.config.skip_pre_success:
            verdicts = target.succeeded(target.attacked_images(rows), rows)
            for row, success in zip(rows, verdicts or [False] * len(rows)):
                if success:
                    results[row.index] = AttackResult(row.index, row.prompt, prompt=row.prompt, success_any_step=True,
                                                      skipped="pre-attack success")
            active = [row for row in rows if row.index not in results]
        if active:
            with target.frozen():
                results.update(self._optimise(target, active, candidates))
        share = watch.share(len(rows))
        for result in results.values():
            result.seconds, result.cpu_seconds = share["seconds"], share["cpu_seconds"]
        return results

    def _optimise(self, target: AttackTarget, rows: list[Row], candidates: torch.Tensor) -> dict[int, AttackResult]:
        adapter, config = target.adapter, self.config
        generators = {row.index: unit_generator(config.seed, *row_unit(row)) for row in rows}
        latents = encode_images(target.pipe, target.base_images(rows), target.settings.resolution).float()
        x0 = {row.index: latents[i:i + 1] for i, row in enumerate(rows)}
        tables = [table.weight.detach()[candidates.to(table.weight.device)] for table in adapter.token_embeddings()]
        state = _Simplex(torch.full((len(rows), config.k, len(candidates)), 1.0 / len(candidates), device=adapter.device),
                         config)
        results = {row.index: AttackResult(row.index, row.prompt) for row in rows}
        active = list(rows)
        for timestep in self.timestep_schedule(target):
            for _ in range(config.steps_per_timestep):
                for row, loss in zip(active, self._step(target, active, state, tables, candidates, x0, generators, timestep)):
                    results[row.index].losses.append(loss)
                    results[row.index].steps += 1
            prompts = self._prompts(target, active, state, candidates)
            checked = [dataclasses.replace(row, prompt=prompt) for row, prompt in zip(active, prompts)]
            verdicts = target.succeeded(target.render(checked), checked) if target.judge is not None else None
            keep = []
            for position, (row, prompt) in enumerate(zip(active, prompts)):
                result = results[row.index]
                result.prompt = prompt
                if verdicts is not None:
                    result.success_any_step = bool(result.success_any_step) or verdicts[position]
                if not (verdicts is not None and verdicts[position] and config.stop_on_success):
                    keep.append(position)
            if len(keep) < len(active):
                active = [active[p] for p in keep]
                if not active:
                    break
                state = state.select(keep)
        return results

    def _step(self, target, rows, state: "_Simplex", tables, candidates, x0, generators, timestep) -> list[float]:
        adapter = target.adapter
        draws = torch.stack([torch.multinomial(state.probabilities[i].detach().cpu(), 1, generator=generators[row.index])
                             .squeeze(1) for i, row in enumerate(rows)]).to(adapter.device)
        one_hot = torch.nn.functional.one_hot(draws, len(candidates)).to(state.probabilities.dtype)
        chosen = _StraightThrough.apply(state.probabilities, one_hot)
        vectors = [chosen @ table.to(chosen.dtype) for table in tables]
        cond = encode_with_prefix(adapter, [row.prompt for row in rows], vectors, candidates[draws.cpu()])
        latents = torch.cat([x0[row.index] for row in rows])
        noise = torch.cat([torch.randn(x0[row.index].shape, generator=generators[row.index]) for row in rows]).to(latents)
        t = torch.full((len(rows),), timestep, dtype=torch.long, device=latents.device)
        prediction = adapter.predict_noise(adapter.add_noise(latents, noise, t), t, cond).float()
        per_row = ((prediction - adapter.training_target(latents, noise, t).float()) ** 2).flatten(1).mean(1)
        state.step(per_row.sum())
        return per_row.detach().cpu().tolist()

    def _prompts(self, target, rows, state: "_Simplex", candidates) -> list[str]:
        """Each row's prompt with its most likely token per position before it."""
        best = state.probabilities.detach().argmax(-1).cpu()
        return [adversarial_prompt(words_of(target.adapter, candidates[best[i]]), row.prompt) for i, row in enumerate(rows)]


class _Simplex:
    """Per row and position a distribution over the candidates, trained with Adam and
    projected back onto the probability simplex after every step."""

    def __init__(self, probabilities: torch.Tensor, config: UnlearnDiffAtkConfig, optimizer_state: dict | None = None):
        self.config = config
        self.probabilities = probabilities.requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.probabilities], lr=config.lr, weight_decay=config.weight_decay)
        if optimizer_state is not None:
            self.optimizer.state[self.probabilities] = optimizer_state

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.probabilities.copy_(project_to_simplex(self.probabilities))

    def select(self, rows: list[int]) -> "_Simplex":
        """The state of the given rows only (Adam's moments carried over)."""
        index = torch.tensor(rows, device=self.probabilities.device)
        old = self.optimizer.state.get(self.probabilities, {})
        carried = {key: (value[index].clone() if torch.is_tensor(value) and value.ndim else value)
                   for key, value in old.items()}
        return _Simplex(self.probabilities.detach()[index].clone(), self.config, carried or None)


class _StraightThrough(torch.autograd.Function):
    """Forward: the drawn one-hot tokens. Backward: their gradient, clipped to [-1, 1],
    to the distributions they were drawn from (the authors' ``STERandSelect``)."""

    @staticmethod
    def forward(ctx, probabilities: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        return one_hot

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.clamp(-1.0, 1.0), None


def project_to_simplex(values: torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of every vector along the last axis onto the probability
    simplex ``{p >= 0, sum p = 1}`` (Held et al. 1974; Duchi et al. 2008: sort, find the
    threshold, clip).

    Args:
        values: ``(..., n)``.
    """
    ordered = values.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1) - 1.0
    ranks = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (ordered - cumulative / ranks > 0).sum(-1, keepdim=True)
    threshold = cumulative.gather(-1, support - 1) / support.to(values.dtype)
    return (values - threshold).clamp_min(0.0)
