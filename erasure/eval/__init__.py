"""Measure an erasure: generate images for erased and retained prompts from the base and
the erased model, score them, and put the two side by side.

    import erasure
    report = erasure.evaluate("mini-sd", "circle.safetensors", "shapes/circle", ["world", "clip"])
    print(report.headline("world"))

The same from the command line: ``erase-eval --prompts shapes/circle --model mini-sd
--weights circle.safetensors --metrics world,clip --output runs/eval-circle``; on
several GPUs: ``accelerate launch -m erasure.eval --prompts i2p ...``.

Steps: check the generation settings, the prompt set and the attacks (``prompts``,
``attack``), build and check the metrics on every process and load their models on the
main one (``metrics``), generate the base images then the erased ones from the same seeds
(``generate``); with ``attack=[...]`` run each attack (``erasure.attacks``) against the
erased model and generate its ``attacked-<name>`` images of the erased and synonym rows
(``attack``); read the images back and score them in memory on the main process, write
``report.json``/``report.md``/``report.html`` (``report``), with each variant's
generation throughput (images/s) and each attack's pre- and post-attack ASR, time and
steps. Everything is resumable: rerunning the same command skips finished images and
reuses the attacks' cached results.

    report = erasure.evaluate("mini-sd", "circle.safetensors", "shapes/circle", ["world"], attack="unlearndiffatk")
    report.data["attacks"]["unlearndiffatk"]["groups"]["erased"]  # n, pre_asr, post_asr, success_any_step
"""

from __future__ import annotations

import gc
import os
import re
import time
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..attacks import ATTACKS, AttackTarget, BaseView
from ..errors import ErasureError
from ..generation import Conditioning, GenerationSettings, check_generation_values, generation_settings
from ..loading import model_folder
from ..weights import EditedWeights
from .attack import (AttackPlan, AttackRun, asr_summary, attack_run, base_values, identity_of, judging_metric,
                     make_judge, obtain_results, plan_attacks, restarts_summary, write_outputs)
from .generate import collect_images, generate_images, image_path, weights_record
from .intervals import paired_change
from .metrics import METRICS, Metric, MetricContext, build_metrics, default_metrics
from .prompts import PromptSet, list_bundled_sets, load_prompt_set, read_prompt_csv
from .report import build_report, write_report

__all__ = ["ATTACKS", "METRICS", "EvalReport", "PromptSet", "evaluate", "list_bundled_sets", "load_prompt_set",
           "read_prompt_csv"]

DEFAULT_OUTPUT_ROOT = Path("outputs") / "eval"
SCORING_CHUNK = 64  # images read from disk and scored at a time: memory stays bounded for thousands of rows


@dataclass
class EvalReport:
    """The result of ``evaluate``.

    Attributes:
        data: the content of ``report.json``.
        output_dir: the folder with ``base/``, ``erased/``, ``attacked-<name>/``, ``attacks/``
            and the report files.
        files: paths of ``report.json``, ``report.md`` and ``report.html``.
    """

    data: dict
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def headline(self, metric: str, variant: str | None = None) -> dict:
        """The summary numbers of one metric: ``{variant: {label: value}}``, or one variant's
        (``"base"``, ``"erased"``, ``"attacked-<name>"``), e.g. ``headline("world", "erased")``."""
        result = self.data["metrics"][metric]
        if variant is not None:
            return result[variant]["headline"]
        return {v: result[v]["headline"] for v in self.data["variants"]}

    @property
    def markdown(self) -> str:
        return self.files["markdown"].read_text(encoding="utf-8")


