"""MACE, the authors' code (Shilin-LU/MACE: ``training.py`` = stage 1 CFR, stage 2 LoRAs,
stage 3 fusion), against ``erasure``'s MACE with ``configs/mace/authors-*.yaml``, stages
1 and 3.

    python mace.py --repo /path/to/MACE [--only object celebrity explicit art]

Their ``training.py <config>`` runs as ``__main__`` with one of their own configs
(``configs/*/erase_*.yaml``), loaded and changed only where the tiny run needs it: model
path, data/output folders, cache paths, ``max_train_steps: 0`` (stage 2 is not compared:
see docs/equivalence.md), and the art config cut to 2 artists. Their preservation
caches are made by their ``src/cache_coco.py`` from a small caption file written in
COCO's annotation format (and, for the domain cache, from the domain prompts, as their
README says: "modify cache_coco.py").

Runtime edits, all here:
- ``from_pretrained`` of the hard-coded "CompVis/stable-diffusion-v1-4" returns the tiny
  pipeline; ``.to("cuda")`` goes to the CPU;
- float64: ``torch.set_default_dtype(float64)`` while they run, and their two modules
  see a ``torch`` whose ``float32`` is float64 (their code casts the UNet to float32
  before saving and loads the fusion pipeline in float32);
- ``openai`` is stubbed (imported for GPT prompts, unused: ``use_gpt: false``);
- diffusers 0.42 no longer saves or loads attention-processor LoRAs (their code targets
  diffusers 0.22): ``save_attn_procs``, ``load_lora_weights``, ``fuse_lora``,
  ``unfuse_lora`` and ``unload_lora_weights`` are replaced by a small equivalent that
  writes the processors' ``up``/``down`` weights and adds ``up @ down`` to each projection,
  and ``set_default_attn_processor`` sets diffusers' ``AttnProcessor`` (0.42 refuses to
  replace custom processors);
- the LoRA each concept gets after 0 training steps has its zero-initialised ``up``
  replaced by seeded random values (so stage 3 fuses a non-zero update); our stage 3 is
  given exactly those LoRA factors (read from the files their code saved).
Our side: the preset, with ``templates_file`` = their checkout (our reader parses their
``src/cfr_utils.py``; the list is checked against what their own function returns),
the same captions, domain names, mapping and ``lam`` as their config.
"""

from __future__ import annotations

import json
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CAPTIONS = [
    "a man riding a bike down a city street", "two dogs playing in the grass", "a plate of food with rice and vegetables",
    "a red bus parked next to a building", "a woman holding an umbrella in the rain", "a cat sleeping on a couch",
    "a group of people standing on a beach", "a train traveling over a bridge", "a kitchen with a stove and a sink",
    "a little girl eating a slice of pizza", "a living room with a television and a lamp", "an airplane flying in a blue sky",
    "a bowl of fruit on a wooden table", "a boy throwing a frisbee in a park", "a horse standing in a field",
    "a street sign on a pole at an intersection", "a bathroom with a white toilet", "a laptop on a desk next to a cup",
    "a giraffe eating leaves from a tree", "a clock tower in the middle of a town",
]

SCENARIOS = {
    # name: (their config, our preset, our concept type, concepts kept, domain names or None)
    "object": ("configs/object/erase_ship.yaml", "authors-object", "object", None, None),
    "celebrity": ("configs/celebrity/erase_cele_1.yaml", "authors-celebrity", "celebrity", None,
                  ["tom hanks", "emma watson", "keanu reeves"]),
    "explicit": ("configs/explicit_content/erase_explicit_content.yaml", "authors-explicit", "nudity", None, None),
    "art": ("configs/art/erase_art_100.yaml", "authors-style", "style", 2,
            ["claude monet", "pablo picasso", "frida kahlo"]),
}


class _Float64Torch(types.ModuleType):
    """``torch`` for a module whose hard-coded ``torch.float32`` should be float64."""

    def __getattr__(self, name):
        return torch.float64 if name == "float32" else getattr(torch, name)


def _pipeline_to_cpu(real_to):
    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return real_to(self, *args, **kwargs)

    return to


