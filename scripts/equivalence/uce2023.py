"""UCE, the authors' 2023 code (``train-scripts/train_erase.py`` of
rohitgandikota/unified-concept-editing before commit 4502388), against ``erasure``'s UCE
with ``configs/uce/authors-2023.yaml`` (and with UCE's defaults, which are the same).

    python uce2023.py --repo /path/to/uce-2023-checkout

Their script runs as ``__main__`` with its own argument handling, on the tiny float64
pipeline. Runtime edits:
- ``StableDiffusionPipeline.from_pretrained`` returns the tiny pipeline and its
  ``.to("cuda:N")`` is a no-op (the script hard-codes the Hub id and a CUDA device);
- ``CLIPModel/CLIPProcessor.from_pretrained`` return ``None`` (the script loads them at
  import for a function it never calls);
- ``torch.set_default_dtype(float64)`` while it runs, so the accumulators it starts
  from ``torch.eye`` are float64;
- it runs in a scratch folder with ``models/``, ``info/`` and a link to its ``data/``.
Our side reads the same inputs: their template list and, for the artist command, their
``data/artists1734_prompts.csv`` through ``preserve_file``; for ``--preserve_number``
the names their script sampled.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

# name, their argv, our concept type
SCENARIOS = [
    ("object", ["--concepts", "garbage truck", "--concept_type", "object"], "object"),
    ("object, --add_prompts", ["--concepts", "garbage truck", "--concept_type", "object", "--add_prompts", "True"],
     "object"),
    ("unsafe, 3 concepts", ["--concepts", "violence, nudity, harm", "--concept_type", "unsafe"], "nudity"),
    ("artist, README command (1,734 artists preserved)",
     ["--concepts", "Van Gogh", "--guided_concepts", "art", "--concept_type", "art"], "style"),
    ("artist, --preserve_number 5",
     ["--concepts", "Van Gogh", "--guided_concepts", "art", "--concept_type", "art", "--preserve_number", "5"], "style"),
    ("artist, --preserve_number 5 --add_prompts",
     ["--concepts", "Van Gogh", "--guided_concepts", "art", "--concept_type", "art", "--preserve_number", "5",
      "--add_prompts", "True"], "style"),
]


def run_theirs(repo: Path, folder: Path, argv: list[str], seed: int = 0):
    """Their script on the tiny pipeline; returns (their UNet state, their namespace, the
    original state, the checkpoint their script saved)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    pipe = common.load_pipe(folder)
    original = common.unet_state(pipe)
    pipe.to = lambda *a, **k: pipe  # their script moves the pipeline to cuda:N

    work = common.scratch("uce2023-")
    (work / "models").mkdir()
    (work / "info").mkdir()
    (work / "data").symlink_to(repo / "data")
    random.seed(seed)  # --preserve_number samples artists with the global generator
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with common.patches(
            (StableDiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe)),
            (CLIPModel, "from_pretrained", classmethod(lambda cls, *a, **k: None)),
            (CLIPProcessor, "from_pretrained", classmethod(lambda cls, *a, **k: None)),
        ):
            namespace = common.run_main(repo / "train-scripts" / "train_erase.py", argv + ["--device", "0"], work, [repo])
    finally:
        torch.set_default_dtype(previous)
    saved = list((work / "models").glob("*.pt"))
    state = torch.load(saved[0], map_location="cpu", weights_only=True)
    return state, namespace, original, saved[0]


def our_inputs(namespace: dict, argv: list[str], repo: Path) -> tuple[list[str], dict]:
    """The concepts and the overrides that give our run their script's inputs."""
    templates = ["{}"] + [t.replace("{concept}", "{}") for t in namespace["additional_prompts"]]
    overrides = {"prompt_templates": templates if "--add_prompts" in argv else ["{}"]}
    preserved = [p for p in namespace["retain_texts"] if p.strip()]
    if "--preserve_number" in argv:
        overrides["preserve"] = preserved  # the names their script sampled
    elif preserved:
        overrides["preserve_file"] = str(repo / "data" / "artists1734_prompts.csv")
    return list(namespace["concepts"]), overrides


def main(argv=None) -> None:
    args = common.repo_parser(__doc__, "checkout holding train-scripts/train_erase.py (2023)").parse_args(argv)
    repo, folder = common.prepare(args.repo)
    rows = []
    for name, their_argv, concept_type in SCENARIOS:
        theirs_state, namespace, original, _ = run_theirs(repo, folder, their_argv)
        theirs = common.changed(original, theirs_state)
        concepts, overrides = our_inputs(namespace, their_argv, repo)
        preset_run, extra = common.ours(folder, "uce", concepts, concept_type, common.preset("uce", "authors-2023"),
                                        **overrides)
        defaults_run, _ = common.ours(folder, "uce", concepts, concept_type, None, **overrides)
        results = {"preset authors-2023": common.relative_differences(preset_run, theirs),
                   "UCE defaults": common.relative_differences(defaults_run, theirs)}
        settings = {"preserved": len([p for p in namespace["retain_texts"] if p.strip()]),
                    "their_preserve_scale": namespace["preserve_scale"], "our_preserve_scale": extra["preserve_scale"],
                    "templates": len(overrides["prompt_templates"])}
        rows.append({"scenario": name, "argv": their_argv, "settings": settings, "results": results})
        common.report(name, str(settings), results)
    print("saved", common.save_results("uce2023", rows))


if __name__ == "__main__":
    main()