def evaluate(
    base,
    erased_weights: "str | os.PathLike | EditedWeights | None",
    prompt_set: "str | os.PathLike | PromptSet",
    metrics: Sequence[str] | Mapping[str, Mapping] | None = None,
    output_dir: "str | os.PathLike | None" = None,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    resolution: int | None = None,
    device: "str | torch.device | None" = None,
    dtype: "str | torch.dtype | None" = None,
    metric_options: Mapping[str, Mapping] | None = None,
    overwrite: bool = False,
    html: bool = True,
    attack: str | Sequence[str] | None = None,
    attack_options: Mapping[str, Mapping] | None = None,
    attack_budget: float = 1.0,
    attack_cache: "str | os.PathLike | None" = None,
    attack_types: Sequence[str] = ("erased", "synonym"),
    attack_limit: int | None = None,
    attack_restarts: int | Mapping[str, int] = 1,
    check_base: bool = True,
) -> EvalReport | None:
    """Generate, score and compare images of the base and the erased model.

    Args:
        base: the base model: ``"mini-sd"``, a Hub id, a folder, a ``.safetensors``
            checkpoint, or a loaded pipeline (left unchanged).
        erased_weights: a file written by ``erase``, an ``EditedWeights``, or ``None``
            to evaluate the base model alone.
        prompt_set: a CSV path, a bundled set (``"shapes/circle"``), ``"i2p"``,
            ``"hf://datasets/OWNER/REPO/FILE.csv"``, or a ``PromptSet``.
        metrics: names from ``METRICS`` (``["world", "clip"]``), or a mapping of name
            to config overrides (``{"nudenet": {"threshold": 0.5}}``); default: the
            world classifier and CLIP score for mini-sd, CLIP score and zero-shot
            accuracy (when rows have classes) otherwise.
        output_dir: where images and reports go; default
            ``outputs/eval/<set>-<model>[-<weights>]``. Rerunning resumes.
        limit: use only the first ``limit`` rows.
        batch_size: rows per pipeline call.
        num_inference_steps, guidance_scale, resolution: generation settings
            (``erasure.generation``); default: the model's ``erasure_defaults.json``,
            else the pipeline's own (50 steps; guidance 7.5, SDXL 5.0) and the native
            size. ``guidance_scale=0`` generates without guidance. A row's
            ``evaluation_guidance`` wins over ``guidance_scale``.
        device, dtype: for loading ``base`` (ignored for a pipeline); under
            ``accelerate launch`` each process uses its own GPU.
        metric_options: more config overrides per metric (``{"clip": {"model": ...}}``).
        overwrite: regenerate images that already exist.
        html: also write ``report.html``.
        attack: attack names from ``erasure.attacks.ATTACKS`` (a list, or
            ``"closed-form,unlearndiffatk"``): each adds an ``attacked-<name>`` variant,
            the erased model attacked on every erased and synonym row (every row of an
            untyped set); without ``erased_weights`` the model is attacked as its own base.
        attack_options: per attack, config overrides (``{"unlearndiffatk": {"k": 5}}``),
            applied after ``configs/attacks/<name>/<model>.yaml``.
        attack_budget: multiplies every attack's main loop (> 0; 1: their own lengths).
        attack_cache: folder of the attacks' result caches; default ``<output>/attacks``
            (runs on one base model may share one: Ring-A-Bell's results do not depend
            on the erased weights).
        attack_types: which typed rows are attacked (``erased``, ``synonym``).
        attack_limit: attack only the first N rows of each of those types.
        attack_restarts: run each seeded attack this many times, with consecutive seeds:
            an ``attacked-<name>-restart<i>`` variant per extra run and, in the report,
            each run's ASR and the share of rows any run breaks (``erasure.eval.attack``);
            a mapping gives the runs per attack (``{"concept-inversion": 5}``).
        check_base: refuse erased weights made for another base model (``False``:
            ``--no-check-base``, apply them anyway).

    Returns:
        An ``EvalReport`` on the main process; ``None`` on the other processes of a
        multi-process launch.
    """
    check_generation_values(num_inference_steps, guidance_scale, resolution, batch_size)
    prompts = load_prompt_set(prompt_set, limit)
    weights, weights_file = _edited_weights(erased_weights)
    model = _model_name(base)
    plan = plan_attacks(attack, attack_options, attack_budget, model, prompts.rows, attack_types, attack_limit,
                        attack_restarts)
    if plan is not None and weights is not None and not check_base:
        raise ErasureError(f"--attack needs the base model the weights were made for ({weights.base_model!r}), and "
                           f"--no-check-base says this model may not be it: pass --model {weights.base_model} without "
                           "--no-check-base")
    state = _process_state()
    device = _device(base, device, state)
    names = metrics if metrics is not None else default_metrics(model, has_labels=bool(prompts.class_names))
    scorers = build_metrics(names, MetricContext(model, device, prompts), metric_options)
    output_dir = Path(output_dir) if output_dir is not None else _default_output(prompts, model, weights, weights_file)
    weights_info = weights_record(weights, weights_file) if weights is not None else None

    pipe, owned = _pipeline(base, device, dtype)
    if weights is not None and check_base:
        weights.check_base(pipe)  # before the first image, not after the base half
    settings = generation_settings(pipe, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                   resolution=resolution, batch_size=batch_size, model=model)
    model_id = _model_id(base, model)
    if state.is_main_process:
        for scorer in scorers:
            scorer.load()  # now: a missing scoring model fails before generating, not after
    variants = [_Variant("base", prompts.rows)]
    if weights is not None:
        variants.append(_Variant("erased", prompts.rows, weights_info["sha256"]))
    throughput = {variants[0].name: _generate(pipe, variants[0], output_dir, settings, model_id, overwrite, state)}
    originals = base_values(pipe, weights.tensors) if weights is not None else {}  # before the weights replace them
    runs: list[AttackRun] = []
    with weights.applied(pipe, check_base=check_base) if weights is not None else nullcontext():
        if weights is not None:
            throughput["erased"] = _generate(pipe, variants[1], output_dir, settings, model_id, overwrite, state)
        if plan is not None:
            state.wait_for_everyone()  # the attacks read every process's base and erased images
            target = _attack_target(pipe, BaseView(pipe, originals), settings, plan, weights, weights_info, scorers,
                                    output_dir, model_id, state)
            cache = Path(attack_cache) if attack_cache is not None else output_dir / "attacks"
            for attacker in plan.attacks:
                for restart, attempt in enumerate(plan.attack_runs(attacker), start=1):
                    run = _run_attack(attempt, target, plan, cache, output_dir, model_id, weights_info, state, restart)
                    runs.append(run)
                    variant = _Variant(run.variant, run.rows, weights_info["sha256"] if weights is not None else None,
                                       run.record(), run.conditioning)
                    variants.append(variant)
                    throughput[variant.name] = _generate(pipe, variant, output_dir, settings, model_id, overwrite, state)
    if owned:
        del pipe
        _free_memory()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _score_and_report(prompts, scorers, variants, output_dir, settings, model, model_id, weights_info, html,
                             throughput, runs, plan)