def _their_templates(repo: Path, concept_type: str) -> list[str]:
    """Their prompt templates as their own function returns them (first 30 of the list:
    ``random.sample(range(prompt_len=30), aug_length=30)`` is a permutation of those)."""
    sys.path.insert(0, str(repo))
    try:
        from src.cfr_utils import prompt_augmentation
    finally:
        sys.path.remove(str(repo))
    return [p for p, _ in prompt_augmentation("{}", augment=True, sampled_indices=list(range(30)), concept_type=concept_type)]


def _write_annotations(folder: Path, captions: list[str]) -> None:
    ann = folder / "coco2014" / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    half = len(captions) // 2
    for name, part in (("captions_train2014.json", captions[:half]), ("captions_val2014.json", captions[half:])):
        (ann / name).write_text(json.dumps({"annotations": [{"caption": c} for c in part]}))


def _default_processor(unet):
    """diffusers 0.22's ``set_default_attn_processor`` (0.42 refuses custom LoRA processors)."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())


def _method(function):
    """A plain function (so it binds to the patched class's instances) calling ``function``."""
    return lambda self, *args, **kwargs: function(self, *args, **kwargs)


class _AttnProcLoRA:
    """diffusers 0.22's attention-processor LoRA files, which their code saves
    (``unet.save_attn_procs``) and loads (``pipe.load_lora_weights``, ``fuse_lora(1.0)``,
    ``unfuse_lora``, ``unload_lora_weights``); diffusers 0.42 refuses both. Fusing adds
    ``up @ down`` (no network alpha: scale 1) to each ``to_k``/``to_v``/``to_q``/``to_out``."""

    FILE = "pytorch_lora_weights.safetensors"

    def save_attn_procs(self, unet, path, **kwargs):
        from safetensors.torch import save_file

        tensors = {}
        for key, processor in unet.attn_processors.items():
            for part in ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora"):
                layer = getattr(processor, part, None)
                if layer is not None:
                    tensors[f"{key}.{part}.up.weight"] = layer.up.weight.detach().contiguous()
                    tensors[f"{key}.{part}.down.weight"] = layer.down.weight.detach().contiguous()
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(Path(path) / self.FILE))

    def load_lora_weights(self, pipe, path, **kwargs):
        from safetensors.torch import load_file

        pipe._harness_lora = load_file(str(Path(path) / self.FILE))

    def _deltas(self, pipe):
        modules = dict(pipe.unet.named_modules())
        for key, up in pipe._harness_lora.items():
            if not key.endswith(".up.weight"):
                continue
            down = pipe._harness_lora[key.replace(".up.weight", ".down.weight")]
            block, part = key[: -len(".up.weight")].rsplit(".processor.", 1)
            name = {"to_out_lora": "to_out.0"}.get(part, part.replace("_lora", ""))
            yield modules[f"{block}.{name}"], up, down

    def fuse_lora(self, pipe, lora_scale=1.0, **kwargs):
        with torch.no_grad():
            for linear, up, down in self._deltas(pipe):
                linear.weight += lora_scale * (up.to(linear.weight) @ down.to(linear.weight))
        pipe._harness_scale = lora_scale

    def unfuse_lora(self, pipe, **kwargs):
        with torch.no_grad():
            for linear, up, down in self._deltas(pipe):
                linear.weight -= pipe._harness_scale * (up.to(linear.weight) @ down.to(linear.weight))

    def unload_lora_weights(self, pipe, **kwargs):
        pipe._harness_lora = {}


def their_cache(repo: Path, folder: Path, captions: list[str], work: Path) -> Path:
    """Run their ``src/cache_coco.py`` ``main`` on ``captions``; returns the cache file."""
    from diffusers import StableDiffusionPipeline

    cache_work = Path(tempfile.mkdtemp(prefix="mace-cache-", dir=work))
    _write_annotations(cache_work, captions)
    (cache_work / "cache" / "coco").mkdir(parents=True)
    pipe = common.load_pipe(folder)
    pipe.to = lambda *a, **k: pipe
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # their accumulators start from torch.eye
    try:
        with common.patches((StableDiffusionPipeline, "from_pretrained", classmethod(lambda cls, *a, **k: pipe))):
            common.run_main(repo / "src" / "cache_coco.py", [], cache_work, [repo])
    finally:
        torch.set_default_dtype(previous)
    return cache_work / "cache" / "coco" / "cache_final.pt"


