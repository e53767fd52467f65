"""Shared pieces of the equivalence scripts: tiny pipelines, our methods run in full
precision with a preset, running an authors' script as ``__main__`` with runtime
patches, and the relative Frobenius differences.

Nothing here contains the authors' code: their scripts are read from a checkout given
on the command line and executed as they are; every edit they need is a patch applied
at run time (``unittest.mock.patch``), a stub module in ``sys.modules``, or a name
rebound at the start of their ``__main__`` block (``run_main(main_overrides=...)``).

Scratch files (the tiny pipelines, the authors' outputs) go to ``$EQUIV_WORK``
(default: ``<temp>/erasure-equivalence``); results to ``$EQUIV_WORK/results``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import statistics
import sys
import tempfile
import types
from pathlib import Path

import torch

WORK = Path(os.environ.get("EQUIV_WORK", Path(tempfile.gettempdir()) / "erasure-equivalence"))
CACHE = WORK / "cache"
RESULTS = WORK / "results"
REPOSITORY = Path(__file__).resolve().parents[2]  # this checkout of erasure (its configs/)


# ---- tiny pipelines ---------------------------------------------------------------------


def tiny_folder(family: str = "sd1", seed: int = 0, scheduler: str = "ddim", text_bias: bool = True) -> Path:
    """A saved tiny random pipeline (float32), built once and reused.

    ``erasure.tiny``'s text encoder ends in a LayerNorm with weight 1 and bias 0, so every
    token vector it outputs is orthogonal to the all-ones vector and every Gram matrix of
    them is singular: closed-form edits with ``lam = 0`` (MACE's celebrity, style and
    explicit settings) then have no unique solution (``torch.inverse`` and a
    pseudo-inverse disagree). SD 1.4's trained LayerNorm has a bias, so its token vectors
    span the space. Here that LayerNorm gets a seeded random weight and bias.
    """
    folder = CACHE / f"tiny-{family}-seed{seed}-{scheduler}{'-lnbias' if text_bias else ''}"
    if not (folder / "model_index.json").is_file():
        from erasure.tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline(family, seed)
        if text_bias:
            norm = pipe.text_encoder.get_submodule("final_layer_norm")
            generator = torch.Generator().manual_seed(seed + 100)
            with torch.no_grad():
                norm.weight.copy_(1 + 0.2 * torch.randn(norm.weight.shape, generator=generator))
                norm.bias.copy_(0.5 * torch.randn(norm.bias.shape, generator=generator))
        if scheduler == "pndm":
            from diffusers import PNDMScheduler

            pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
        pipe.save_pretrained(folder)
    return folder


def _real_from_pretrained():
    """``StableDiffusionPipeline.from_pretrained`` as diffusers defines it (patches replace it)."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    return DiffusionPipeline.__dict__["from_pretrained"].__func__, StableDiffusionPipeline


def load_pipe(folder: Path, dtype=torch.float64):
    real, cls = _real_from_pretrained()
    pipe = real(cls, str(folder), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dtype)


def unet_state(pipe) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pipe.unet.state_dict().items()}


# ---- our side ----------------------------------------------------------------------------


def preset(method: str, name: str) -> Path:
    """``configs/<method>/<name>.yaml`` of this checkout."""
    return REPOSITORY / "configs" / method / f"{name}.yaml"


def ours(folder: Path, method: str, concepts: list[str], concept_type: str, config, dtype=torch.float64,
         **overrides) -> tuple[dict[str, torch.Tensor], dict]:
    """Our method on the tiny pipeline in ``folder`` (loaded in ``dtype``), with ``config``
    (a preset path or a mapping) and ``overrides``; returns the changed tensors in the
    dtype they were computed in (the weight file would hold float32) and ``extra``."""
    import erasure
    from erasure.methods import get_method
    from erasure.training import RunOptions

    pipe = load_pipe(folder, dtype)
    resolved = erasure.resolve_config(method, concept_type, config, **overrides)
    concepts = erasure.concepts.parse_concepts(list(concepts))
    edit = get_method(method).erase(pipe, concepts, resolved, RunOptions())
    return dict(edit.new["unet"]), edit.extra


# ---- comparing ---------------------------------------------------------------------------


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], tol: float = 0.0) -> dict[str, torch.Tensor]:
    """The tensors of ``after`` that differ from ``before``."""
    return {k: v for k, v in after.items() if k in before and (v.double() - before[k].double()).abs().max() > tol}


def relative_differences(ours: dict, theirs: dict, reference: dict | None = None) -> dict:
    """``||ours - theirs|| / ||theirs - reference||`` per tensor (``reference`` None: ``||theirs||``).

    Returns max, median, the count of compared tensors, and the names changed on only one side.
    """
    names = sorted(set(ours) & set(theirs))
    values, unmoved = {}, []
    for name in names:
        a, b = ours[name].double().cpu(), theirs[name].double().cpu()
        scale = b if reference is None else b - reference[name].double().cpu()
        if float(scale.norm()) == 0.0:
            unmoved.append(name)  # their tensor did not move at all (e.g. bf16 updates below rounding)
            continue
        values[name] = float((a - b).norm() / scale.norm())
    return {
        "max": max(values.values()) if values else None,
        "median": statistics.median(values.values()) if values else None,
        "tensors": len(values),
        "only_ours": sorted(set(ours) - set(theirs)),
        "only_theirs": sorted(set(theirs) - set(ours)),
        "worst": max(values, key=values.get) if values else None,
        "unmoved_theirs": unmoved,
    }


