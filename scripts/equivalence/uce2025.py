"""UCE, the authors' 2025 code (``trainscripts/uce_sd_erase.py`` of
rohitgandikota/unified-concept-editing), against ``erasure``'s UCE with
``configs/uce/authors-2025.yaml``.

    python uce2025.py --repo /path/to/unified-concept-editing

Their script runs as ``__main__`` unchanged, given ``--model_id <tiny folder> --device cpu``
(the float32 run, compared with our float64 run). For the float64 run, two runtime
edits: ``DiffusionPipeline.from_pretrained`` loads in float64 and sets the script's
global ``torch_dtype`` to float64 (it hard-codes float32 in its ``__main__`` block), and
``torch.Tensor.float`` is the identity while it runs (it inverts ``mat2.float()``).
Our side reads the prompts their script made: its template list, when
``--expand_prompts true``, as ``prompt_templates``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCENARIOS = [
    ("object", ["--edit_concepts", "garbage truck", "--concept_type", "object"]),
    ("object + 2 preserved", ["--edit_concepts", "garbage truck", "--concept_type", "object",
                              "--preserve_concepts", "tree; red car"]),
    ("3 concepts (README's unsafe example, as object)", ["--edit_concepts", "violence; nudity; harm",
                                                          "--concept_type", "object"]),
    ("README artist example (2 artists, 3 preserved)", ["--edit_concepts", "Van Gogh; Picasso", "--concept_type", "art",
                                                         "--preserve_concepts", "Monet; Rembrandt; Warhol"]),
    ("object, --expand_prompts true", ["--edit_concepts", "garbage truck", "--concept_type", "object",
                                       "--expand_prompts", "true"]),
    ("artist, --expand_prompts true, 2 preserved", ["--edit_concepts", "Van Gogh", "--concept_type", "art",
                                                     "--preserve_concepts", "Monet; Rembrandt", "--expand_prompts", "true"]),
]


def run_theirs(repo: Path, folder: Path, argv: list[str], float64: bool):
    from diffusers import DiffusionPipeline

    work = common.scratch("uce2025-")
    namespace: dict = {}
    real = DiffusionPipeline.from_pretrained.__func__

    def from_pretrained(cls, model_id, *args, **kwargs):
        if float64:
            kwargs["torch_dtype"] = torch.float64
            namespace["torch_dtype"] = torch.float64
        return real(cls, model_id, *args, **kwargs)

    items = [(DiffusionPipeline, "from_pretrained", classmethod(from_pretrained))]
    if float64:
        items.append((torch.Tensor, "float", lambda self, *a, **k: self))
    with common.patches(*items):
        common.run_main(repo / "trainscripts" / "uce_sd_erase.py",
                        argv + ["--model_id", str(folder), "--device", "cpu", "--save_dir", str(work), "--exp_name", "uce"],
                        work, [repo / "trainscripts"], namespace=namespace)
    return load_file(str(work / "uce.safetensors")), namespace


def main(argv=None) -> None:
    args = common.repo_parser(__doc__, "checkout holding trainscripts/uce_sd_erase.py").parse_args(argv)
    repo, folder = common.prepare(args.repo)
    rows = []
    for name, their_argv in SCENARIOS:
        theirs64, ns = run_theirs(repo, folder, their_argv, float64=True)
        theirs32, _ = run_theirs(repo, folder, their_argv, float64=False)
        concepts = [c.strip() for c in ns["args"].edit_concepts.split(";")]
        first = concepts[0]
        templates = ["{}"] + [p.replace(first, "{}") for p in ns["edit_concepts"][len(concepts):] if first in p]
        concept_type = "style" if "art" in their_argv else "object"
        overrides = {"preserve": ns["preserve_concepts"], "prompt_templates": templates}
        ours, _ = common.ours(folder, "uce", concepts, concept_type, common.preset("uce", "authors-2025"), **overrides)
        results = {"preset authors-2025, float64 both": common.relative_differences(ours, theirs64),
                   "preset authors-2025 vs their unchanged float32 run": common.relative_differences(ours, theirs32)}
        rows.append({"scenario": name, "argv": their_argv, "overrides": overrides, "results": results,
                     "their_guides": ns["guide_concepts"], "their_prompts": ns["edit_concepts"]})
        common.report(name, f"prompts {ns['edit_concepts']} -> {ns['guide_concepts']}", results)
    print("saved", common.save_results("uce2025", rows))


if __name__ == "__main__":
    main()
