"""Hardware tiers the planner sizes a run against.

Every figure is an assumption with its source beside it; `plan --price` overrides the price.
Peak TFLOPs are dense bf16 tensor-core figures from the vendor datasheets (no 2:4 sparsity).
Utilisation is the share of that peak a LoRA step reaches (model FLOPs utilisation): LoRA runs
the frozen base's matmuls at full size but adds many small adapter matmuls, optimizer and
kernel-launch overheads, so it sits below the 40-55% that full fine-tuning reports on H100/A100.
Prices are on-demand list prices per GPU-hour (mid-2025), rounded; spot and reserved are cheaper.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraforge.errors import ConfigError

GIB = 1024**3
GB = 1000**3

# Fixed GPU memory a training process holds outside its tensors: the CUDA context, cuBLAS/cuDNN
# workspaces and loaded kernels (nvidia-smi shows ~0.5-1 GiB for a torch process before any tensor).
CUDA_CONTEXT_BYTES = 1 * GIB
# Share of the device memory the caching allocator can actually hand out to tensors; the rest goes
# to fragmentation (blocks split by size class). 0.9 is the usual rule of thumb for steady training.
CUDA_USABLE_FRACTION = 0.9
# CPU: a vCPU-hour at general-purpose cloud prices (e.g. AWS m7i ~$0.05/vCPU-hour).
CPU_USD_PER_CORE_HOUR = 0.05
# CPU: fp32 FLOPs per core per second with AVX-512 FMA at ~2.5 GHz (2 FMA units x 16 lanes x 2 flops).
CPU_PEAK_GFLOPS_PER_CORE = 160.0
# CPU: share of that peak a PyTorch training step reaches (measured ~25-35% on small models).
CPU_UTILISATION = 0.3


@dataclass(frozen=True)
class Tier:
    name: str
    memory_bytes: int
    peak_tflops: float  # dense bf16 (fp32 for CPU)
    utilisation: float
    usd_per_hour: float
    kind: str  # "consumer", "datacenter-24", "datacenter-80", "cpu"
    source: str

    @property
    def is_gpu(self) -> bool:
        return self.kind != "cpu"

    @property
    def usable_bytes(self) -> int:
        """Memory tensors can use: a GPU loses its CUDA context and allocator fragmentation."""
        if not self.is_gpu:
            return self.memory_bytes
        return int(self.memory_bytes * CUDA_USABLE_FRACTION)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


GPU_TIERS: dict[str, Tier] = {
    "H100": Tier(
        "H100",
        80 * GB,
        989.0,
        0.35,
        2.99,
        "datacenter-80",
        "NVIDIA H100 SXM datasheet: 989 TFLOPs bf16 dense, 80 GB HBM3; price: on-demand clouds ~$2.5-4/h",
    ),
    "A100-80": Tier(
        "A100-80",
        80 * GB,
        312.0,
        0.40,
        1.79,
        "datacenter-80",
        "NVIDIA A100 datasheet: 312 TFLOPs bf16 dense, 80 GB HBM2e; price: on-demand clouds ~$1.3-2.5/h",
    ),
    "A10G": Tier(
        "A10G",
        24 * GB,
        70.0,
        0.35,
        1.01,
        "datacenter-24",
        "AWS g5 A10G, 24 GB: AWS publishes no TFLOPs; NVIDIA's A10 lists 125 bf16 dense, the A10G's lower "
        "clocks measure ~70; price: AWS g5.xlarge on-demand us-east-1 $1.006/h",
    ),
    "L4": Tier(
        "L4",
        24 * GB,
        121.0,
        0.30,
        0.80,
        "datacenter-24",
        "NVIDIA L4 datasheet: 121 TFLOPs bf16 dense (242 sparse), 24 GB GDDR6; 300 GB/s memory keeps "
        "utilisation low; price: GCP g2-standard-4 ~$0.7-0.9/h",
    ),
    "RTX4090": Tier(
        "RTX4090",
        24 * GB,
        165.0,
        0.35,
        0.40,
        "consumer",
        "NVIDIA Ada whitepaper: 165 TFLOPs bf16 dense, 24 GB GDDR6X; price: community clouds ~$0.3-0.5/h",
    ),
}

# The tiers the recommendation walks, cheapest first: a 24 GB card, an 80 GB card, then FSDP.
CONSUMER_TIER = "RTX4090"
SINGLE_80_TIER = "A100-80"
MULTI_GPU_TIER = "H100"


def cpu_tier() -> Tier:
    """This machine's CPU and RAM (the tier the tests and the calibration run on)."""
    cores = os.cpu_count() or 1
    return Tier(
        "CPU", _mem_total_bytes(), cores * CPU_PEAK_GFLOPS_PER_CORE / 1000, CPU_UTILISATION,
        cores * CPU_USD_PER_CORE_HOUR, "cpu",
        f"this machine: {cores} cores x {CPU_PEAK_GFLOPS_PER_CORE:.0f} GFLOPs fp32 peak (AVX-512 FMA, assumed), "
        f"MemTotal from /proc/meminfo; price ${CPU_USD_PER_CORE_HOUR}/core-hour",
    )  # fmt: skip


def _mem_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 16 * GIB  # no /proc (macOS): assume a 16 GiB laptop


TIER_NAMES = (*GPU_TIERS, "CPU")


def get_tier(name: str, usd_per_hour: float | None = None) -> Tier:
    """A tier by name (case-insensitive), with an optional price override."""
    lookup = {key.lower(): key for key in TIER_NAMES}
    key = lookup.get(name.lower())
    if key is None:
        raise ConfigError([f"name={name!r} (--gpu): unknown tier; choose one of {', '.join(TIER_NAMES)}"], "--gpu")
    tier = cpu_tier() if key == "CPU" else GPU_TIERS[key]
    if usd_per_hour is not None:
        tier = Tier(**{**asdict(tier), "usd_per_hour": usd_per_hour})
    return tier
