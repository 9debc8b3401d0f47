"""Proof of stake: the Gasper family (LMD-GHOST fork choice + Casper FFG finality).

params.py   genesis parameters
messages.py the signed messages and the block header's `extra` (canonical encodings)
beacon.py   the consensus state of one block and its pure transition (slots, epochs,
            RANDAO, proposers, attestations, justification, finality, rewards, slashing)
forkchoice.py  the block tree and LMD-GHOST
engine.py   PosEngine: the state machine on the engine boundary (duties, gossip, guard)
"""
