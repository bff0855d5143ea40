"""Report generation speed of Libra, with random weights (nothing to download).

On a CUDA GPU (bf16), for the 7B and the 3B configurations:
  - decode tokens/s at batch 1, next to the limit the GPU's memory bandwidth
    sets (bytes read per token: the weights plus the KV cache, over bandwidth);
  - reports/hour at batch 1, 4 and 16, each report a fixed number of new
    tokens, vision encoder and connector included.
On a CPU the same measurements run on the tiny checkpoint only.

    .venv/bin/python bench/generate.py [--new-tokens N] [--batches 1,4,16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from libra_node import __version__  # noqa: E402
from libra_node.draft import ClinicalContext, ModelIdentity  # noqa: E402
from libra_node.model.configuration_libra import LibraConfig, libra_3b_config, libra_7b_config  # noqa: E402
from libra_node.model.image_processing import PREPROCESSOR_CONFIG, ImageNormalizer  # noqa: E402
from libra_node.model.inference import GenerationRequest, LibraGenerator  # noqa: E402
from libra_node.model.loading import LibraCheckpoint, load_checkpoint, load_tokenizer  # noqa: E402
from libra_node.model.modeling_libra import LibraLlamaForCausalLM  # noqa: E402
from libra_node.model.prompting import template_for_config  # noqa: E402
from libra_node.model.tiny import write_tiny_checkpoint  # noqa: E402

GIB = 1 << 30


@dataclass
class ModelReport:
    model: str
    device: str
    dtype: str
    weight_gib: float  # all weights: vision encoder, connector, language model
    prompt_tokens: int
    prefill_seconds: float  # image encoding, connector, prompt prefill, first token
    decode_tokens_per_second: float
    bytes_per_token: int
    spec_bandwidth_gb_s: float | None
    measured_bandwidth_gb_s: float
    limit_tokens_per_second: float  # from the spec bandwidth when known, else the measured one
    reports_per_hour: dict[int, float]
    peak_memory_gib: float | None


def random_checkpoint(
    config: LibraConfig, tokenizer_dir: Path, device: torch.device, dtype: torch.dtype
) -> LibraCheckpoint:
    """A released-size model with random weights, built directly on the device.

    Built in fp32 (every initialiser supports it), then cast: 27 GB at most for the 7B.
    """
    with torch.device(device):
        model = LibraLlamaForCausalLM(config).to(dtype).eval()
    template = template_for_config(config)
    identity = ModelIdentity(
        f"random-{template.name}", "random", "random", __version__, is_demo=True
    )
    tokenizer = load_tokenizer(tokenizer_dir, config)
    normalizer = ImageNormalizer.from_file(tokenizer_dir / PREPROCESSOR_CONFIG)
    return LibraCheckpoint(model, tokenizer, normalizer, template, identity, device, dtype)


def requests(count: int, seed: int = 0) -> list[GenerationRequest]:
    rng = np.random.default_rng(seed)
    return [
        GenerationRequest(
            rng.integers(0, 256, (518, 518), dtype=np.uint8),
            rng.integers(0, 256, (518, 518), dtype=np.uint8),
            ClinicalContext(indication="shortness of breath", comparison="2024-01-01"),
        )
        for _ in range(count)
    ]


def fixed_length(checkpoint: LibraCheckpoint, new_tokens: int) -> LibraGenerator:
    """Clinical decoding, forced to write exactly ``new_tokens`` tokens."""
    return LibraGenerator(checkpoint, max_new_tokens=new_tokens, min_new_tokens=new_tokens)


def bytes_per_decoded_token(checkpoint: LibraCheckpoint, sequence_length: int) -> int:
    """Weights every decode step reads (decoder layers, final norm, output head) plus the KV cache."""
    config = checkpoint.model.config
    language_model = checkpoint.model.model
    element = torch.finfo(checkpoint.dtype).bits // 8
    weights = (
        sum(p.numel() for p in language_model.layers.parameters())
        + language_model.norm.weight.numel()
    )
    weights += checkpoint.model.lm_head.weight.numel()
    head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
    kv_per_position = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim
    return (weights + kv_per_position * sequence_length) * element


def spec_bandwidth(device: torch.device) -> float | None:
    """Bytes/s from the GPU's memory clock and bus width (double data rate), when torch reports them."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def measured_copy_bandwidth(device: torch.device) -> float:
    size = (2 * GIB if device.type == "cuda" else GIB // 4) // 4
    source = torch.empty(size, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    started = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    return 2 * size * 4 * repeats / (time.perf_counter() - started)  # read + write


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str, checkpoint: LibraCheckpoint, new_tokens: int, batches: list[int]
) -> ModelReport:
    device = checkpoint.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fixed_length(checkpoint, 4).generate(requests(1))  # warm-up: kernels, allocator
    [prefill] = fixed_length(checkpoint, 1).generate(requests(1))
    [full] = fixed_length(checkpoint, new_tokens).generate(requests(1))
    decode_seconds = full.generate_seconds - prefill.generate_seconds
    tokens_per_second = (new_tokens - 1) / decode_seconds

    per_token = bytes_per_decoded_token(checkpoint, full.prompt_tokens + new_tokens // 2)
    spec = spec_bandwidth(device)
    measured = measured_copy_bandwidth(device)
    reports_per_hour = {1: 3600 / full.total_seconds}
    for batch in batches:
        if batch == 1:
            continue
        result = fixed_length(checkpoint, new_tokens).generate(requests(batch, seed=batch))[0]
        reports_per_hour[batch] = 3600 * batch / result.total_seconds
    weight_bytes = sum(p.numel() * p.element_size() for p in checkpoint.model.parameters())
    return ModelReport(
        model=name,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        dtype=str(checkpoint.dtype).removeprefix("torch."),
        weight_gib=weight_bytes / GIB,
        prompt_tokens=full.prompt_tokens,
        prefill_seconds=prefill.total_seconds,
        decode_tokens_per_second=tokens_per_second,
        bytes_per_token=per_token,
        spec_bandwidth_gb_s=spec / 1e9 if spec else None,
        measured_bandwidth_gb_s=measured / 1e9,
        limit_tokens_per_second=(spec or measured) / per_token,
        reports_per_hour=reports_per_hour,
        peak_memory_gib=torch.cuda.max_memory_allocated(device) / GIB
        if device.type == "cuda"
        else None,
    )


def print_report(report: ModelReport, new_tokens: int) -> None:
    ratio = report.decode_tokens_per_second / report.limit_tokens_per_second
    spec = f"{report.spec_bandwidth_gb_s:.0f} GB/s spec, " if report.spec_bandwidth_gb_s else ""
    print(
        f"\n{report.model} on {report.device} ({report.dtype}, {report.weight_gib:.3f} GiB of weights)"
    )
    print(
        f"  prompt {report.prompt_tokens} positions; image encoding + prefill {report.prefill_seconds:.3f} s"
    )
    print(
        f"  batch 1 decode: {report.decode_tokens_per_second:8.1f} tokens/s   "
        f"bandwidth limit: {report.limit_tokens_per_second:8.1f} tokens/s   ratio {ratio:.2f}"
    )
    print(
        f"    limit = {spec}{report.measured_bandwidth_gb_s:.0f} GB/s measured copy; "
        f"{report.bytes_per_token / 1e6:.1f} MB read per token (weights + KV cache)"
    )
    for batch, per_hour in report.reports_per_hour.items():
        print(f"  batch {batch:>2}: {per_hour:10.0f} reports/hour ({new_tokens} new tokens each)")
    if report.peak_memory_gib is not None:
        print(f"  peak GPU memory {report.peak_memory_gib:.1f} GiB")


def models_to_run(
    device: torch.device, folder: Path
) -> list[tuple[str, Callable[[], LibraCheckpoint]]]:
    """(name, build) pairs; each model is built only when its turn comes, to hold one at a time."""
    tiny_7b = write_tiny_checkpoint(folder / "tiny-7b", "7b")
    if device.type != "cuda":
        return [
            (
                "tiny (7b layout, CPU)",
                lambda: load_checkpoint(tiny_7b, device="cpu", dtype="float32"),
            )
        ]
    tiny_3b = write_tiny_checkpoint(folder / "tiny-3b", "3b")
    return [
        (
            "libra-v1.0-7b shapes, random weights",
            lambda: random_checkpoint(libra_7b_config(), tiny_7b, device, torch.bfloat16),
        ),
        (
            "libra-v1.0-3b shapes, random weights",
            lambda: random_checkpoint(libra_3b_config(), tiny_3b, device, torch.bfloat16),
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="tokens written per report (default 128)"
    )
    parser.add_argument(
        "--batches", default="1,4,16", help="batch sizes for reports/hour (default 1,4,16)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    batches = sorted({int(b) for b in args.batches.split(",")} | {1})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)

    reports = []
    with tempfile.TemporaryDirectory() as folder:
        for name, build in models_to_run(device, Path(folder)):
            checkpoint = build()
            report = measure(name, checkpoint, args.new_tokens, batches)
            print_report(report, args.new_tokens)
            reports.append(report)
            del checkpoint
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
