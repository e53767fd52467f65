#!/usr/bin/env python
"""Train the world's object classifier and bundle it in erasure/assets/world-classifier.

    python scripts/train_world_classifier.py            # about 4 minutes on 2 CPU cores

Trains on TRAIN_SEED scenes with photometric augmentation (so that slightly blurred or
noisy generated images are still read correctly), reports top-1 accuracy on held-out
HELD_OUT_SEED scenes, and writes the weights (float16 safetensors), config and card.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from tqdm import tqdm
from world_common import ASSETS, CACHE_DIR, Stopwatch, augment, images_to_tensor, machine, setup, write_json, write_text

from erasure.atomic import atomic_dir
from erasure.world.classifier import ClassifierConfig, WorldClassifier, save_world_classifier
from erasure.world.data import HELD_OUT_SEED, TRAIN_SEED, render_dataset, stack_labels


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="torch seed (initialisation, batches, augmentation)")
    p.add_argument("--train-size", type=int, default=40000, help="training scenes (TRAIN_SEED)")
    p.add_argument("--eval-size", type=int, default=4000, help="held-out scenes (HELD_OUT_SEED)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ASSETS / "world-classifier"))
    return p.parse_args()


def losses(logits: dict, labels: dict) -> torch.Tensor:
    """Cross-entropy on the single-object heads (-1 labels ignored), BCE on presence."""
    total = 0.0
    for head in ("shape", "colour", "style"):
        if (labels[head] >= 0).any():
            total = total + F.cross_entropy(logits[head], labels[head], ignore_index=-1)
    for head in ("has_shape", "has_colour"):
        total = total + F.binary_cross_entropy_with_logits(logits[head], labels[head])
    return total


@torch.no_grad()
def evaluate(model: WorldClassifier, images: torch.Tensor, labels: dict) -> dict:
    """Top-1 accuracy per head (where defined) and presence accuracy at 0.5."""
    model.eval()
    logits = {k: torch.cat(v) for k, v in _batched_logits(model, images).items()}
    acc = {}
    for head in ("shape", "colour", "style"):
        keep = labels[head] >= 0
        acc[head] = float((logits[head][keep].argmax(-1) == labels[head][keep]).float().mean())
    for head in ("has_shape", "has_colour"):
        acc[head] = float(((logits[head] > 0).float() == labels[head]).all(-1).float().mean())
    model.train()
    return acc


def _batched_logits(model, images, batch=500):
    out = {}
    for i in range(0, len(images), batch):
        for k, v in model(images[i : i + batch]).items():
            out.setdefault(k, []).append(v)
    return out


def card(args, acc: dict, n_params: int, minutes: float) -> str:
    return f"""# world-classifier

The shapes world's object classifier (`erasure.world.classifier.WorldClassifier`): the
evaluator's stand-in for the ImageNet ResNet-50 / CLIP zero-shot classifiers of the
papers. Load with `erasure.world.classifier.load_world_classifier()`.

## Data
{args.train_size:,} procedurally rendered 32x32 scenes (`erasure.world`, seed
TRAIN_SEED=0): 6 shapes x 6 colours x filled/outlined x small/large, 5 backgrounds,
0 to 3 objects. Photometric augmentation (blur, noise, brightness/contrast, flips).

## Architecture
CNN, {n_params:,} parameters: stages of 3x3 conv + BatchNorm + ReLU, channels
{list(ClassifierConfig().channels)}, max-pooling, global average pooling, linear heads:
`shape` (6 shapes + "none"), `colour` (6), `style` (2) for single-object images;
`has_shape`, `has_colour` (multi-label presence) for any scene. Weights float16.

## Training
`python scripts/train_world_classifier.py --seed {args.seed} --steps {args.steps} --batch-size {args.batch_size} --lr {args.lr}`
AdamW, cosine schedule; {minutes:.1f} minutes on {machine()}.

## Accuracy on {args.eval_size:,} held-out scenes (seed HELD_OUT_SEED=1)
| head | top-1 |
|---|---|
| shape (single object or empty, 7 classes) | {acc['shape']:.2%} |
| colour (single object) | {acc['colour']:.2%} |
| style (single object) | {acc['style']:.2%} |
| has_shape (all 6 presences right, any scene) | {acc['has_shape']:.2%} |
| has_colour (all 6 presences right, any scene) | {acc['has_colour']:.2%} |
"""


def main() -> None:
    args = parse_args()
    setup(args.seed, args.threads)
    clock = Stopwatch()
    train = render_dataset(args.train_size, TRAIN_SEED, cache_dir=CACHE_DIR)
    held = render_dataset(args.eval_size, HELD_OUT_SEED, cache_dir=CACHE_DIR)
    x_train, x_held = images_to_tensor(train.images), images_to_tensor(held.images)
    y_train = {k: torch.from_numpy(v) for k, v in stack_labels(train.scenes).items()}
    y_held = {k: torch.from_numpy(v) for k, v in stack_labels(held.scenes).items()}

    model = WorldClassifier().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1))))
    gen = torch.Generator().manual_seed(args.seed)
    for step in (bar := tqdm(range(args.steps), desc="classifier", mininterval=5)):
        idx = torch.randint(len(x_train), (args.batch_size,), generator=gen)
        x = augment(x_train[idx], gen).contiguous(memory_format=torch.channels_last)
        loss = losses(model(x), {k: v[idx] for k, v in y_train.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")

    acc = evaluate(model, x_held, y_held)
    print("held-out accuracy:", {k: round(v, 4) for k, v in acc.items()})
    minutes = clock.minutes()
    n_params = sum(p.numel() for p in model.parameters())
    with atomic_dir(args.out) as tmp:
        save_world_classifier(model.to(memory_format=torch.contiguous_format), tmp)
        write_json(tmp / "metrics.json", {"held_out_accuracy": acc, "train_minutes": round(minutes, 2)})
        write_text(tmp / "README.md", card(args, acc, n_params, minutes))
    print(f"wrote {args.out} in {minutes:.1f} min")


if __name__ == "__main__":
    main()
