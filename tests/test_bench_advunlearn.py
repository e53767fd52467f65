"""scripts/bench_advunlearn.py --count-flops: the FLOPs it counts are an iteration's work,
attention included on a CPU, and the run's floor follows from them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from erasure.methods.advunlearn import AdvUnlearnConfig
from erasure.tiny import build_tiny_pipeline

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench(request):
    sys.path.insert(0, str(SCRIPTS))  # the script imports its sibling sd_architectures
    request.addfinalizer(lambda: sys.path.remove(str(SCRIPTS)))
    spec = importlib.util.spec_from_file_location("bench_advunlearn", SCRIPTS / "bench_advunlearn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_attention_counts_as_its_two_matrix_products(bench):
    query, key, value = torch.randn(2, 4, 64, 16), torch.randn(2, 4, 32, 16), torch.randn(2, 4, 32, 16)
    with torch.no_grad(), FlopCounterMode(display=False) as fused:
        F.scaled_dot_product_attention(query, key, value)
    with torch.no_grad(), FlopCounterMode(display=False) as explicit:
        (query @ key.transpose(-1, -2)).softmax(-1) @ value
    assert fused.get_total_flops() == explicit.get_total_flops() == 2 * 2 * (2 * 4 * 64 * 32 * 16)


def test_an_adversarial_iteration_grows_by_one_attack_step_at_a_time(bench):
    def counted(attack_steps: int) -> dict:
        config = AdvUnlearnConfig(attack_steps=attack_steps, ddim_steps=3, bank_size=4, retain_limit=6)
        return bench.count_flops(build_tiny_pipeline("sd1"), config, "cpu")

    two, three, four = counted(2), counted(3), counted(4)
    per_step = three["tflop"]["post_warm_up_iteration"] - two["tflop"]["post_warm_up_iteration"]
    assert per_step > 0
    assert four["tflop"]["post_warm_up_iteration"] == pytest.approx(two["tflop"]["post_warm_up_iteration"] + 2 * per_step,
                                                                    rel=1e-3)
    # The warm-up runs no attack; the authors' schedule adds sampling to the same iterations.
    assert two["tflop"]["warm_up_iteration"] == four["tflop"]["warm_up_iteration"] > 0
    flops = two["tflop"]
    assert flops["bank"] == pytest.approx((4 + two["bank"]["retain"]) * 3 * flops["guided_ddim_step_batch_1"], rel=1e-3)
    assert flops["run"] < flops["authors_schedule"]
    assert two["h100_floor_seconds"]["run"]["bf16"] == pytest.approx(flops["run"] / bench.H100_PEAK_TFLOPS["bf16"],
                                                                     rel=1e-3)
