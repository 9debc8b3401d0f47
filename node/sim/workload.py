"""The seeded workload: transfers among the dev accounts, in batches at random moments.

The simulator submits it on virtual time and `ledger compare --real` on wall-clock time to
real processes: for one seed both send the same transfers (amounts, fees, nonces, batches)
with the same gaps between batches.
"""

from __future__ import annotations

import hashlib
import random

from ledger.address import address_of
from ledger.crypto import PrivateKey
from ledger.transaction import Transaction, new_transfer

MEAN_BATCH = 3
# The simulator's random streams, in the order they are drawn from the seed: separate
# streams, so that adding a fault does not shift the workload.
STREAMS = ("net", "fault", "work", "mining", "byzantine", "membership")


def seeded_streams(seed: int) -> dict[str, random.Random]:
    master = random.Random(seed)
    return {name: random.Random(master.getrandbits(64)) for name in STREAMS}


class Workload:
    """Transfers from `senders` (funded dev accounts) to each other and to four fresh
    addresses, `rate` a second on average, in batches of 1 to 5."""

    def __init__(self, chain_id: str, senders: tuple[PrivateKey, ...], rng: random.Random, rate: float):
        if rate < 0:
            raise ValueError("rate: transfers a second, 0 or more")
        self.chain_id = chain_id
        self.senders = senders
        self.rng = rng
        self.rate = rate
        self.recipients = [address_of(key.public_key) for key in senders] + [
            hashlib.sha256(f"{chain_id}/user/{i}".encode()).digest()[:20] for i in range(4)
        ]
        self.next_nonce = [0] * len(senders)

    def gap(self) -> float:
        """Seconds to the next batch (arrivals are a Poisson process; a rate of 0 has none)."""
        assert self.rate > 0, "a workload of rate 0 sends nothing"
        return self.rng.expovariate(self.rate / MEAN_BATCH)

    def batch(self) -> list[Transaction]:
        return [self.transfer() for _ in range(self.rng.randint(1, 2 * MEAN_BATCH - 1))]

    def transfer(self) -> Transaction:
        rng = self.rng
        index = rng.randrange(len(self.senders))
        recipient = rng.choice(self.recipients)
        tx = new_transfer(
            self.senders[index], self.chain_id, self.next_nonce[index], recipient, rng.randint(1, 1000), rng.randint(0, 10)
        )
        self.next_nonce[index] += 1
        return tx
