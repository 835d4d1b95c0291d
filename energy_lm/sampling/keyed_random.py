"""Counter-based uniforms: a pure function of (seed, update, example id, position, k).

MonArc and NCE draw one uniform per candidate for the inverse-CDF sampler
(`sample_tokens`). Drawn from a stateful generator, the sample an example gets depends
on where it sits: its rank, its index in the batch, what ran before on that device. A
uniform computed from the example's own keys does not, so a run on 2 processes with B
examples each and a run on 1 process with the same 2B examples draw the same samples
(and, in fp32 on the CPU with no dropout, follow the same loss curve); a resumed run
draws what the uninterrupted one drew.

The hash is Chris Wellons' "lowbias32" 32-bit mixer applied in a chain (each key mixed
into the state of the ones before it), in int64 tensor arithmetic that never overflows
(every product of two 32-bit numbers is split into 16-bit halves), so the numbers are
the same on every device. Two chained words give a 53-bit uniform in [0, 1).
"""

from dataclasses import dataclass

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32): products stay below 2**49."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def mix32(x: Tensor) -> Tensor:
    """lowbias32: a bijection of [0, 2**32) with good avalanche (int64 in and out)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _absorb(state: Tensor, key) -> Tensor:
    if torch.is_tensor(key):
        key = key.to(torch.int64)
    else:
        key = int(key)
    # 0x9E3779B9 keeps a zero key from leaving the state as it was
    return mix32((state ^ (key & _M32)) + 0x9E3779B9 & _M32)


@dataclass
class SampleKeys:
    """What makes one training example's candidates: the run's seed, the update number,
    and the example ids (B,) of the batch (fairseq's `sample["id"]`)."""
    seed: int
    update: int
    ids: Tensor


def keyed_uniform(keys: SampleKeys, positions: Tensor, num_samples: int) -> Tensor:
    """Uniforms in [0, 1), float64, (B, P, K): for example b, position positions[b, p]
    (or positions[p] for a (P,) tensor) and sample k, a function of those keys alone."""
    ids = keys.ids.to(torch.int64)
    device = ids.device
    if positions.dim() == 1:
        positions = positions.unsqueeze(0).expand(ids.size(0), -1)
    state = _absorb(torch.tensor(0, dtype=torch.int64, device=device), keys.seed)
    state = _absorb(state, keys.update)  # ()
    state = _absorb(state.expand(ids.shape), ids)  # (B,)
    state = _absorb(state[:, None], positions.to(device=device, dtype=torch.int64))  # (B, P)
    k = torch.arange(num_samples, device=device, dtype=torch.int64)
    high = _absorb(state[:, :, None], k)  # (B, P, K)
    low = _absorb(high, 0x5BD1E995)
    value = (high >> 5) * (1 << 26) + (low >> 6)  # 27 + 26 = 53 random bits
    return value.to(torch.float64) * (1.0 / (1 << 53))
