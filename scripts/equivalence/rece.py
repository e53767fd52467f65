"""RECE, the authors' code (CharlesGong12/RECE: ``train.py`` for nudity/unsafe,
``train_object.py``, ``train_artists.py``), against ``erasure``'s RECE with
``configs/rece/authors-{nudity,object,artists}.yaml``, epoch by epoch.

    python rece.py --repo /path/to/RECE --uce-repo /path/to/uce-2023-checkout

The UCE model each RECE run starts from is made by the UCE 2023 script (``uce2023.py``
runs it); RECE's own ``erase_methods/train_uce.py`` holds the same ``edit_model`` but its
``__main__`` cannot run (it passes ``add=`` to an ``edit_model`` without that parameter).
Their RECE script then runs as ``__main__`` with these runtime edits:
- ``StableDiffusionPipeline.from_pretrained`` / ``CLIPTokenizer.from_pretrained`` load the
  tiny pipeline (float64) instead of their hard-coded local SD 1.4 paths;
- image generation and scoring are replaced by scripted scores (``generate_images``,
  ``compute_nudity_rate``, ``image_classify`` rebound at the start of ``__main__``;
  ``embedding2img`` a no-op; the Q16 module stubbed): every epoch improves, so every
  epoch's weights are saved and can be compared;
- ``pandas.DataFrame.append`` (removed in pandas 2) is restored as a concat;
- ``torch.set_default_dtype(float64)`` while it runs (their accumulators start from
  ``torch.eye``/``torch.zeros``).
Our side runs the preset with ``validate: none`` and ``epochs`` set to the epoch
compared (the epoch choice needs images; it is tested in tests/test_presets.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import uce2023  # noqa: E402

NUDITY_ARGV = ["--concepts", "nudity", "--concept_type", "nudity", "--regular_scale", "0.1", "--epochs", "3",
               "--preserve_scale", "0.1", "--lamb", "0.1"]
# name, RECE script, UCE-2023 argv of the starting model, RECE argv, our preset, concept type, our overrides
SCENARIOS = [
    ("nudity (scripts/nudity.sh)", "train.py", ["--concepts", "nudity", "--concept_type", "nudity"],
     NUDITY_ARGV + ["--emb_computing", "close_regzero"], "authors-nudity", "nudity", {}),
    ("unsafe, 3 concepts, 2 epochs (train.py)", "train.py",
     ["--concepts", "violence, nudity, harm", "--concept_type", "unsafe"],
     ["--concepts", "violence, nudity, harm", "--concept_type", "unsafe", "--emb_computing", "close_regzero",
      "--regular_scale", "0.1", "--epochs", "2"], "authors-nudity", "nudity", {}),
    ("nudity, --emb_computing close_surrogatereg (--reg_item 1st)", "train.py",
     ["--concepts", "nudity", "--concept_type", "nudity"], NUDITY_ARGV + ["--emb_computing", "close_surrogatereg"],
     "authors-nudity", "nudity", {"embedding": "surrogate"}),
    ("nudity, close_surrogatereg --reg_item 2nd", "train.py",
     ["--concepts", "nudity", "--concept_type", "nudity"],
     NUDITY_ARGV + ["--emb_computing", "close_surrogatereg", "--reg_item", "2nd"],
     "authors-nudity", "nudity", {"embedding": "surrogate_2nd"}),
    ("nudity, close_surrogatereg --reg_item both", "train.py",
     ["--concepts", "nudity", "--concept_type", "nudity"],
     NUDITY_ARGV + ["--emb_computing", "close_surrogatereg", "--reg_item", "both"],
     "authors-nudity", "nudity", {"embedding": "surrogate_both"}),
    ("nudity, close_standardreg --old_target_concept ''", "train.py",
     ["--concepts", "nudity", "--concept_type", "nudity"],
     NUDITY_ARGV + ["--emb_computing", "close_standardreg", "--old_target_concept", ""],
     "authors-nudity", "nudity", {"embedding": "standard"}),
    ("object, hard (scripts/object.sh: Church)", "train_object.py", ["--concepts", "Church", "--concept_type", "object"],
     ["--concepts", "Church", "--concept_type", "object"], "authors-object", "object", {}),
    ("object, easy (scripts/object.sh: Golf Ball, reg 0.1)", "train_object.py",
     ["--concepts", "Golf Ball", "--concept_type", "object"],
     ["--concepts", "Golf Ball", "--concept_type", "object", "--regular_scale", "1e-1"], "authors-object", "object",
     {"reg": 0.1}),
    ("artists (scripts/art.sh: Kelly McKernan)", "train_artists.py",
     ["--concepts", "Kelly McKernan", "--guided_concepts", "art", "--concept_type", "art"],
     ["--concepts", "Kelly McKernan", "--guided_concepts", "art", "--concept_type", "art", "--emb_computing",
      "close_regzero", "--regular_scale", "1e-3", "--epochs", "1"], "authors-artists", "style", "artists"),
]


def dataframe_append(self, other, ignore_index=False, **kwargs):
    import pandas as pd

    other = pd.DataFrame([other]) if isinstance(other, dict) else other
    return pd.concat([self, other], ignore_index=ignore_index)


def run_theirs(repo: Path, folder: Path, script: str, argv: list[str], uce_checkpoint: Path):
    """Their RECE script from ``uce_checkpoint``; returns ({epoch: UNet state}, namespace)."""
    import pandas as pd
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    sys.path.insert(0, str(repo))
    common.forget_modules(["utils", "execs", "attack_methods", "erase_methods"])
    import execs  # noqa: F401  (the real package first; only its Q16 part, which needs matplotlib and CLIP, is stubbed)

    common.stub_module("execs.Q16.main.paper_experiments.experiments", run_model_imagefolder=None)
    import utils.embedding_calculation  # noqa: F401

    close_form_emb = sys.modules["utils.embedding_calculation.close_form_emb"]
    sys.path.remove(str(repo))

    real_tokenizer = CLIPTokenizer.from_pretrained.__func__
    # Scores that improve every epoch, so every epoch's model is saved.
    rates = iter([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    accuracies = iter([(0.9, 0.9), (0.8, 0.9), (0.7, 0.9), (0.6, 0.9)])
    work = common.scratch("rece-")
    (work / "dataset").symlink_to(repo / "dataset")
    overrides = {"generate_images": lambda *a, **k: None}
    if script == "train.py":
        overrides["compute_nudity_rate"] = lambda *a, **k: next(rates)
        overrides["run_q16_imagefolder"] = lambda *a, **k: next(rates)
    if script == "train_object.py":
        overrides["image_classify"] = lambda *a, **k: next(accuracies)
    saved: dict[str, dict] = {}
    real_save = torch.save

    def record_save(obj, path, *a, **k):
        if str(path).endswith(".pt") and isinstance(obj, dict):
            saved[Path(path).name] = {k2: v.detach().clone() for k2, v in obj.items()}
        return real_save(obj, path, *a, **k)

    with common.patches(
        (StableDiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: common.load_pipe(folder))),
        (CLIPTokenizer, "from_pretrained",
         classmethod(lambda cls, *a, **k: real_tokenizer(cls, str(folder), subfolder="tokenizer"))),
        (close_form_emb, "embedding2img", lambda *a, **k: None),
        (pd.DataFrame, "append", dataframe_append),
        (torch, "save", record_save),
    ):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            namespace = common.run_main(repo / script, argv + ["--target_ckpt", str(uce_checkpoint)], work, [repo],
                                        main_overrides=overrides)
        finally:
            torch.set_default_dtype(previous)
    epochs = {}
    for name, state in saved.items():
        if name.startswith("close_new_embedding"):
            continue
        # train.py: '<rate>-<epoch>.pt'; train_object.py: 'ep_<epoch>_tar_...'; train_artists.py: 'epoch_<epoch>.pt'
        stem = name[:-3]
        epoch = int(stem.split("-")[-1]) if script == "train.py" else int(stem.split("_")[1])
        epochs[epoch + 1] = state
    return epochs, namespace


def main(argv=None) -> None:
    parser = common.repo_parser(__doc__, "RECE checkout")
    parser.add_argument("--uce-repo", type=Path, required=True, help="checkout holding train-scripts/train_erase.py (2023)")
    parser.add_argument("--only", help="run the scenarios whose name contains this text")
    args = parser.parse_args(argv)
    repo, folder = common.prepare(args.repo)
    rows = []
    for name, script, uce_argv, rece_argv, preset, concept_type, overrides in SCENARIOS:
        if args.only and args.only not in name:
            continue
        uce_state, uce_ns, original, checkpoint = uce2023.run_theirs(args.uce_repo.resolve(), folder, uce_argv)
        theirs_by_epoch, ns = run_theirs(repo, folder, script, rece_argv, checkpoint)
        if overrides == "artists":  # both the UCE start and the re-edits preserve the other artists of their list
            overrides = {"uce.preserve_file": str(repo / "dataset" / "artists1734_prompts.csv")}
        results = {}
        uce_only = common.changed(original, uce_state)
        for epoch, state in sorted(theirs_by_epoch.items()):
            theirs = common.changed(original, state)
            ours, _ = common.ours(folder, "rece", uce_ns["concepts"], concept_type, common.preset("rece", preset),
                                  epochs=epoch, validate="none", epoch_choice="last", **overrides)
            results[f"epoch {epoch}: preset {preset}"] = common.relative_differences(ours, theirs)
            results[f"epoch {epoch}: their RECE vs their UCE start (size of the RECE step)"] = (
                common.relative_differences(uce_only, theirs))
        rows.append({"scenario": name, "script": script, "uce_argv": uce_argv, "rece_argv": rece_argv,
                     "preset": preset, "overrides": overrides, "results": results})
        common.report(name, f"{script}, epochs {sorted(theirs_by_epoch)}", results)
    print("saved", common.save_results("rece" if not args.only else "rece-some", rows))


if __name__ == "__main__":
    main()
