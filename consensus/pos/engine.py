"""PosEngine: proof of stake on the engine boundary.

Time comes in events: slot s starts at genesis time + s * slot_ms.  At a slot's start its
proposer (beacon.proposer_index on the head's state) asks for a block, fills `extra` with
its RANDAO reveal, the attestations and slashings it knows of and the ops the state
orders, then seals and commits it (the runtime pushes it to peers).  A third into the
slot every validator with a duty attests: the fork choice's head, the FFG source (the
justified checkpoint) and target (this epoch's checkpoint on that head).  Attestations are
gossiped, weigh in LMD-GHOST (forkchoice.py) and are included in later blocks, where they
count for Casper FFG (beacon.py).  The engine chooses the head and says so with SetHead.

Every signed message is preceded by a `Persist` of the double-sign guard
(consensus/pos/guard.py): what this validator signed last, so that it never signs a
slashable pair, even across a restart.  What the engine reports (its status, a block's
evidence records) is in consensus/pos/report.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ledger import crypto
from ledger.block import Block, BlockHeader, InvalidSeal
from ledger.codec import DecodeError
from ledger.engine_status import Finality
from ledger.evidence import EvidenceRecord
from ledger.staking import StakeChange, StakeOp, stake_changes_of

from consensus.engine import (
    Action,
    BlockBuilt,
    BlockCommitted,
    BlockReceived,
    Broadcast,
    BuildBlock,
    Commit,
    Engine,
    Event,
    PeerMessage,
    Persist,
    ReportEvidence,
    SetHead,
    SetTimer,
    Started,
    Tick,
)
from consensus.pos import beacon, labels
from consensus.pos.beacon import BeaconState, Chain
from consensus.pos.forkchoice import BlockTree
from consensus.pos.guard import Guard, decode_saved, encode_saved
from consensus.pos.messages import (
    DOMAIN_RANDAO,
    Attestation,
    AttesterSlashing,
    Checkpoint,
    PosExtra,
    ProposerSlashing,
    SealedDigest,
    decode_message,
    encode_message,
    randao_payload,
    slashable_votes,
)
from consensus.pos.params import PosParams
from consensus.pos.report import ReportPart

MAX_POOL = 4096  # attestations waiting for a block
MAX_SEEN_VOTES = 64  # per validator, for slashing detection
MAX_STATES = 10_000
MAX_EVIDENCE_SHOWN = 100


class PosEngine(ReportPart, Engine):
    name = "pos"
    finality = Finality.CHECKPOINT
    # Enough recent headers to rebuild the states since a persisted one after a restart.
    ancestors_needed = 256
    staking = True
    max_reorg_depth = 100_000  # finality bounds reorgs; a partition may grow long branches

    def __init__(self, genesis, signer: crypto.PrivateKey | None):
        self.params = PosParams.from_genesis(genesis.engine_params)
        self.chain = Chain(genesis.chain_id, genesis.timestamp, crypto.sha256(b"seed" + genesis.hash), self.params)
        self.genesis_header = genesis.block().header
        self.genesis_state = beacon.genesis_state(self.genesis_header.hash, genesis.stakes, self.params)
        self.max_future_ms = self.params.slot_ms
        self._key = signer
        self._states: dict[bytes, BeaconState] = {self.genesis_header.hash: self.genesis_state}
        # The header of every block with a state: ancestry for finality, and what the tree needs
        # to take in a side branch whose inner blocks the runtime checked but never announced.
        self._headers: dict[bytes, BlockHeader] = {self.genesis_header.hash: self.genesis_header}
        self.tree = BlockTree(self.genesis_header, self.genesis_state)
        self.head: BlockHeader | None = None  # the runtime's head
        self.guard = Guard()
        self._out: list[Action] = []
        self._now = 0
        self._slot_done: tuple[int, bool, bool] = (-1, False, False)  # (slot, proposed, attested)
        self._building: tuple[int, PosExtra] | None = None
        self._asked_head: bytes | None = None
        self._timer_at: int | None = None
        self.pool: dict[tuple[int, int], Attestation] = {}  # (validator, slot) -> attestation
        self.pending_evidence: dict[bytes, ProposerSlashing | AttesterSlashing] = {}
        self.evidence_seen: dict[bytes, EvidenceRecord] = {}
        self._seen_votes: dict[int, list[Attestation]] = {}
        self._seen_blocks: dict[tuple[int, int], SealedDigest] = {}  # (slot, proposer) -> first seal seen
        self._waiting_votes: list[Attestation] = []  # heads not known yet
        self.proposed: dict[int, int] = {}  # validator -> blocks proposed on the head's chain (counted as seen)
        self.refused_messages = 0
        self._saved_mark: tuple[int, int] | None = None

    # ------------------------------------------------------------------ pure checks
    def verify_seal(self, header: BlockHeader, parent: BlockHeader) -> None:
        self.verify_header(header, (parent,))

    def verify_header(self, header: BlockHeader, ancestors: Sequence[BlockHeader], now_ms: int | None = None) -> None:
        if not ancestors:
            raise ValueError("verify_header needs at least the parent header")
        if header.parent != ancestors[-1].hash:
            raise InvalidSeal("block does not extend the header it is checked on")
        parent = self._state_for(ancestors)
        if parent is None:
            raise InvalidSeal("the consensus state of the parent is unknown (a branch below the finalized checkpoint?)")
        known = self._states.get(header.hash)
        if known is not None:
            return
        state = beacon.apply_block(parent, header, self.chain)
        self._remember(header, state)

    def _state_for(self, ancestors: Sequence[BlockHeader]) -> BeaconState | None:
        """The state after ancestors[-1], replaying ancestors from the newest one known."""
        state = self._states.get(ancestors[-1].hash)
        if state is not None:
            return state
        start = None
        for position in range(len(ancestors) - 1, -1, -1):
            if ancestors[position].hash in self._states:
                start = position
                break
        if start is None:
            return None
        state = self._states[ancestors[start].hash]
        for header in ancestors[start + 1:]:
            state = beacon.apply_block(state, header, self.chain)
            self._remember(header, state)
        return state

    def _remember(self, header: BlockHeader, state: BeaconState) -> None:
        if len(self._states) >= MAX_STATES:
            self._prune_states()
        self._states[header.hash] = state
        self._headers[header.hash] = header

    def finalized_height(self, head_height: int, head_hash: bytes | None = None) -> int:
        """The height of the newest finalized checkpoint that the head descends from: the best
        any branch reached (the store's) when the head is on its chain, else the head state's
        own.  (A head state may lag an epoch boundary behind the store's; a node on the
        losing side of a partition must still be free to move to the winner's branch.)"""
        if head_hash is None:
            if self.head is None or self.head.height != head_height:
                return 0
            head_hash = self.head.hash
        state = self._states.get(head_hash)
        if state is None:
            return 0
        own = state.finalized_height
        best = self.tree.header(self.tree.finalized.root)
        if best is not None and best.height > own and self._descends(head_hash, best.hash, best.height):
            own = best.height
        return min(head_height, own)

    def _descends(self, block_hash: bytes, ancestor: bytes, ancestor_height: int) -> bool:
        header = self._headers.get(block_hash)
        while header is not None and header.height > ancestor_height:
            block_hash = header.parent
            header = self._headers.get(block_hash)
        return block_hash == ancestor

    def fork_choice(self, branches: Sequence[Sequence[BlockHeader]]) -> int:
        # LMD-GHOST decides (SetHead); the importer's length rule must not switch on its own.
        return 0

    def stake_ops(self, extra: bytes) -> tuple[StakeOp, ...]:
        return PosExtra.decode(extra).ops if extra else ()

    def declared_stake_changes(self, extra: bytes) -> tuple[StakeChange, ...]:
        return PosExtra.decode(extra).stake_changes if extra else ()

    def block_labels(self, header: BlockHeader, parent: BlockHeader | None) -> list[tuple[str, str]]:
        return labels.block_labels(self.chain, header, parent)

    # ------------------------------------------------------------------ events
    def handle(self, event: Event) -> list[Action]:
        self._out = []
        self._now = event.now
        if isinstance(event, Started):
            self._on_started(event)
        elif self.head is None:
            return []
        elif isinstance(event, Tick):
            pass
        elif isinstance(event, PeerMessage):
            self._on_peer_message(event.peer, event.message)
        elif isinstance(event, BlockReceived):
            self._on_block(event.block.header)
        elif isinstance(event, BlockBuilt):
            self._on_built(event.block)
        elif isinstance(event, BlockCommitted):
            self._on_committed(event.header, event.recent)
        self._choose_head()
        self._duties()
        self._arm_timer()
        return self._out

    def _on_started(self, event: Started) -> None:
        saved_states: list[BeaconState] = []
        if event.persisted:
            key, guard, saved_states = decode_saved(event.persisted)  # corrupt: refuse to run
            if self._key is not None and key == self._key.public_key:
                self.guard = guard
        recent = event.recent or (event.head,)
        heights = {header.hash: header.height for header in recent}
        for header in recent:
            self._headers[header.hash] = header
        for state in saved_states:
            if state.block_root in heights:
                self._states.setdefault(state.block_root, state)
        # The tree starts at the newest finalized state we can anchor: a saved one in the
        # window, else genesis (a young chain).
        anchor_state = None
        for state in saved_states:
            header = next((h for h in recent if h.hash == state.block_root), None)
            if header is not None and (anchor_state is None or state.slot < anchor_state[1].slot):
                anchor_state = (header, state)
        if anchor_state is not None and anchor_state[0].height > 0:
            self.tree = BlockTree(anchor_state[0], anchor_state[1])
        for position, header in enumerate(recent):
            if header.height == 0 or header.hash in self.tree:
                continue
            state = self._state_for(recent[: position + 1])
            if state is not None:
                self.tree.add(header, state)
        self.head = event.head
        if event.head.hash not in self.tree:
            # Not rebuilt: the node runs on, following blocks, but cannot judge forks below.
            state = self._states.get(event.head.hash)
            if state is not None:
                self.tree = BlockTree(event.head, state)

    def _on_committed(self, header: BlockHeader, recent: tuple[BlockHeader, ...]) -> None:
        self.head = header
        self._asked_head = None
        window = recent or (header,)
        # Only the window's tail can be new to the tree: what is in it, or at or below its
        # anchor (pruned at finality), was seen before; looking at all of it every commit
        # made long runs quadratic.
        anchor = self.tree.header(self.tree.anchor)
        floor = anchor.height if anchor is not None else 0
        start = len(window)
        while start > 0 and window[start - 1].hash not in self.tree and window[start - 1].height > floor:
            start -= 1
        for position in range(start, len(window)):
            self._on_block(window[position], window[: position + 1])
        if header.hash not in self.tree:
            self._on_block(header)
        # A saved state within the recent window is all a restart needs (it replays the rest):
        # one save an epoch, and whenever finality moves.
        state = self._states.get(header.hash)
        if state is not None:
            mark = (state.slot // self.params.slots_per_epoch, self.tree.finalized.epoch)
            if mark != self._saved_mark:
                if self._saved_mark is not None and mark[1] != self._saved_mark[1]:
                    self._prune_states()
                self._saved_mark = mark
                self._persist()

    def _on_block(self, header: BlockHeader, ancestors: Sequence[BlockHeader] = ()) -> None:
        """A valid block the runtime holds (received, committed or our own): into the tree,
        its attestations into the latest messages, and a second seal for one slot by one
        proposer kept as evidence."""
        state = self._states.get(header.hash)
        if state is None and ancestors:
            try:
                state = self._state_for(ancestors)
            except InvalidSeal:
                state = None
        if state is None:
            parent = self._states.get(header.parent)
            if parent is None:
                return
            try:
                state = beacon.apply_block(parent, header, self.chain)
            except InvalidSeal:
                return
            self._remember(header, state)
        if header.parent not in self.tree:
            # A side branch arrives whole and only its tip is announced: take in the blocks
            # between it and the tree first (the runtime checked them; their states are known).
            missing, parent = [], self._headers.get(header.parent)
            while parent is not None and parent.hash not in self.tree and parent.hash in self._states:
                missing.append(parent)
                parent = self._headers.get(parent.parent)
            for item in reversed(missing):
                self._on_block(item)
                if item.hash not in self.tree:
                    # The branch does not join the tree (it forks below the finalized anchor):
                    # going on would walk it again from each of its blocks, which on a long
                    # branch never ends (issue 12's 7-validator Byzantine sweep, seed 84).
                    break
        if not self.tree.add(header, state):
            return
        extra = PosExtra.decode(header.extra)
        for att in extra.attestations:
            self._note_vote(att)
            self._lmd_vote(att)
        slot = self.chain.slot_of(header.timestamp) or 0
        parent_state = self._states.get(header.parent)
        proposer = None
        if parent_state is not None:
            proposer = beacon.prepare(parent_state, slot, self.chain).proposer
        if proposer is not None:
            self.proposed[proposer] = self.proposed.get(proposer, 0) + 1
            sealed = SealedDigest(slot, crypto.sha256(header.unsealed_bytes()), header.seal)
            first = self._seen_blocks.setdefault((slot, proposer), sealed)
            if first.digest != sealed.digest:
                pair = sorted((first, sealed), key=lambda s: s.digest)
                self._add_evidence(ProposerSlashing(proposer, pair[0], pair[1]), broadcast=True)
        for att in self._waiting_votes[:]:
            if att.head in self.tree:
                self._waiting_votes.remove(att)
                self._lmd_vote(att)

    def _head_state(self) -> BeaconState:
        assert self.head is not None
        state = self._states.get(self.head.hash)
        return state if state is not None else self.genesis_state

    # ------------------------------------------------------------------ duties
    def current_slot(self) -> int:
        return max(0, (self._now - self.chain.genesis_time) // self.params.slot_ms)

    def _duties(self) -> None:
        slot = self.current_slot()
        if self.head is None or slot == 0:
            return
        done_slot, proposed, attested = self._slot_done
        if done_slot != slot:
            proposed, attested = False, False
            self._forget_old(slot)
            if self._key is None:
                self._slot_done = (slot, True, True)
                return
        elif self._key is None:
            return
        head_state = self._states.get(self.head.hash)
        index = self._my_index(head_state) if head_state is not None else None
        if index is None:
            self._slot_done = (slot, proposed, attested)
            return
        if not proposed:
            proposed = True
            self._propose(slot, index)
        attest_at = self.chain.slot_time(slot) + self.params.slot_ms // 3
        if not attested and self._now >= attest_at:
            attested = True
            self._attest(slot, index)
        self._slot_done = (slot, proposed, attested)

    def _forget_old(self, slot: int) -> None:
        """Attestations past the inclusion window, and votes too old to be slashed in a block."""
        window = self.params.slots_per_epoch
        for key in [key for key in self.pool if key[1] + window < slot]:
            del self.pool[key]
        self._waiting_votes = [att for att in self._waiting_votes if att.slot + window >= slot]
        for key in [key for key in self._seen_blocks if key[0] + 4 * window < slot]:
            del self._seen_blocks[key]
        state = self._states.get(self.head.hash) if self.head is not None else None
        if state is not None:  # evidence against a validator already slashed on our chain is spent
            for digest in [d for d, item in self.pending_evidence.items()
                           if item.validator < len(state.validators) and state.validators[item.validator].slashed]:
                del self.pending_evidence[digest]

    def _my_index(self, state: BeaconState) -> int | None:
        key = self._key.public_key if self._key is not None else None
        for index, validator in enumerate(state.validators):
            if validator.key == key and not validator.key_taken:
                return index
        return None

    def _propose(self, slot: int, index: int) -> None:
        # On the fork choice's head: a SetHead to it, if any, went out before this request.
        head = self.tree.header(self.tree.head())
        state = self.tree.state(head.hash) if head is not None else None
        if head is None or state is None:
            return
        if state.slot >= slot or not self.guard.may_propose(slot):
            return
        prepared = beacon.prepare(state, slot, self.chain)
        if prepared.proposer != index:
            return
        validator = prepared.state.validators[index]
        epoch = slot // self.params.slots_per_epoch
        reveal = self._key.sign(DOMAIN_RANDAO, randao_payload(self.chain.chain_id, epoch))
        proposer_slashings, attester_slashings = self._evidence_for(prepared.state)
        extra = PosExtra(reveal, (), tuple(proposer_slashings), tuple(attester_slashings))
        try:
            after_evidence, _ = beacon.apply_body(prepared, slot, extra, validator.owner, self.chain)
        except InvalidSeal:
            extra = PosExtra(reveal)
            after_evidence = prepared.state
        attestations = self._attestations_for(after_evidence, slot, validator.owner)
        extra = replace(extra, attestations=tuple(attestations))
        _, ops = beacon.apply_body(prepared, slot, extra, validator.owner, self.chain)
        extra = replace(extra, ops=tuple(ops))
        self._building = (slot, extra)
        self._out.append(BuildBlock(head.hash, head.height + 1, self.chain.slot_time(slot), validator.owner,
                                    extra.encode()))

    def _evidence_for(self, state: BeaconState) -> tuple[list[ProposerSlashing], list[AttesterSlashing]]:
        proposers, attesters, named = [], [], set()
        for item in self.pending_evidence.values():
            if len(proposers) + len(attesters) >= self.params.max_slashings_per_block or item.validator in named:
                continue
            if isinstance(item, ProposerSlashing):
                if beacon.check_proposer_slashing(state, item, self.chain) is None:
                    proposers.append(item)
                    named.add(item.validator)
            elif beacon.check_attester_slashing(state, item, self.chain) is None:
                attesters.append(item)
                named.add(item.validator)
        return proposers, attesters

    def _attestations_for(self, state: BeaconState, slot: int, owner: bytes) -> list[Attestation]:
        chosen = []
        for key in sorted(self.pool):
            if len(chosen) >= self.params.max_attestations_per_block:
                break
            att = self.pool[key]
            if beacon.check_attestation(state, att, slot, self.chain) is None:
                state = beacon.process_attestation(state, att, slot, owner, self.chain)
                chosen.append(att)
        return chosen

    def _on_built(self, block: Block) -> None:
        building, self._building = self._building, None
        head = self.head
        if building is None or head is None or block.header.parent != head.hash:
            return  # built on a head we left meanwhile
        slot, extra = building
        if self.chain.slot_of(block.header.timestamp) != slot or not self.guard.may_propose(slot):
            return
        if head.hash not in self._states:
            return
        extra = replace(extra, stake_changes=stake_changes_of(block.transactions))
        header = replace(block.header, extra=extra.encode())
        header = replace(header, seal=beacon.sign_block(self._key, header, slot, self.chain.chain_id))
        try:
            state = beacon.apply_block(self._head_state(), header, self.chain)
        except InvalidSeal as exc:  # our own rules refuse it: a bug, never sent
            raise AssertionError(f"the block this validator built is invalid: {exc}") from exc
        self._remember(header, state)
        self.guard = replace(self.guard, proposed_slot=slot)
        self._persist()
        sealed = Block(header, block.transactions)
        self._out.append(Commit(sealed))

    def _attest(self, slot: int, index: int) -> None:
        head_hash = self.tree.head()
        head_state = self.tree.state(head_hash)
        if head_state is None:
            return
        if self.params.attest_every_slot and slot % self.params.slots_per_epoch == 0 and head_state.slot != slot:
            # The epoch's first block has not come (yet): its checkpoint may still change, and a
            # validator signs one FFG vote an epoch.  The next slot's attestation carries it.
            return
        state, _ = beacon.process_slots(head_state, slot, self.params)
        if not beacon.attests_at(state, index, slot, self.params, self.chain.genesis_seed):
            return
        epoch = slot // self.params.slots_per_epoch
        source, target = state.justified, Checkpoint(epoch, state.target_root)
        if not self.guard.may_vote(source, target):
            return
        att = Attestation(index, slot, head_hash, source, target).signed(self._key, self.chain.chain_id)
        if (source, target) != (self.guard.source, self.guard.target):
            self.guard = replace(self.guard, source=source, target=target)
            self._persist()
        self._accept_attestation(att)
        self._out.append(Broadcast(encode_message(att)))

    # ------------------------------------------------------------------ messages
    def _on_peer_message(self, peer: str, data: bytes) -> None:
        try:
            message = decode_message(data)
        except DecodeError:
            self.refused_messages += 1
            return
        state = self._head_state()
        if isinstance(message, Attestation):
            problem = self._attestation_problem(message, state)
            if problem:
                self.refused_messages += 1
                return
            fresh = message.slot + self.params.slots_per_epoch >= self.current_slot()  # as long as the pool keeps it
            if self._accept_attestation(message) and fresh:
                # Gossip: a peer may not be linked to the attester, and a validator that signed
                # two votes must not escape by sending each to different nodes.
                self._out.append(Broadcast(data))
        elif isinstance(message, ProposerSlashing):
            if beacon.check_proposer_slashing(state, message, self.chain) is None:
                self._add_evidence(message, broadcast=False)
        elif beacon.check_attester_slashing(state, message, self.chain) is None:
            self._add_evidence(message, broadcast=False)

    def _attestation_problem(self, att: Attestation, state: BeaconState) -> str | None:
        if att.validator >= len(state.validators):
            return "unknown validator"
        if att.slot > self.current_slot() + 1 or att.target.epoch != att.slot // self.params.slots_per_epoch:
            return "attestation from the future or with a wrong target epoch"
        if att.slot + 2 * self.params.slots_per_epoch < self.current_slot():
            return "attestation too old"
        if not att.signature_valid(state.validators[att.validator].key, self.chain.chain_id):
            return "bad signature"
        return None

    def _accept_attestation(self, att: Attestation) -> bool:
        """Take in a checked attestation; True when it is new to the pool (worth relaying)."""
        key = (att.validator, att.slot)
        if self.pool.get(key) == att:
            return False
        self._note_vote(att)
        new = key not in self.pool
        if new:
            self.pool[key] = att
            if len(self.pool) > MAX_POOL:
                del self.pool[min(self.pool, key=lambda k: (k[1], k[0]))]
        self._lmd_vote(att)
        return new

    def _note_vote(self, att: Attestation) -> None:
        """Compare a signed vote with the same validator's earlier ones: a double or surround
        vote becomes evidence (whoever proposes next puts it in a block)."""
        seen = self._seen_votes.setdefault(att.validator, [])
        for earlier in seen:
            if slashable_votes(earlier, att):
                first, second = sorted((earlier, att), key=beacon.evidence_key)
                self._add_evidence(AttesterSlashing(first, second), broadcast=True)
                break
        if all(earlier.vote != att.vote for earlier in seen):
            seen.append(att)
            del seen[:-MAX_SEEN_VOTES]

    def _lmd_vote(self, att: Attestation) -> None:
        if att.head in self.tree:
            self.tree.vote(att.validator, att.slot, att.head)
        elif len(self._waiting_votes) < MAX_POOL:
            self._waiting_votes.append(att)

    def _add_evidence(self, item: ProposerSlashing | AttesterSlashing, broadcast: bool) -> None:
        encoded = encode_message(item)
        digest = crypto.sha256(encoded)
        if digest in self.pending_evidence or digest in self.evidence_seen:
            return
        self.pending_evidence[digest] = item
        record = self._record(item, self._head_state())
        self.evidence_seen[digest] = record
        while len(self.evidence_seen) > MAX_EVIDENCE_SHOWN:
            del self.evidence_seen[next(iter(self.evidence_seen))]
        self._out.append(ReportEvidence(encoded))
        if broadcast:
            self._out.append(Broadcast(encoded))

    # ------------------------------------------------------------------ head, timers, persistence
    def _choose_head(self) -> None:
        if self.head is None:
            return
        best = self.tree.head()
        if best != self.head.hash and best != self._asked_head and best in self.tree:
            self._asked_head = best
            self._out.append(SetHead(best))

    def _arm_timer(self) -> None:
        slot = self.current_slot()
        attest_at = self.chain.slot_time(slot) + self.params.slot_ms // 3
        at = attest_at if self._now < attest_at else self.chain.slot_time(slot + 1)
        if self._timer_at != at or self._now >= (self._timer_at or 0):
            if self._timer_at is None or self._timer_at <= self._now or self._timer_at != at:
                self._timer_at = at
                self._out.append(SetTimer(at))

    def _persist(self) -> None:
        key = self._key.public_key if self._key is not None else b""
        states = [self._head_state()]
        finalized = self.tree.state(self.tree.finalized.root)
        if finalized is not None and finalized is not states[0]:
            states.append(finalized)
        self._out.append(Persist(encode_saved(key, self.guard, states)))

    def _prune_states(self) -> None:
        """Forget states below the finalized anchor; past MAX_STATES, also those of blocks the
        tree does not hold (checked headers of side blocks that never won), oldest first: an
        equivocating proposer's many blocks for one slot must not fill the memory."""
        floor = self.tree.state(self.tree.anchor)
        floor_slot = floor.slot if floor is not None else 0
        genesis = self.genesis_header.hash  # kept: any window of headers from block 0 replays from it
        for block_hash in [h for h, s in self._states.items() if s.slot < floor_slot and h not in self.tree and h != genesis]:
            del self._states[block_hash]
            self._headers.pop(block_hash, None)
        if len(self._states) >= MAX_STATES:
            keep = {self.head.hash if self.head is not None else genesis, genesis}
            spare = [h for h in self._states if h not in self.tree and h not in keep]
            for block_hash in spare[: len(self._states) - MAX_STATES // 2]:
                del self._states[block_hash]
                self._headers.pop(block_hash, None)
