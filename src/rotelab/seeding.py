"""Named random streams derived from one run seed, so each consumer is reproducible on its own."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, *names) -> int:
    """A 63-bit seed for the stream (seed, *names); stable across processes and platforms."""
    words = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(str(n).encode()) for n in names]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, *names, device="cpu") -> torch.Generator:
    """A torch.Generator (CPU unless `device` says otherwise) for the stream (seed, *names)."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *names))


def seed_global_streams(seed: int):
    """Seed torch's global generators (CPU, and CUDA once it is in use); cheaper than
    torch.manual_seed, which queues a lazy CUDA seeding with a stack trace when CUDA is idle."""
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
