"""Every random stream of a run derives from (seed, cycle, stream name) and nothing else."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, cycle: int, stream: str) -> int:
    """A 32-bit seed for one named random stream of one AL cycle.

    Hashing keeps streams independent: changing how many numbers one stream draws
    (say, a bigger pool subset) does not shift any other stream.
    """
    digest = hashlib.blake2b(f"{seed}/{cycle}/{stream}".encode(), digest_size=4).digest()
    # 32 bits: numpy (seeded by Lightning's seed_everything) accepts no more.
    return int.from_bytes(digest, "little")


def make_generator(
    seed: int, cycle: int, stream: str, device: torch.device | str = "cpu"
) -> torch.Generator:
    """A `torch.Generator` on `device` seeded with `derive_seed(seed, cycle, stream)`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, cycle, stream))
    return generator
