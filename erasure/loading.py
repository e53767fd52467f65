"""One loader for every Stable Diffusion this toolkit edits.

``load_pipeline`` takes a Hub id, a local diffusers folder, a single-file
``.safetensors`` checkpoint, or the name of a bundled model (``"mini-sd"``) and returns
a diffusers pipeline on the chosen device and dtype.

The safety checker is always off: this is a research tool for measuring what a model
generates, and the checker would blank the very images the evaluation must score.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from .assets import bundled_model_path
from .errors import ErasureError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
BUNDLED_PIPELINES = ("mini-sd",)  # the bundled models load_pipeline accepts by name
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to load on, checked to exist here: a one-line ``ErasureError`` for a
    name torch does not know, a GPU this machine lacks, or a type we do not run on.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or ``None`` for the
            default (the GPU if there is one).
    """
    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ErasureError(f"unknown device {str(device)!r}: use cpu, cuda, cuda:N (N-th GPU) or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ErasureError(f"device {str(device)!r} asks for a CUDA GPU, but none is available here: use cpu")
        if parsed.index is not None and parsed.index >= count:
            raise ErasureError(f"device {str(device)!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ErasureError(f"device {str(device)!r}: Apple's MPS is not available here: use cpu")
    elif parsed.type != "cpu":
        raise ErasureError(f"device {str(device)!r} is not supported: use cpu, cuda, cuda:N or mps")
    return parsed


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp32 on the CPU; fp16 on a GPU (the checkpoints' own precision); or as asked."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ErasureError(f"unknown dtype {dtype!r}: use one of float32, float16, bfloat16")
    return _DTYPES[dtype]


def model_folder(model: str | os.PathLike) -> Path | None:
    """The local folder of a model: a bundled pipeline's, or the path itself if it is a
    folder; ``None`` for Hub ids and single files.

    Args:
        model: what ``load_pipeline`` was given (a pipeline's ``name_or_path``).
    """
    name = str(model)
    if name in BUNDLED_PIPELINES:
        return bundled_model_path(name, needs="model_index.json")
    return Path(name) if os.path.isdir(name) else None


def generation_defaults(model: str | os.PathLike) -> dict:
    """The generation settings a model folder recommends in its ``erasure_defaults.json``
    (``resolution``, ``num_inference_steps``, ``guidance_scale``; the bundled mini-sd has
    one), or ``{}`` for a model without it.

    Args:
        model: a bundled pipeline's name, a folder, or anything else ``load_pipeline``
            accepts (Hub ids and files have no defaults of ours).
    """
    name = str(model)
    folder = bundled_model_path(name, needs="model_index.json") if name in BUNDLED_PIPELINES else Path(name)
    path = folder / "erasure_defaults.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ErasureError(f"{path} is not valid JSON ({error}): repair or remove it") from None


def load_pipeline(
    model: str | os.PathLike = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
):
    """Load a Stable Diffusion 1.x, 2.x or SDXL pipeline, safety checker off.

    Args:
        model: a Hub id (``"CompVis/stable-diffusion-v1-4"``), a local diffusers folder,
            a single-file ``.safetensors`` checkpoint, or ``"mini-sd"`` (bundled).
        device: ``"cuda"``, ``"cpu"``...; default: the GPU if there is one.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` or ``"auto"`` (fp16 on GPU, fp32 on CPU).

    Returns:
        A diffusers pipeline whose ``name_or_path`` is ``model``.
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    name = str(model)
    if not name.strip():
        raise ErasureError("no model given: pass a Hub id, a diffusers folder, a .safetensors file or mini-sd")
    if name in BUNDLED_PIPELINES:
        pipe = _from_folder(bundled_model_path(name, needs="model_index.json"), torch_dtype)
    elif os.path.isdir(name):
        pipe = _from_folder(Path(name), torch_dtype)
    elif os.path.isfile(name):
        pipe = _from_single_file(Path(name), torch_dtype)
    elif name.endswith((".safetensors", ".ckpt", ".pt", ".bin")) or name.startswith((".", "/", "~")) or _is_path(name):
        raise ErasureError(f"model file or folder {name!r} not found: check the path")
    else:
        pipe = _from_hub(name, torch_dtype)
    pipe.register_to_config(_name_or_path=name)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _is_path(name: str) -> bool:
    """A Hub id is ``owner/name``: more slashes, or a backslash, make a path."""
    return name.count("/") > 1 or "\\" in name


def _no_safety_checker(pipeline_class) -> dict:
    if "safety_checker" in getattr(pipeline_class, "_optional_components", []):
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def _from_folder(path: Path, torch_dtype: torch.dtype):
    if not (path / "model_index.json").is_file():
        raise ErasureError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
    extra = {}
    if not (path / "tokenizer").is_dir():
        # Bundled models carry no 3.6 MB tokenizer copy: it is the real CLIP one, built offline.
        from .tokenizer import clip_tokenizer

        extra["tokenizer"] = clip_tokenizer()
    pipeline_class = _pipeline_class(path)
    try:
        pipe = pipeline_class.from_pretrained(
            str(path), dtype=torch_dtype, local_files_only=True, use_safetensors=True,
            **extra, **_no_safety_checker(pipeline_class),
        )
    except Exception as error:  # diffusers and transformers raise many types for a broken folder
        raise ErasureError(f"could not load the pipeline in {path}: {_first_line(error)}") from None
    _check_complete(pipe, path)
    return pipe


def _first_line(error: Exception) -> str:
    """The gist of a library's error for a one-line message: its first line, cut after
    the first sentence when long."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0]
    end = line.find(". ", 40)
    return line[: end + 1] if len(line) > 200 and end > 0 else line[:300]


def _pipeline_class(path: Path):
    import diffusers

    index = path / "model_index.json"
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ErasureError(f"{index} is not valid JSON ({_first_line(error)}): repair it or download the model again") from None
    if not isinstance(content, dict):
        raise ErasureError(f"{index} must hold a JSON object: repair it or download the model again")
    class_name = content.get("_class_name", "StableDiffusionPipeline")
    if class_name not in SUPPORTED_PIPELINES:
        raise ErasureError(
            f"{index} names the pipeline {class_name!r}; erasure edits Stable Diffusion 1.x, 2.x and SDXL "
            f"({', '.join(SUPPORTED_PIPELINES)}): pass such a model"
        )
    return getattr(diffusers, class_name)


def _check_complete(pipe, path: Path) -> None:
    """diffusers leaves the tensors a component's checkpoint lacks on the ``meta`` device
    and fails only later, deep inside ``.to()``: refuse such a folder now, by name."""
    for name, component in pipe.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        tensors = dict(component.named_parameters()) | dict(component.named_buffers())
        missing = [key for key, value in tensors.items() if value.is_meta]
        if missing:
            raise ErasureError(
                f"{path / name} is not a complete {type(component).__name__} checkpoint ({len(missing)} of "
                f"{len(tensors)} tensors missing, e.g. {missing[0]}){_erasure_file_note(path / name)}: "
                "restore it from the original model"
            )


def _erasure_file_note(folder: Path) -> str:
    """``"; its weights file is an erase output"`` when a component's weights were
    replaced by a file ``erase`` wrote (the likeliest way to lose a UNet)."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                if (handle.metadata() or {}).get("format") == "erasure":
                    return f"; {file.name} is an erasure weights file, not a {folder.name} checkpoint"
        except Exception:  # an unreadable file: the message above already says what to do
            continue
    return ""


def _from_single_file(path: Path, torch_dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise ErasureError(
            f"{path}: only .safetensors checkpoints are loaded (pickled {path.suffix} files can run code); "
            "convert it to .safetensors first"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            is_sdxl = any(key.startswith("conditioner.embedders.1.") for key in handle.keys())
            metadata = handle.metadata() or {}
    except Exception as error:  # safetensors raises several types for damaged files
        raise ErasureError(f"{path} is not a readable .safetensors checkpoint ({error})") from None
    if metadata.get("format") == "erasure":
        raise ErasureError(
            f"{path} is an erasure weights file, not a model: load its base model "
            f"({metadata.get('base_model', 'see its metadata')}) and apply the weights to it "
            "(erasure.apply, or erase-eval --weights)"
        )
    pipeline_class = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    try:
        return pipeline_class.from_single_file(str(path), dtype=torch_dtype, **_no_safety_checker(pipeline_class))
    except Exception as error:  # diffusers' single-file loader raises many types for a foreign file
        raise ErasureError(
            f"could not load single-file checkpoint {path} ({_first_line(error)}); its configs come from "
            "the Hub, so offline pass a diffusers folder instead"
        ) from None


def _from_hub(model_id: str, torch_dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(
            model_id, dtype=torch_dtype, use_safetensors=True, safety_checker=None, requires_safety_checker=False
        )
    except Exception as error:  # network, authorisation and format errors alike
        raise ErasureError(
            f"model {model_id!r} could not be loaded from the Hugging Face Hub or its cache "
            f"({_first_line(error)[:160]}): check the id, log in for gated models, or pass a local folder"
        ) from None