def _attack_target(pipe, base: BaseView, settings: GenerationSettings, plan: AttackPlan, weights, weights_info,
                   scorers, output_dir: Path, model_id: str, state) -> AttackTarget:
    """The erased model as the attacks see it: its base values, its judge (the first metric
    that classifies the concept; main process only), and the images this run already
    made (the base model's as UnlearnDiffAtk's targets, the erased model's as the
    pre-attack check)."""
    weights_sha = weights_info["sha256"] if weights is not None else None
    judge_metric = judging_metric(scorers)
    own = ("erased", weights_sha) if weights is not None else ("base", None)
    concepts = list(weights.concepts) if weights is not None else list(dict.fromkeys(r.label for r in plan.rows if r.label))
    return AttackTarget(
        pipe, settings, base, concepts,
        judge=make_judge(judge_metric) if state.is_main_process else None,
        judge_name=None if judge_metric is None else judge_metric.name,
        judge_settings=None if judge_metric is None else dataclasses.asdict(judge_metric.config),
        reference_images=lambda rows: collect_images(rows, output_dir / "base", settings, model_id),
        own_images=lambda rows: collect_images(rows, output_dir / own[0], settings, model_id, own[1]),
        model_folder=model_folder(str(pipe.name_or_path)) if str(pipe.name_or_path) else None,
    )


def _run_attack(attacker, target: AttackTarget, plan: AttackPlan, cache: Path, output_dir: Path, model_id: str,
                weights_info: dict | None, state, restart: int = 1) -> AttackRun:
    """Run (or reuse from the cache) one run of an attack and write its files (main process)."""
    weights_sha = None if weights_info is None else weights_info["sha256"]
    identity = identity_of(attacker, target, model_id, weights_sha, plan.rows)
    attacker.describe(target)
    started = time.perf_counter()
    results, reused = obtain_results(attacker, target, plan.rows, cache, identity, state)
    run = attack_run(attacker, results, plan.rows, reused, time.perf_counter() - started, restart)
    if state.is_main_process:
        run.files = write_outputs(run, plan.rows, output_dir / "attacks")
    return run


