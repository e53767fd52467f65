"""``erase``: erase concepts from a Stable Diffusion model and write the changed weights.

    erase --method uce --concepts "airplane" --model mini-sd
    erase --method esd --concepts "Van Gogh" --concept-type style --config configs/esd/fast.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .concepts import CONCEPT_TYPES, check_text, parse_concepts, read_concept_file, slug
from .errors import ArgumentParser, ErasureError
from .weights import export_pipeline

EXPORTS = ("diffusers", "lora")
MAX_SEED = 2**32 - 1  # the range every seeded library (torch, numpy, random) accepts


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS

    parser = ArgumentParser(
        prog="erase",
        description="Erase concepts from a text-to-image diffusion model; writes the changed UNet tensors "
        "as .safetensors with provenance metadata.",
    )
    parser.add_argument("--method", required=True, choices=sorted(METHODS), help="erasure method")
    parser.add_argument("--concepts", help='comma- or semicolon-separated, e.g. "airplane, car"; "cat->dog" maps')
    parser.add_argument("--concepts-file", type=Path, help="a text file with one concept per line")
    parser.add_argument("--concept-type", default="object", choices=CONCEPT_TYPES,
                        help="selects configs/<method>/<type>.yaml (default: object)")
    parser.add_argument("--model", default="CompVis/stable-diffusion-v1-4",
                        help="Hub id, local diffusers folder, single-file .safetensors, or mini-sd (bundled)")
    parser.add_argument("--config", type=Path, help="YAML of config overrides (applied after the concept-type preset; "
                        "without it, --model mini-sd uses configs/<method>/mini-sd.yaml where there is one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config field, e.g. --set lam=0.1 (repeatable; applied last)")
    parser.add_argument("--preserve", help="comma-separated prompts/concepts to preserve (methods with a preserve set)")
    parser.add_argument("--output", type=Path, help="output .safetensors (default: outputs/<method>-<concepts>.safetensors)")
    parser.add_argument("--export", choices=EXPORTS, action="append", default=[],
                        help="also write a full diffusers pipeline folder, or a diffusers LoRA (mace)")
    parser.add_argument("--seed", type=int,
                        help=f"seed of the run, 0 to {MAX_SEED}: the method config's seed where it has one (esd, mace, "
                        "advunlearn; default: the config's), and torch's global seed (default: 0)")
    parser.add_argument("--device", help="cuda, cuda:1, cpu... (default: the GPU if there is one)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="weights dtype (auto: float32 on CPU and for training methods, float16 otherwise)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run checkpointed in <output>.checkpoint/ (training methods)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                        help="training methods: checkpoint every N steps (default 0: only on Ctrl-C or a failure)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs, and start afresh over an earlier run's checkpoint")
    choice = parser.add_argument_group("choosing the erasure by its seed (methods with a seed; erasure.seed_choice)")
    choice.add_argument("--seeds", help="erase once per seed (e.g. 8-15 or 0,3,7), attack each erasure on --choose-on "
                        "and write the one that holds best to --output; the others stay in <output>.seeds/")
    choice.add_argument("--choose-on", type=Path, metavar="CSV",
                        help="the tuning prompt set, with erased and retained rows, e.g. "
                        "scripts/advunlearn_prompts/choose-seed-240.csv (never the set you report on)")
    choice.add_argument("--choose-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field of the rule (SeedChoiceConfig), e.g. --choose-set confirm_top=2")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    try:
        return run(args)
    except ErasureError as error:
        print(f"erase: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command" if args.seeds is not None else "with --resume"
        print(f"erase: interrupted (training methods keep their last checkpoint; rerun {again})", file=sys.stderr)
        return 130


def run(args: argparse.Namespace) -> int:
    """Check everything that can be checked, claim the outputs, then load, erase and save.

    Args:
        args: the parsed command line.
    """
    import torch

    from . import RunOptions
    from .loading import load_pipeline, resolve_device
    from .methods import get_method
    from .paths import claimed_outputs
    from .tokenizer import warn_if_truncated
    from .training import check_checkpoint_folder

    method = get_method(args.method)
    if args.seeds is not None or args.choose_on is not None:
        return _choose_seed(args, method)
    if args.resume and not method.trains:
        raise ErasureError(f"--resume applies to methods that train and checkpoint; {args.method} does not")
    concepts = _concepts(args)
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ErasureError(f"--seed {args.seed}: give a whole number from 0 to {MAX_SEED}")
    config = _config(args, method)
    device = resolve_device(args.device)
    output = args.output or Path("outputs") / f"{args.method}-{slug(concepts)}.safetensors"
    outputs = _check_outputs(output, args)
    run_options = RunOptions(checkpoint_dir=output.with_suffix(".checkpoint"), checkpoint_every=args.checkpoint_every,
                             resume=args.resume, overwrite=args.overwrite)
    if method.trains:
        check_checkpoint_folder(run_options)

    with claimed_outputs(outputs):
        torch.manual_seed(args.seed or 0)
        started = time.perf_counter()
        # Training needs float32 master weights; closed-form methods solve in float64 anyway.
        dtype = "float32" if args.dtype == "auto" and method.trains else args.dtype
        pipe = load_pipeline(args.model, device=device, dtype=dtype)
        loaded = time.perf_counter()
        _check_space(pipe, output, args.export)
        prompts = list(getattr(config, "preserve", None) or [])
        warn_if_truncated(pipe.tokenizer, [c.text for c in concepts] + [c.target for c in concepts if c.target] + prompts)
        edited = method.run(pipe, concepts, config, run_options)
        edited.save(output, overwrite=args.overwrite)
        exports = [_export(kind, edited, pipe, output, args.overwrite) for kind in args.export]

    total = sum(p.numel() for c in edited.components for p in getattr(pipe, c).parameters())
    changed = sum(t.numel() for t in edited.tensors.values())
    labels = {"unet": "UNet", "text_encoder": "text-encoder", "text_encoder_2": "second-text-encoder"}
    where = " and ".join(f"{len(values)} {labels[component]}" for component, values in edited.components.items())
    names = ", ".join(_short(str(c)) for c in concepts[:5]) + (f" and {len(concepts) - 5} more" if len(concepts) > 5 else "")
    print(
        f"erased {len(concepts)} concept(s) ({names}) with {args.method}: changed {where} tensors "
        f"({changed:,} of {total:,} parameters) in {edited.extra['erase_seconds']:.1f} s "
        f"(load {loaded - started:.1f} s) -> {output}" + "".join(f", {e}" for e in exports)
    )
    return 0


def _choose_seed(args: argparse.Namespace, method) -> int:
    """``--seeds``: check everything, claim the output, then erase, measure and pick (``erasure.seed_choice``)."""
    import dataclasses

    from .config import build_config, field_path, parse_override
    from .paths import claimed_outputs
    from .seed_choice import ChoiceRun, SeedChoiceConfig, check_rule, check_tuning_set, choose, parse_seeds

    if args.seeds is None or args.choose_on is None:
        raise ErasureError("--seeds and --choose-on go together: the seeds to erase with and the tuning set that "
                           "compares them, e.g. --seeds 8-15 --choose-on scripts/advunlearn_prompts/choose-seed-240.csv")
    if field_path(method.config_class, "seed") is None:
        raise ErasureError(f"--seeds chooses among a seeded method's runs; {args.method} has no seed (its result does "
                           "not depend on one)")
    if args.seed is not None:
        raise ErasureError("--seed and --seeds both set the seed: give one of them")
    if args.resume:
        raise ErasureError("--seeds resumes by itself from <output>.seeds/: rerun the same command without --resume")
    if args.export:
        raise ErasureError("--export does not go with --seeds: export the chosen weights afterwards "
                           "(erasure.weights.export_pipeline)")
    seeds = parse_seeds(args.seeds, MAX_SEED)
    rule = build_config(SeedChoiceConfig, dict(parse_override(item) for item in args.choose_set),
                        source="--choose-set field")
    check_rule(rule)
    check_tuning_set(args.choose_on)
    concepts = _concepts(args)
    args.output = args.output or Path("outputs") / f"{args.method}-{slug(concepts)}.safetensors"

    def with_seed(seed: int, **changes) -> argparse.Namespace:
        return argparse.Namespace(**{**vars(args), "seed": seed, **changes})

    def erase_one(seed: int, path: Path, resume: bool) -> None:
        run(with_seed(seed, seeds=None, choose_on=None, output=path, resume=resume, overwrite=False))

    def settings_of(seed: int) -> dict:
        return dataclasses.asdict(_config(with_seed(seed), method, announce=False))

    settings_of(seeds[0])  # a bad --config or --set fails now, not after the first erasure
    _check_outputs(args.output, args)
    choice = ChoiceRun(args.output, args.choose_on, args.model, args.device, args.overwrite, erase_one, settings_of)
    with claimed_outputs([args.output]):
        choose(choice, rule, seeds)
    return 0


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config(args, method, announce: bool = True):
    """The resolved method config: presets (the concept type's, then mini-sd's own when
    --model mini-sd has no --config) < --config < --preserve < --set."""
    from . import resolve_config
    from .config import field_path, model_preset, parse_override
    from .paths import read_text_file

    overrides = dict(parse_override(item) for item in args.overrides)
    seed = field_path(method.config_class, "seed")
    if args.seed is not None and seed is not None:
        if seed in overrides:
            raise ErasureError(f"--seed and --set {seed}=... both set the seed: give one of them")
        overrides[seed] = args.seed
    if args.preserve is not None:
        preserve = field_path(method.config_class, "preserve")
        if preserve is None:
            raise ErasureError(f"--preserve applies to methods with a preserve set (uce, rece); {args.method} has none")
        overrides[preserve] = [check_text(p.strip(), "--preserve prompt") for p in args.preserve.split(",") if p.strip()]
    if args.config is not None:
        read_text_file(args.config, "config file")  # a folder or binary file: one line, not a traceback
    preset = model_preset(args.method, args.model) if args.config is None else None
    if preset is not None and announce:
        print(f"using {preset.parent.name}/{preset.name}, the settings for {args.model} (--config replaces them)")
    return resolve_config(args.method, args.concept_type, args.config, model=args.model, **overrides)


def quiet_libraries() -> None:
    """Keep the libraries' own chatter (Hub retries, deprecations, progress bars, the errors
    they log just before raising the exception we report) off the user's terminal: our
    errors say what went wrong in one line, our warnings come from the ``erasure`` logger."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    import huggingface_hub

    # Libraries that log through the root logger (open_clip's logging.error before it
    # raises): nothing reaches it, and its handler keeps logging.error() from calling
    # basicConfig(), which would then print every propagated library record.
    root = logging.getLogger()
    root.setLevel(logging.CRITICAL)
    if not any(isinstance(h, logging.NullHandler) for h in root.handlers):
        root.addHandler(logging.NullHandler())
    ours = logging.getLogger("erasure")
    ours.setLevel(logging.WARNING)
    for handler in [h for h in ours.handlers if getattr(h, "erasure_cli", False)]:
        ours.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)  # the stderr of this call (tests replace it per call)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.erasure_cli = True
    ours.addHandler(handler)
    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity(library.CRITICAL)
        library.disable_progress_bar()  # loading and saving bars
    huggingface_hub.utils.logging.set_verbosity(logging.CRITICAL)  # Hub retries; download bars stay
    warnings.filterwarnings("ignore", category=FutureWarning)


