#!/usr/bin/env python
"""Train mini-clip, a transformers CLIPModel of the shapes world, contrastively.

    python scripts/train_mini_clip.py --phase text     # text tower: about 5 minutes on a CPU core
    python scripts/train_mini_clip.py --phase vision   # vision tower: about 20 minutes; resumable

Its text tower becomes mini-sd's text encoder (SD's text encoder is CLIP's, frozen), so
it is written to erasure/assets/mini-sd/text_encoder; the vision tower, projections and
logit scale go to erasure/assets/mini-clip (``erasure.assets.load_mini_clip`` joins them).
The UNet needs only the text tower, so the vision phase can run beside mini-sd's UNet.

Two phases, because a ViT trained from scratch learns colour at once but shape only very
slowly (plain joint training was at chance on shape after 1,500 steps):
1. text: locked-image tuning (LiT) against the frozen world classifier's features;
2. vision: the ViT against the frozen text tower, helped by an auxiliary label loss.

Captions are drawn afresh for every step. Two captions in a batch often describe the
same image equally well ("a red circle" fits every red circle), so the contrastive
target of an image is spread over every caption whose statements the image satisfies,
instead of the diagonal alone.
"""

from __future__ import annotations

import argparse
import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from world_common import ASSETS, CACHE_DIR, REPO, Stopwatch, augment, images_to_tensor, machine, module_tensors, resumable_checkpoint, setup, write_json, write_text

from erasure.atomic import atomic_dir, atomic_path
from erasure.tokenizer import clip_tokenizer
from erasure.training import TrainingState, finite_value, run_steps
from erasure.world.captions import caption_with_mentions, encode_mentions, encode_scene, matches
from erasure.world.data import HELD_OUT_SEED, TRAIN_SEED, render_dataset, stack_labels
from erasure.world.scenes import COLOURS, SHAPES

TEXT = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4)
# 4x4 patches (an 8x8 grid) learn shape faster than 8x8 ones; width 64 keeps the cost
# per step that of 8x8 patches at width 128
VISION = dict(image_size=32, patch_size=4, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=2)
PROJECTION_DIM = 128


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=("text", "vision", "all"), default="all")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, batches, captions, augmentation")
    p.add_argument("--train-size", type=int, default=40000, help="training scenes (TRAIN_SEED)")
    p.add_argument("--eval-size", type=int, default=4000, help="held-out scenes (HELD_OUT_SEED)")
    p.add_argument("--text-steps", type=int, default=1000)
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument("--vision-steps", type=int, default=5000, help="total; more than a checkpoint's extends it")
    p.add_argument("--vision-lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--label-loss", type=float, default=1.0, help="weight of the auxiliary label loss of the vision phase")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run-dir", default=str(REPO / "runs" / "mini-clip"))
    p.add_argument("--out", default=str(ASSETS / "mini-clip"))
    p.add_argument("--text-out", default=str(ASSETS / "mini-sd" / "text_encoder"))
    return p.parse_args()


def build_model():
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    tok = clip_tokenizer()
    text = CLIPTextConfig(
        vocab_size=len(tok),
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu",  # as OpenAI CLIP and SD 1.x
        **TEXT,
    )
    vision = CLIPVisionConfig(hidden_act="quick_gelu", **VISION)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=PROJECTION_DIM)
    return CLIPModel(config)


class WorldVocabulary(torch.nn.Module):
    """The token embedding with only the world's rows trainable.

    The 49,408-row table is 80% of mini-clip's parameters, but captions use about a
    hundred tokens; updating every row each step (AdamW) cost more than the model.
    Unused rows stay at their initialisation, as they would under full training
    (they receive no gradient there either, only weight decay).
    """

    def __init__(self, embedding: torch.nn.Embedding, rows: torch.Tensor):
        super().__init__()
        self.register_buffer("full", embedding.weight.detach().clone())
        self.register_buffer("rows", rows)
        self.trained = torch.nn.Parameter(self.full[rows].clone())
        self.embedding_dim = embedding.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        return self.full.index_put((self.rows,), self.trained)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def merged(self) -> torch.nn.Embedding:
        out = torch.nn.Embedding(*self.full.shape)
        out.weight.data.copy_(self.weight.detach())
        return out