@dataclass(frozen=True)
class _Variant:
    """One column of the report: the images of ``rows`` in ``<output_dir>/<name>/``.

    Attributes:
        name: ``"base"``, ``"erased"`` or ``"attacked-<name>"``.
        rows: the rows it has images of (attacked: erased and synonym rows only, with
            the attack's prompts).
        weights_sha256: the erased weights' hash; ``None`` for the base model.
        attack: the settings of the attack its images are generated under, if any.
        conditioning: what replaces the rows' prompts (embeddings, tokens), if anything.
    """

    name: str
    rows: list
    weights_sha256: str | None = None
    attack: dict | None = None
    conditioning: Conditioning | None = None


def _generate(pipe, variant: _Variant, output_dir: Path, settings: GenerationSettings, model_id: str,
              overwrite: bool, state) -> dict:
    """Generate a variant's missing images (``pipe`` holding the weights it needs) and
    return its throughput: images made by all processes, the slowest process's seconds
    and their ratio (``None`` when nothing was left to make).

    Args:
        pipe: the pipeline, with the base or the erased weights as ``variant`` needs.
        variant: which rows, which weights' hash, which attack and conditioning.
        output_dir: the run's folder; the images go in ``output_dir / variant.name``.
        settings, model_id, overwrite, state: as for ``generate_images``.
    """
    start = time.perf_counter()
    made = generate_images(pipe, variant.rows, output_dir / variant.name, settings, model_id, variant.weights_sha256,
                           overwrite, state, variant.name, variant.attack, variant.conditioning)
    shares = [(made, time.perf_counter() - start)]
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        shares = gather_object(shares)
    images, seconds = sum(n for n, _ in shares), max(t for _, t in shares)
    return {"images": images, "seconds": round(seconds, 3),
            "images_per_second": round(images / seconds, 3) if images and seconds > 0 else None}


def _score_and_report(prompts: PromptSet, scorers: list[Metric], variants: list[_Variant], output_dir: Path,
                      settings: GenerationSettings, model: str, model_id: str, weights_info: dict | None,
                      html: bool, throughput: dict, runs: list[AttackRun], plan: AttackPlan | None) -> EvalReport:
    images = {row.index: _image_entry(row, settings) for row in prompts.rows}
    for v in variants:
        for row in v.rows:
            images[row.index][v.name] = {"path": image_path(Path(v.name), row).as_posix()}
    records = {(scorer.name, v.name): [] for scorer in scorers for v in variants}
    with tqdm(total=sum(len(v.rows) for v in variants), desc="scoring", unit="img") as bar:
        for v in variants:
            bar.set_postfix_str(v.name)
            for start in range(0, len(v.rows), SCORING_CHUNK):
                rows = v.rows[start:start + SCORING_CHUNK]
                pictures = collect_images(rows, output_dir / v.name, settings, model_id, v.weights_sha256, v.attack)
                for scorer in scorers:
                    records[scorer.name, v.name] += scorer.score(pictures, rows)
                bar.update(len(rows))
    results = {}
    for scorer in scorers:
        results[scorer.name] = {"settings": scorer.settings()}
        for v in variants:
            scored = records[scorer.name, v.name]
            results[scorer.name][v.name] = scorer.summarize(v.rows, scored)
            for row, record in zip(v.rows, scored):
                images[row.index][v.name][scorer.name] = record
        results[scorer.name].update(_paired_changes(scorer, variants, records))
    generation = {**settings.record(), "batch_size": settings.batch_size,
                  "seeds": "each row's evaluation_seed (its index when absent), CPU generator per row",
                  "throughput": throughput}
    attacks = _attack_summaries(runs, plan, scorers, records, variants)
    report = build_report(prompts, model, weights_info, generation, [v.name for v in variants], results,
                          list(images.values()), attacks)
    files = write_report(output_dir, report, {scorer.name: scorer for scorer in scorers}, html_page=html)
    return EvalReport(report, output_dir, files)


