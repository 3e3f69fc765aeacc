"""One seed per purpose: every random stream of a run is derived from the run's seed and named tags.

Arithmetic seed formulas (``seed * k + step``) let two purposes share a stream (the device generator of
step t equalled the CPU generator of step t+1; clustering event s, class c equalled event s+1, class
c-1). Hashing the tags instead gives independent 63-bit seeds for every (purpose, index) pair, the same
on every machine and in every process, so a resumed run redraws exactly what an uninterrupted one drew.
"""

from __future__ import annotations

import hashlib

import torch


def derive(seed: int, *tags: str | int) -> int:
    """A seed for the stream named by ``tags`` within run ``seed``.

    >>> derive(0, "net", 1) == derive(0, "net", 1)
    True
    >>> len({derive(0, "step", 1, "host"), derive(0, "step", 1, "device"), derive(0, "step", 2, "host")})
    3
    """
    key = repr((int(seed), *tags)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generator(seed: int, *tags: str | int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with :func:`derive` (the global RNG is untouched)."""
    return torch.Generator(device=device).manual_seed(derive(seed, *tags))
