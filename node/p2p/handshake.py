"""The handshake, both sides at once, whoever dialled (layout in docs/protocol.md).

Send HELLO, read the peer's HELLO and check chain id, genesis hash and protocol
version; send AUTH, a signature over the peer's fresh nonce followed by our own HELLO
encoding; read the peer's AUTH and verify it against the key in its HELLO.  The
signed nonce makes an AUTH useless on any other connection; signing our own HELLO
binds the key to the chain, head and port it announced.  The peer id is the hex
account id of that key.  Nobody needs more than HANDSHAKE_MAX_FRAME bytes a frame
before proving who they are.
"""

from __future__ import annotations

import asyncio

from ledger import crypto
from ledger.address import address_of
from ledger.crypto import PrivateKey
from node.p2p.frames import read_frame, send_frame
from node.p2p.messages import Auth, Disconnect, Hello, decode_message

HANDSHAKE_MAX_FRAME = 1024  # a HELLO is under 200 bytes


class Refused(Exception):
    """The handshake failed; `reason` goes to the peer and the log."""

    def __init__(self, reason: str, *, by_peer: bool = False, ban_address: bool = False, itself: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.by_peer = by_peer
        self.ban_address = ban_address
        self.itself = itself


def incompatibility(ours: Hello, theirs: Hello) -> str | None:
    if theirs.chain_id != ours.chain_id:
        return f"another chain: peer is on '{theirs.chain_id}', this node on '{ours.chain_id}'"
    if theirs.genesis_hash != ours.genesis_hash:
        return f"another genesis: peer has {theirs.genesis_hash.hex()}, this node {ours.genesis_hash.hex()}"
    if theirs.protocol_version != ours.protocol_version:
        return f"another protocol version: peer speaks {theirs.protocol_version}, this node {ours.protocol_version}"
    return None


def _expect(payload: bytes, kind: type):
    message = decode_message(payload)
    if isinstance(message, Disconnect):
        raise Refused(f"peer refused: {message.reason}", by_peer=True)
    if not isinstance(message, kind):
        raise Refused(f"handshake expected {kind.__name__}, got {type(message).__name__}")
    return message


async def handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: PrivateKey, ours: Hello
) -> tuple[Hello, str]:
    """The peer's HELLO and its proven node id.  Raises Refused, FrameTooLarge, DecodeError
    or the stream's errors."""
    our_payload = ours.encode()
    await send_frame(writer, our_payload)
    their_payload = await read_frame(reader, HANDSHAKE_MAX_FRAME)
    theirs: Hello = _expect(their_payload, Hello)
    problem = incompatibility(ours, theirs)
    if problem is not None:
        raise Refused(problem, ban_address=True)
    signature = key.sign(crypto.DOMAIN_HANDSHAKE, theirs.nonce + our_payload)
    await send_frame(writer, Auth(signature).encode())
    auth: Auth = _expect(await read_frame(reader, HANDSHAKE_MAX_FRAME), Auth)
    if not crypto.verify(theirs.node_public_key, crypto.DOMAIN_HANDSHAKE, ours.nonce + their_payload, auth.signature):
        raise Refused("bad handshake signature", ban_address=True)
    return theirs, address_of(theirs.node_public_key).hex()