def _paired_changes(scorer: Metric, variants: list[_Variant], records: dict) -> dict:
    """``{"change": {label: {"value", "interval", "n"}}}``: erased - base of each headline
    mean, paired by row (``intervals.paired_change``); nothing without both variants."""
    by_name = {v.name: v for v in variants}
    if not {"base", "erased"} <= by_name.keys():
        return {}
    base, erased = (scorer.row_values(by_name[n].rows, records[scorer.name, n]) for n in ("base", "erased"))
    changes = {label: paired_change(base[label], erased.get(label, {})) for label in base}
    return {"change": {label: change for label, change in changes.items() if change is not None}}


def _attack_summaries(runs: list[AttackRun], plan: AttackPlan | None, scorers: list[Metric], records: dict,
                      variants: list[_Variant]) -> dict:
    """``report.json``'s ``attacks``: per attack, its first run's ``asr_summary`` (pre-attack
    from the erased variant, or the base one when nothing was erased), with the
    ``restarts_summary`` of all its runs when it ran more than once."""
    if plan is None:
        return {}
    judge = judging_metric(scorers)
    against = "erased" if any(v.name == "erased" for v in variants) else "base"
    rows_of = {v.name: v.rows for v in variants}
    before = None
    if judge is not None:
        positions = {row.index: i for i, row in enumerate(rows_of[against])}
        shown = [judge.concept_shown(r) for r in records[judge.name, against]]
        before = [shown[positions[row.index]] for row in plan.rows]
    after = {run.variant: None if judge is None else [judge.concept_shown(r) for r in records[judge.name, run.variant]]
             for run in runs}
    summaries = {}
    for run in runs:
        if run.restart == 1:
            summaries[run.attack.name] = asr_summary(run, plan.rows, None if judge is None else judge.name, before,
                                                     after[run.variant], against)
    for name, summary in summaries.items():
        attempts = [run for run in runs if run.attack.name == name]
        if len(attempts) > 1:
            shown = None if judge is None else [after[run.variant] for run in attempts]
            summary["restarts"] = restarts_summary(attempts, plan.rows, shown)
    return summaries


def _image_entry(row, settings: GenerationSettings) -> dict:
    return {"index": row.index, "case_number": row.case_number, "prompt": row.prompt, "class": row.label, "type": row.type,
            "seed": row.seed, "guidance_scale": row.guidance if row.guidance is not None else settings.guidance_scale}


# ---- helpers ----


def _edited_weights(weights) -> tuple[EditedWeights | None, Path | None]:
    if weights is None or isinstance(weights, EditedWeights):
        return weights, None
    path = Path(weights)
    return EditedWeights.load(path), path


def _is_pipeline(base) -> bool:
    return hasattr(base, "unet") and hasattr(base, "scheduler")


def _model_name(base) -> str:
    if _is_pipeline(base):
        return str(getattr(base.config, "_name_or_path", None) or type(base).__name__)
    return str(base)


def _model_id(base, model: str) -> str:
    """The base model's name as stored in images: absolute for paths, so that a resumed
    run given the same folder by another relative path still matches."""
    path = Path(model).expanduser()
    return str(path.resolve()) if not _is_pipeline(base) and path.exists() else model


def _process_state():
    """accelerate's view of the processes (one, unless started by ``accelerate launch``
    or ``torchrun``). accelerate treats processes without a GPU as distributed only when
    told they are CPU processes; without that each would generate every row."""
    from accelerate import PartialState

    launched_without_gpu = int(os.environ.get("LOCAL_RANK", -1)) != -1 and not torch.cuda.is_available()
    return PartialState(cpu=launched_without_gpu)


def _device(base, device, state) -> torch.device:
    if _is_pipeline(base):
        return base.device
    if state.num_processes > 1 or device is None:
        return state.device
    from ..loading import resolve_device

    return resolve_device(device)


def _pipeline(base, device: torch.device, dtype):
    if _is_pipeline(base):
        return base, False
    from ..loading import load_pipeline

    return load_pipeline(base, device=device, dtype=dtype), True


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "x"


def _default_output(prompts: PromptSet, model: str, weights: EditedWeights | None, path: Path | None) -> Path:
    name = f"{_slug(prompts.name)}-{_slug(Path(model).name or model)}"
    if weights is not None:
        name += "-" + _slug(path.stem if path is not None else "-".join(weights.concepts))
    return DEFAULT_OUTPUT_ROOT / name