def _concepts(args):
    if bool(args.concepts is not None) == bool(args.concepts_file is not None):
        raise ErasureError("give the concepts with either --concepts or --concepts-file (exactly one)")
    return read_concept_file(args.concepts_file) if args.concepts_file else parse_concepts(args.concepts)


def _check_outputs(output: Path, args) -> list[Path]:
    """Refuse, before any work, outputs that cannot be written; return every path the run writes."""
    from .paths import check_output

    if output.suffix != ".safetensors":
        raise ErasureError(f"--output {output}: the weights file must end in .safetensors")
    if "lora" in args.export and args.method != "mace":
        raise ErasureError("--export lora is available for --method mace (its edit is a low-rank update)")
    repeated = sorted({kind for kind in args.export if args.export.count(kind) > 1})
    if repeated:
        raise ErasureError(f"--export {repeated[0]} is given twice: give each export once")
    outputs = [output] + [_export_path(kind, output) for kind in args.export]
    for path in outputs:
        if _inside(path, args.model):
            raise ErasureError(f"{path} would be written inside the model folder {args.model}: write it outside the model")
    check_output(output, args.overwrite)
    for kind in args.export:
        check_output(_export_path(kind, output), args.overwrite, folder=kind == "diffusers", flag=f"--export {kind}")
    return outputs


