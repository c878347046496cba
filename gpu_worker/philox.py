"""Normal noise equal to CUDA's `torch.randn` (Philox-4x32-10 and Box–Muller), computed on any machine.

What A1111 calls the "NV" random number source (modules/rng_philox.py), and what its default "GPU"
source draws on an NVIDIA card: so a picture made there can start from the same noise here, on a
CPU or any other device. Followed (facts, not code): each number i of a draw takes the counter
(offset, 0, i, 0) and the key (seed's low and high 32 bits); ten rounds, each multiplying counter
words 0 and 2 by 0xD2511F53 and 0xCD9E8D57 into 64 bits and mixing high halves with the other words
and the key, the key stepped by 0x9E3779B9 and 0xBB67AE85 between rounds; words 0 and 1 of the
result make one normal number by Box–Muller (u = x·2⁻³² + 2⁻³³, v = (y·2⁻³² + 2⁻³³)·2π,
√(−2 ln u)·sin v), in float32 constants as A1111 writes them. Each draw moves the offset on by one.
A1111's docstring: seed 0, shape 3×4 → −0.92466259, −0.42534415, −2.6438457, 0.14518388, …
"""

from __future__ import annotations

import numpy as np

_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_ROUNDS = 10
_LOW = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)
# The constants as A1111 has them: float32 values (2⁻³² and 2⁻³²·2π), the arithmetic then in float64.
_INV_2_32 = np.float32(2.3283064e-10)
_INV_2_32_2PI = np.float32(2.3283064e-10 * 6.2831855)


def _philox(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox-4x32-10 of 4 x n counters under a (2,) key: the 4 x n words."""
    c0, c1, c2, c3 = (counter[i].astype(np.uint64) for i in range(4))
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for number in range(_ROUNDS):
        if number:
            k0 = (k0 + np.uint64(_KEY_STEPS[0])) & _LOW
            k1 = (k1 + np.uint64(_KEY_STEPS[1])) & _LOW
        product0, product2 = c0 * _MULTIPLIERS[0], c2 * _MULTIPLIERS[1]
        c0, c1, c2, c3 = (
            (product2 >> _SHIFT) ^ c1 ^ k0,
            product2 & _LOW,
            (product0 >> _SHIFT) ^ c3 ^ k1,
            product0 & _LOW,
        )
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


class PhiloxNormal:
    """A seeded source of CUDA-equal normal noise; each `randn` is the next draw."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        if count >= 1 << 32:
            raise ValueError("at most 2^32 numbers a draw")
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint32)
        self.offset += 1
        key = np.array([self.seed & 0xFFFFFFFF, self.seed >> 32], dtype=np.uint32)
        words = _philox(counter, key)
        u = words[0] * _INV_2_32 + _INV_2_32 / 2
        v = words[1] * _INV_2_32_2PI + _INV_2_32_2PI / 2
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)