def world_token_ids(rng: np.random.Generator, scenes) -> torch.Tensor:
    """Every token id the world's captions and evaluation prompts use."""
    from erasure.world.captions import SYNONYMS, empty_prompts, pair_prompts, style_prompts, synonym_prompts

    texts = [caption_with_mentions(s, rng)[0] for s in scenes for _ in range(3)]
    texts += [p for shape in SHAPES for p in synonym_prompts(shape) + pair_prompts(shape)]
    texts += style_prompts("filled") + style_prompts("outlined") + empty_prompts() + [w for ws in SYNONYMS.values() for w in ws]
    texts += [p for group in shape_class_prompts() + colour_class_prompts() for p in group]
    ids = {i for t in set(texts) for i in _token_ids(t)}
    return torch.tensor(sorted(ids))


@lru_cache(maxsize=None)
def _token_ids(text: str) -> tuple[int, ...]:
    return tuple(clip_tokenizer_cached()(text, truncation=True).input_ids)


@lru_cache(maxsize=1)
def clip_tokenizer_cached():
    return clip_tokenizer()


def tokenize(texts: list[str]) -> torch.Tensor:
    """Token ids padded with <|endoftext|> to the longest text of the batch. CLIP's
    causal attention makes the EOS output independent of what follows it, so this
    equals padding to 77 for the contrastive loss, at a fraction of the cost."""
    ids = [_token_ids(t) for t in texts]
    width = max(len(i) for i in ids)
    pad = clip_tokenizer_cached().pad_token_id
    return torch.tensor([list(i) + [pad] * (width - len(i)) for i in ids])


def _features(output) -> torch.Tensor:
    """transformers >= 5 returns the projected features as ``pooler_output``; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def image_features(model, images: torch.Tensor) -> torch.Tensor:
    return _features(model.get_image_features(pixel_values=pixel_values(images)))


def text_features(model, texts: list[str]) -> torch.Tensor:
    return _features(model.get_text_features(input_ids=tokenize(texts)))


def pixel_values(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the [-1, 1] inputs mini-clip expects (mean 0.5, std 0.5)."""
    return x * 2 - 1