def _inside(path: Path, model: str) -> bool:
    """Whether ``path`` is the local model (a file) or inside it (a folder)."""
    if not model.strip() or not Path(model).exists():
        return False
    model_path = Path(model).resolve()
    return path.resolve() == model_path or model_path in path.resolve().parents


def _check_space(pipe, output: Path, exports: list[str]) -> None:
    """Refuse, before erasing, when the disk cannot hold the outputs: a weights file holds
    at least the cross-attention keys and values (float32), a pipeline export the whole
    pipeline in its dtype; a LoRA is smaller than either."""
    import torch

    from .adapters import adapter_for
    from .paths import check_free_space

    needed = sum(w.numel() * 4 for w in adapter_for(pipe).cross_attention_weights().values())
    if "diffusers" in exports:
        modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
        needed += sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())
    check_free_space(output.parent, needed)


def _export_path(kind: str, output: Path) -> Path:
    suffix = {"diffusers": "-diffusers", "lora": "-lora.safetensors"}[kind]
    return output.with_name(output.stem + suffix)


def _export(kind: str, edited, pipe, output: Path, overwrite: bool) -> str:
    path = _export_path(kind, output)
    if kind == "diffusers":
        export_pipeline(edited, pipe, path, overwrite)
        return f"pipeline folder {path}"
    from .lora_export import export_lora

    report = export_lora(edited, pipe, path, overwrite=overwrite)
    return f"LoRA {path} (rank {report.rank}, relative error {report.relative_error:.2e})"


if __name__ == "__main__":
    sys.exit(main())