def fmt(result: dict) -> str:
    if result["max"] is None:
        return "no common tensors"
    extra = ""
    if result["only_ours"] or result["only_theirs"]:
        extra = f"  only ours {len(result['only_ours'])}, only theirs {len(result['only_theirs'])}"
    if result.get("unmoved_theirs"):
        extra += f"  ({len(result['unmoved_theirs'])} tensors theirs left unchanged, not counted)"
    return f"max {result['max']:.3e}  median {result['median']:.3e}  ({result['tensors']} tensors){extra}"


def ours_version() -> str:
    """Where our package was imported from, and its commit."""
    import subprocess

    import erasure

    root = Path(erasure.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{erasure.__version__} from {root} at {commit}"


def save_results(name: str, rows: list[dict]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"ours": ours_version(), "torch": torch.__version__, "rows": rows}, indent=1, default=str))
    return path


def report(name: str, label: str, results: dict) -> None:
    print(f"\n== {name}: {label}")
    for key, result in results.items():
        print(f"   {key:70s} {fmt(result)}")


# ---- running the authors' scripts -------------------------------------------------------


def stub_module(name: str, **attributes) -> types.ModuleType:
    """Install an empty module (and its parents) in ``sys.modules``."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            module = types.ModuleType(sub)
            module.__path__ = []  # a package, so submodules import
            sys.modules[sub] = module
            if i > 1:
                setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], module)
    module = sys.modules[name]
    for key, value in attributes.items():
        setattr(module, key, value)
    return module


def _rebind_in_main(tree: ast.Module, names: list[str], wrapped: list[str] = ()) -> ast.Module:
    """Insert ``name = __harness__[name]`` (and ``name = __harness_wrap__[name](name)``) at
    the start of the ``if __name__ == '__main__'`` block, for names the script defines
    itself (so no import-time patch reaches them)."""
    for node in tree.body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            assignments = [ast.parse(f"{name} = __harness__[{name!r}]").body[0] for name in names]
            assignments += [ast.parse(f"{name} = __harness_wrap__[{name!r}]({name})").body[0] for name in wrapped]
            node.body[:0] = assignments
            break
    else:
        raise RuntimeError("no __main__ block to rebind names in")
    return ast.fix_missing_locations(tree)


def run_main(script: Path, argv: list[str], cwd: Path, sys_path: list[Path], main_overrides: dict | None = None,
             namespace: dict | None = None, main_wrappers: dict | None = None) -> dict:
    """Execute ``script`` as ``__main__`` with ``argv``, from ``cwd``; returns its globals.

    Args:
        main_overrides: names the script defines itself, rebound to these values at the
            start of its ``__main__`` block.
        namespace: the dict to run in (so a patch can reach the script's globals while it runs).
        main_wrappers: ``{name: factory}``; at the start of ``__main__``, ``name`` becomes
            ``factory(name)`` (e.g. a wrapper of a function the script defines).
    """
    script = Path(script).resolve()
    source = script.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(script))
    overrides, wrappers = dict(main_overrides or {}), dict(main_wrappers or {})
    if overrides or wrappers:
        tree = _rebind_in_main(tree, list(overrides), list(wrappers))
    code = compile(tree, str(script), "exec")
    namespace = {} if namespace is None else namespace
    namespace.update({"__name__": "__main__", "__file__": str(script), "__harness__": overrides,
                      "__harness_wrap__": wrappers})
    old_argv, old_path, old_cwd = sys.argv[:], sys.path[:], os.getcwd()
    sys.argv = [str(script)] + list(argv)
    sys.path[:0] = [str(p) for p in sys_path]
    cwd.mkdir(parents=True, exist_ok=True)
    os.chdir(cwd)
    try:
        exec(code, namespace)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        os.chdir(old_cwd)
    return namespace


def scratch(prefix: str) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=WORK))


@contextlib.contextmanager
def patches(*items):
    """``patches((obj, "attr", value), ...)``: all applied, all undone."""
    from unittest import mock

    with contextlib.ExitStack() as stack:
        for obj, attr, value in items:
            stack.enter_context(mock.patch.object(obj, attr, value, create=not hasattr(obj, attr)))
        yield


def forget_modules(prefixes: list[str]) -> None:
    """Drop imported modules of an authors' repository, so another script of it (or of
    another repository with the same package names, e.g. ``utils``) imports afresh."""
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


def repo_parser(doc: str, repo_help: str) -> argparse.ArgumentParser:
    """A comparison script's command line: ``--repo`` (the authors' checkout), more to add."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help=repo_help)
    return parser


def prepare(repo: Path, text_bias: bool = True) -> tuple[Path, Path]:
    """One thread, offline and quiet (``setup_environment``); returns the checkout's
    absolute path and the tiny SD 1.x folder both sides load (``tiny_folder``)."""
    setup_environment()
    return repo.resolve(), tiny_folder("sd1", text_bias=text_bias)


def setup_environment() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)
    import warnings

    import diffusers
    import transformers

    warnings.filterwarnings("ignore")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