class LabelHeads(torch.nn.Module):
    """Linear shape/colour/style heads on the image embedding, used only in training.

    A ViT trained from scratch contrastively picks up colour at once but shape only very
    slowly (zero-shot shape accuracy was at chance after 1,500 steps); a supervised
    signal on the image side makes the embedding carry shape early, and the
    contrastive loss then aligns the text tower with it. The heads are discarded.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(dim, len(SHAPES) + 1), "colour": torch.nn.Linear(dim, len(COLOURS)), "style": torch.nn.Linear(dim, 2)})

    def forward(self, image_embeds: torch.Tensor, labels: dict) -> torch.Tensor:
        return sum(F.cross_entropy(head(image_embeds), labels[k], ignore_index=-1) for k, head in self.heads.items())


def soft_clip_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in both directions against targets spread uniformly over the
    positive pairs (``positive[i, j]``: image i satisfies caption j)."""
    pos = positive.float()
    img_to_text = -(pos / pos.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_img = -(pos / pos.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (img_to_text + text_to_img) / 2


@torch.no_grad()
def text_classes(model, prompts_per_class: list[list[str]]) -> torch.Tensor:
    """One unit vector per class: the mean of its prompts' embeddings (CLIP's ensembling)."""
    out = []
    for prompts in prompts_per_class:
        emb = F.normalize(text_features(model, prompts), dim=-1)
        out.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(out)


def shape_class_prompts() -> list[list[str]]:
    return [[f"a {s}", f"a photo of a {s}"] + [f"a {c} {s}" for c in COLOURS] for s in SHAPES]


def colour_class_prompts() -> list[list[str]]:
    return [[f"a {c} {s}" for s in SHAPES] for c in COLOURS]


@torch.no_grad()
def zero_shot(model, images: torch.Tensor, scenes) -> dict:
    """Top-1 zero-shot accuracy of shape and colour on the single-object scenes."""
    model.eval()
    keep = [i for i, s in enumerate(scenes) if len(s.objects) == 1]
    feats = torch.cat([image_features(model, images[keep][i : i + 500]) for i in range(0, len(keep), 500)])
    feats = F.normalize(feats, dim=-1)
    result = {"images": len(keep)}
    for name, prompts, values in (("shape", shape_class_prompts(), SHAPES), ("colour", colour_class_prompts(), COLOURS)):
        pred = (feats @ text_classes(model, prompts).T).argmax(-1)
        truth = torch.tensor([values.index(getattr(scenes[i].objects[0], name)) for i in keep])
        result[name] = float((pred == truth).float().mean())
    model.train()
    return result


# ---------------------------------------------------------------- phase 1: text tower


@torch.no_grad()
def classifier_features(images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Pooled features of the world classifier (its last layer before the heads)."""
    from erasure.world.classifier import load_world_classifier

    cnn = load_world_classifier()
    return torch.cat([cnn.features(images[i : i + batch] * 2 - 1).mean(dim=(2, 3)) for i in range(0, len(images), batch)])


def batch_captions(scenes, idx: torch.Tensor, scene_codes: np.ndarray, rng) -> tuple[list[str], torch.Tensor]:
    """A fresh caption per image and which images satisfy which caption."""
    texts, mentions = zip(*(caption_with_mentions(scenes[i], rng) for i in idx.tolist()))
    positive = matches(np.stack([encode_mentions(m) for m in mentions]), scene_codes[idx.numpy()])
    return list(texts), torch.from_numpy(positive)


def warm_cosine(warmup: int, total: int):
    return lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1)))


def train_text(args, model, train, scene_codes) -> dict:
    """Locked-image text tuning (LiT, Zhai et al. 2022): the text tower learns against
    the frozen world classifier's image features (through a linear map, discarded)."""
    feats = classifier_features(images_to_tensor(train.images))
    adapter = torch.nn.Linear(feats.shape[1], PROJECTION_DIM)
    embeddings = model.text_model.embeddings
    rows = world_token_ids(np.random.default_rng([args.seed, 2]), train.scenes[:5000])
    embeddings.token_embedding = WorldVocabulary(embeddings.token_embedding, rows)
    params = list(model.text_model.parameters()) + list(model.text_projection.parameters()) + [model.logit_scale] + list(adapter.parameters())
    opt = torch.optim.AdamW(params, lr=args.text_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warm_cosine(args.warmup, args.text_steps))
    gen, rng = torch.Generator().manual_seed(args.seed), np.random.default_rng(args.seed)
    for step in (bar := tqdm(range(args.text_steps), desc="mini-clip text", mininterval=5)):
        idx = torch.randint(len(feats), (args.batch_size,), generator=gen)
        texts, positive = batch_captions(train.scenes, idx, scene_codes, rng)
        image = F.normalize(adapter(feats[idx]), dim=-1)
        text = F.normalize(text_features(model, texts), dim=-1)
        loss = soft_clip_loss(model.logit_scale.exp() * image @ text.T, positive)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    embeddings.token_embedding = embeddings.token_embedding.merged()
    return {"final_loss": round(loss.item(), 4), "trained_token_rows": len(rows)}


def save_text(args, model, report: dict) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    text = CLIPTextModel(model.config.text_config)
    # transformers 5 flattened CLIPTextModel (no ``.text_model``); 4.x wraps the transformer
    getattr(text, "text_model", text).load_state_dict(model.text_model.state_dict())
    with atomic_dir(args.text_out) as tmp:
        text.half().save_pretrained(tmp, safe_serialization=True)
    rest = {"text_projection.weight": model.text_projection.weight.detach(), "logit_scale": model.logit_scale.detach()}
    run = Path(args.run_dir)
    with atomic_path(run / "text_phase.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in rest.items()}, str(tmp))
    write_json(run / "text_phase.json", report)


def load_text(args, model) -> dict:
    """The saved (float16-rounded) text tower and projection into ``model``, frozen."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    text = CLIPTextModel.from_pretrained(args.text_out, torch_dtype=torch.float32)
    model.text_model.load_state_dict(getattr(text, "text_model", text).state_dict())
    rest = load_file(str(Path(args.run_dir) / "text_phase.safetensors"))
    model.text_projection.weight.data.copy_(rest["text_projection.weight"])
    model.logit_scale.data.copy_(rest["logit_scale"])
    for p in list(model.text_model.parameters()) + list(model.text_projection.parameters()) + [model.logit_scale]:
        p.requires_grad_(False)
    return json.loads((Path(args.run_dir) / "text_phase.json").read_text())


# ---------------------------------------------------------------- phase 2: vision tower


class TextCache:
    """Embeddings of the frozen text tower, computed once per distinct caption."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            for t, e in zip(new, F.normalize(text_features(self.model, new), dim=-1)):
                self.cache[t] = e
        return torch.stack([self.cache[t] for t in texts])


def train_vision(args, model, train, scene_codes) -> float:
    """The ViT learns to meet the frozen text tower (and, as an aid, the labels)."""
    x_train = images_to_tensor(train.images)
    labels = {k: torch.from_numpy(v) for k, v in stack_labels(train.scenes).items()}
    heads = LabelHeads(PROJECTION_DIM)
    modules = {"vision_model": model.vision_model, "visual_projection": model.visual_projection, "heads": heads}
    opt = torch.optim.AdamW([p for m in modules.values() for p in m.parameters()], lr=args.vision_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warm_cosine(args.warmup, args.vision_steps))
    state = TrainingState(tensors=module_tensors(modules), optimizer=opt, generator=torch.Generator().manual_seed(args.seed + 1),
                          extra={"train_seconds": 0.0})
    identity = {k: vars(args)[k] for k in ("seed", "train_size", "vision_lr", "batch_size", "warmup", "label_loss")}
    checkpoint = resumable_checkpoint(Path(args.run_dir) / "vision-checkpoint", identity, "mini-clip vision")
    if checkpoint.resuming:
        checkpoint.restore(state)
        print(f"resumed from step {state.step}")
    start, before = state.step, state.extra["train_seconds"]
    sched.last_epoch = start
    for group, lr in zip(opt.param_groups, sched.get_lr()):
        group["lr"] = lr
    rng = np.random.default_rng([args.seed, 3, 0])  # captions
    if "caption_rng" in state.extra:
        rng.bit_generator.state = state.extra["caption_rng"]
    texts_of, clock = TextCache(model), Stopwatch()

    def step(index: int) -> float:
        idx = torch.randint(len(x_train), (args.batch_size,), generator=state.generator)
        texts, positive = batch_captions(train.scenes, idx, scene_codes, rng)
        image = image_features(model, augment(x_train[idx], state.generator))
        logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ texts_of(texts).T
        loss = soft_clip_loss(logits, positive)
        if args.label_loss:
            loss = loss + args.label_loss * heads(F.normalize(image, dim=-1), {k: v[idx] for k, v in labels.items()})
        value = finite_value(loss, f"lower --vision-lr (now {args.vision_lr:g})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        state.extra["train_seconds"] = before + 60 * clock.minutes()
        state.extra["caption_rng"] = rng.bit_generator.state
        return value

    run_steps(step, state, args.vision_steps, checkpoint, args.checkpoint_every)
    return state.extra["train_seconds"] / 60


def save_vision(args, model, acc: dict, minutes: dict, text_report: dict) -> None:
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    half = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if not k.startswith("text_model.")}
    with atomic_dir(args.out) as tmp:
        save_file(half, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        CLIPImageProcessor(
            size={"shortest_edge": VISION["image_size"]},
            crop_size={"height": VISION["image_size"], "width": VISION["image_size"]},
            image_mean=[0.5, 0.5, 0.5],
            image_std=[0.5, 0.5, 0.5],
        ).save_pretrained(tmp)
        write_json(tmp / "metrics.json", {"zero_shot_accuracy": acc, "train_minutes": minutes, "text_phase": text_report})
        write_text(tmp / "README.md", card(model, args, acc, minutes))


def card(model, args, acc: dict, minutes: dict) -> str:
    n_text = sum(p.numel() for p in model.text_model.parameters())
    n_vision = sum(p.numel() for p in model.vision_model.parameters())
    return f"""# mini-clip

A `transformers.CLIPModel` of the shapes world (`erasure.world`). Its text tower is
mini-sd's text encoder and is stored once, in `mini-sd/text_encoder`; this folder holds
the vision tower, both projections and the logit scale. Load the whole model with
`erasure.assets.load_mini_clip()`. Tokenizer: the real CLIP tokenizer
(`erasure.tokenizer.clip_tokenizer()`). Images: 32x32 RGB, normalised with mean 0.5 and
std 0.5 (`preprocessor_config.json`).

## Data
{args.train_size:,} rendered scenes (seed TRAIN_SEED=0): 6 shapes x 6 colours x
filled/outlined x small/large, 5 backgrounds, 0 to 3 objects; a fresh random caption
per image per step (templates, synonyms, optional size/style/colour/background).
Contrastive targets are spread over every caption in the batch that the image satisfies.

## Training (two phases, each contrastive with the soft targets above)
1. text tower, locked-image tuning (LiT, Zhai et al. 2022): against the frozen
   `world-classifier`'s pooled features through a linear map (discarded); only the token
   embeddings of the world's vocabulary train, the other rows stay at their
   initialisation. {args.text_steps} steps, batch {args.batch_size}, AdamW lr {args.text_lr} ({minutes.get('text', float('nan')):.1f} min).
2. vision tower against the frozen text tower, with an auxiliary shape/colour/style
   cross-entropy on the image embedding (weight {args.label_loss}; heads discarded): a ViT from
   scratch learns shape far more slowly than colour, and plain joint CLIP training was
   still at chance on shape after 1,500 steps. {args.vision_steps} steps, batch {args.batch_size}, AdamW lr {args.vision_lr} ({minutes.get('vision', float('nan')):.1f} min).

`python scripts/train_mini_clip.py --seed {args.seed} --text-steps {args.text_steps} --vision-steps {args.vision_steps}` on {machine()}.

## Architecture
- text: {TEXT['num_hidden_layers']} layers, width {TEXT['hidden_size']}, {TEXT['num_attention_heads']} heads, 77 positions, vocabulary 49,408, quick_gelu ({n_text:,} parameters)
- vision: ViT, 32x32 images, {VISION['patch_size']}x{VISION['patch_size']} patches, {VISION['num_hidden_layers']} layers, width {VISION['hidden_size']} ({n_vision:,} parameters)
- projection dimension {PROJECTION_DIM}; weights float16.

## Zero-shot accuracy on {acc['images']:,} held-out single-shape images (seed HELD_OUT_SEED=1)
Class embeddings average the prompts "a {{shape}}", "a photo of a {{shape}}" and
"a {{colour}} {{shape}}" over colours (shapes), or "a {{colour}} {{shape}}" over shapes (colours).

| attribute | top-1 |
|---|---|
| shape (6 classes) | {acc['shape']:.2%} |
| colour (6 classes) | {acc['colour']:.2%} |
"""


def main() -> None:
    args = parse_args()
    setup(args.seed, args.threads)
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    train = render_dataset(args.train_size, TRAIN_SEED, cache_dir=CACHE_DIR)
    scene_codes = np.stack([encode_scene(s) for s in train.scenes])
    model = build_model()
    minutes = {}
    if args.phase in ("text", "all"):
        clock = Stopwatch()
        report = train_text(args, model, train, scene_codes)
        report["minutes"] = round(clock.minutes(), 2)
        save_text(args, model, report)
        print(f"wrote {args.text_out}: {report}")
    if args.phase in ("vision", "all"):
        text_report = load_text(args, model)
        minutes = {"text": text_report["minutes"], "vision": round(train_vision(args, model, train, scene_codes), 2)}
        held = render_dataset(args.eval_size, HELD_OUT_SEED, cache_dir=CACHE_DIR)
        acc = zero_shot(model, images_to_tensor(held.images), held.scenes)
        print("held-out zero-shot accuracy:", acc)
        save_vision(args, model, acc, minutes, text_report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