def run_theirs(repo: Path, folder: Path, config_path: Path, work: Path):
    """Their ``training.py`` on ``config_path``; returns (CFR UNet state, final UNet state, LoRAs)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.models.lora import LoRALinearLayer
    from omegaconf import OmegaConf

    common.stub_module("openai", OpenAI=None)
    sys.path.insert(0, str(repo))
    common.forget_modules(["src", "inference"])
    import src.cfr_lora_training as training_module
    import src.fuse_lora_close_form as fusion_module

    sys.path.remove(str(repo))
    generator = torch.Generator().manual_seed(0)
    real_init = LoRALinearLayer.__init__

    def init_with_random_up(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        with torch.no_grad():
            self.up.weight.copy_(torch.randn(self.up.weight.shape, generator=generator) * 0.05)

    real_to = StableDiffusionPipeline.to
    from diffusers import UNet2DConditionModel

    lora_api = _AttnProcLoRA()
    proxy = _Float64Torch("torch")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with common.patches(
            (training_module, "torch", proxy), (fusion_module, "torch", proxy),
            (StableDiffusionPipeline, "to", _pipeline_to_cpu(real_to)),
            (LoRALinearLayer, "__init__", init_with_random_up),
            (UNet2DConditionModel, "save_attn_procs", _method(lora_api.save_attn_procs)),
            (UNet2DConditionModel, "set_default_attn_processor", _default_processor),
            (StableDiffusionPipeline, "load_lora_weights", _method(lora_api.load_lora_weights)),
            (StableDiffusionPipeline, "fuse_lora", _method(lora_api.fuse_lora)),
            (StableDiffusionPipeline, "unfuse_lora", _method(lora_api.unfuse_lora)),
            (StableDiffusionPipeline, "unload_lora_weights", _method(lora_api.unload_lora_weights)),
        ):
            common.run_main(repo / "training.py", [str(config_path)], work, [repo])
    finally:
        torch.set_default_dtype(previous)
    conf = OmegaConf.load(config_path).MACE
    from safetensors.torch import load_file

    def unet_of(path):
        files = list((Path(path) / "unet").glob("*.safetensors"))
        return load_file(str(files[0]))

    loras = {}
    for concept_dir in (Path(conf.output_dir) / "lora").iterdir():
        loras[concept_dir.name.replace("-", " ")] = load_file(str(concept_dir / _AttnProcLoRA.FILE))
    return unet_of(conf.output_dir), unet_of(conf.final_save_path), loras


def lora_factors(state: dict) -> dict:
    """Their saved attention-processor LoRA as ``{our weight name: (up, down)}`` for attn2 to_k/to_v."""
    factors = {}
    for key, value in state.items():
        if ".attn2." not in key or not key.endswith("up.weight") or not ("to_k_lora" in key or "to_v_lora" in key):
            continue
        projection = "to_k" if "to_k_lora" in key else "to_v"
        block = key.split(".attn2.")[0].replace("unet.", "")
        down = state[key.replace("up.weight", "down.weight")]
        factors[f"{block}.attn2.{projection}.weight"] = (value.double(), down.double())
    return factors


def run_ours(folder: Path, concepts: list[str], concept_type: str, preset: str, overrides: dict, loras: dict):
    """Our MACE with the preset and stage 2 replaced by their LoRAs; returns (stage-1 weights, final weights)."""
    from erasure.methods import mace
    from erasure.methods.mace import lora

    captured = {}
    real_refine = mace.refine

    def refine(*args, **kwargs):
        captured["refined"] = real_refine(*args, **kwargs)
        return captured["refined"]

    def their_lora(pipe, adapter, refined, item, config, seed):
        return lora_factors(loras[item.concept.text]), []

    with common.patches((mace, "refine", refine), (lora, "concept_lora", their_lora)):
        final, _ = common.ours(folder, "mace", concepts, concept_type, common.preset("mace", preset), **overrides)
    return captured["refined"], final


def main(argv=None) -> None:
    parser = common.repo_parser(__doc__, "MACE checkout")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS))
    parser.add_argument("--plain-tiny", action="store_true",
                        help="erasure.tiny's text encoder as built (singular Grams: lam = 0 has no unique solution)")
    args = parser.parse_args(argv)
    repo, folder = common.prepare(args.repo, text_bias=not args.plain_tiny)
    from omegaconf import OmegaConf
    from PIL import Image

    from erasure.methods.mace import prompts

    rows = []
    for name, (config_file, preset, concept_type, keep, domain_names) in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        work = common.scratch(f"mace-{name}-")
        conf = OmegaConf.load(repo / config_file)
        m = conf.MACE
        if keep:
            m.multi_concept = [list(m.multi_concept[0])[:keep]]
            m.mapping_concept = list(m.mapping_concept)[:keep]
        concepts = [c.replace("-", " ") for c, _ in m.multi_concept[0]]
        kind = {t for _, t in m.multi_concept[0]}.pop()
        templates = _their_templates(repo, kind)
        ours_read = list(prompts.authors_templates(str(repo), kind))
        data = work / "data"
        for c, t in m.multi_concept[0]:
            c = c.replace("-", " ")
            for sub in [c] + ([f"{c} mask"] if t == "object" else []):
                (data / sub).mkdir(parents=True)
                Image.new("RGB", (16, 16), (120, 30, 200)).save(data / sub / "0.jpg")
        caption_file = work / "captions.txt"
        caption_file.write_text("\n".join(CAPTIONS))
        if m.prior_preservation_cache_path:
            m.prior_preservation_cache_path = str(their_cache(repo, folder, CAPTIONS, work))
        domain_prompts = []
        if m.domain_preservation_cache_path:
            domain_prompts = [t.format(n) for n in domain_names for t in templates]
            m.domain_preservation_cache_path = str(their_cache(repo, folder, domain_prompts, work))
        m.pretrained_model_name_or_path = str(folder)
        m.input_data_dir = str(data)
        m.output_dir = str(work / "cfr")
        m.final_save_path = str(work / "final")
        m.max_train_steps = 0
        m.resolution = 16
        config_path = work / "config.yaml"
        OmegaConf.save(conf, config_path)

        theirs_cfr, theirs_final, loras = run_theirs(repo, folder, config_path, work)
        original = common.unet_state(common.load_pipe(folder))
        theirs_cfr, theirs_final = common.changed(original, theirs_cfr), common.changed(original, theirs_final)
        # What differs between their configs of one kind (mapping, lam, w) and the caption/domain sets.
        overrides = {
            "templates_file": str(repo), "mapping": str(m.mapping_concept[0]), "lam": float(m.lamb),
            "domain_weight": float(m.preserve_weight), "domain_concepts": list(domain_names or []),
            "general_captions": str(caption_file), "general_equivalent_captions": None,
            "cache_dir": str(work / "our-cache"), "train_steps": 0,
        }
        refined, final = run_ours(folder, concepts, concept_type, preset, overrides, loras)
        results = {f"stage 1 (CFR), preset {preset}": common.relative_differences(refined, theirs_cfr),
                   f"stage 3 (fusion), preset {preset}": common.relative_differences(final, theirs_final)}
        rows.append({"scenario": name, "config": config_file, "preset": preset, "concepts": concepts,
                     "templates_match_their_function": ours_read == templates, "overrides": overrides,
                     "domain_prompts": len(domain_prompts), "results": results})
        common.report(name, f"{config_file}, concepts {concepts}, lam {float(m.lamb)}, s {float(m.train_preserve_scale)}, "
                      f"s_f {float(m.fuse_preserve_scale)}, w {float(m.preserve_weight)}; our template reader = their "
                      f"function's list: {ours_read == templates}", results)
    print("saved", common.save_results("mace-plain-tiny" if args.plain_tiny else "mace", rows))


if __name__ == "__main__":
    main()
