"""What people type into the explorer's search box or its URLs, parsed, and what it names,
found: block heights and hashes, transaction ids, addresses and public keys, page
parameters.  `PageError` is how a bad or unknown input becomes the explorer's HTML error
page.

Kept apart from the page handlers of `api.explorer` because this is the part that must
trust nothing it is given (lengths capped before a regex or a decode, echoes cut short),
and every page parses its URL the same way, whatever it then shows.  `Explorer` mixes
`ExplorerInput` in, as `Node` mixes in its reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from fastapi import Request
from starlette.responses import RedirectResponse, Response

from api.service import BlockRecord, NodeService
from ledger import crypto
from ledger.address import ADDRESS_SIZE, InvalidAddress, address_of, bech32m_decode, decode_address
from ledger.codec import MAX_AMOUNT

MAX_QUERY_LENGTH = 200  # longer search input cannot be a height, hash or address
MAX_ECHO = 80  # how much of a bad input a page repeats back

_HEX64 = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_HEIGHT = re.compile(r"#?([0-9]{1,19})")
_PUBLIC_KEY = re.compile(r"(?:0x)?((?:02|03)[0-9a-fA-F]{64})")


class PageError(Exception):
    """Answered with the explorer's error page (HTML), never the API's problem+json."""

    def __init__(self, status: int, title: str, message: str, query: str = ""):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.query = query
        self.from_search = False  # the search box then shows the query again, ready to be corrected


def _echo(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"


class ExplorerInput:
    """Parsing and lookups, mixed into `Explorer`: it supplies the service and the network's
    address prefix and text."""

    service: NodeService
    prefix: str
    address: Callable[[bytes], str]

    @staticmethod
    def parse_height(text: str) -> int | None:
        match = _HEIGHT.fullmatch(text)
        if match is None:
            return None
        height = int(match.group(1))
        return height if height <= MAX_AMOUNT else None

    @staticmethod
    def parse_hash(text: str) -> bytes | None:
        match = _HEX64.fullmatch(text)
        return bytes.fromhex(match.group(1)) if match else None

    def parse_address(self, text: str) -> bytes:
        """The account of an address of this network; PageError(404) naming what is wrong."""
        if len(text) > MAX_QUERY_LENGTH:
            raise PageError(404, "Not an address", "That is too long to be an address.", text)
        try:
            return decode_address(text, self.prefix)
        except ValueError as exc:
            reason = str(exc)
            raise PageError(404, "Not an address of this network",
                            f"{reason[:1].upper()}{reason[1:]}. Addresses here start with '{self.prefix}1'.", text) from None

    @staticmethod
    def query_int(request: Request, name: str) -> int | None:
        text = request.query_params.get(name)
        if text is None or text == "":
            return None
        if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_AMOUNT:
            raise PageError(400, "Bad page parameter", f"'{name}' is a whole number, got '{_echo(text)}'.")
        return int(text)

    def find_block(self, ref: str, with_transactions: bool = True) -> BlockRecord:
        parsed: int | bytes | None = self.parse_height(ref)
        if parsed is None:
            parsed = self.parse_hash(ref)
        if parsed is None:
            raise PageError(404, "Not a block", "A block is named by its height or its 64-hex-digit hash.", ref)
        record = self.service.block(parsed, with_transactions=with_transactions)
        if record is None:
            what = f"at height {parsed}" if isinstance(parsed, int) else parsed.hex()
            raise PageError(404, "Block not found", f"This chain has no block {what}.", ref)
        return record

    def search(self, request: Request) -> Response:
        query = (request.query_params.get("q") or "").strip()
        try:
            return self.find(query)
        except PageError as error:
            error.from_search = True
            raise

    def find(self, query: str) -> Response:
        """A 303 redirect to the page of a height, block hash, transaction id or address."""
        if not query:
            raise PageError(404, "Nothing to search for",
                            "Type a block height, a block hash, a transaction id or an address.")
        if len(query) > MAX_QUERY_LENGTH:
            raise PageError(404, "Not found", "No height, hash, id or address is that long.", query)
        height = self.parse_height(query)
        if height is not None:
            if self.service.block(height, with_transactions=False) is None:
                head = self.service.node_info().height
                raise PageError(404, "Block not found", f"No block at height {height} yet: the head is at {head}.", query)
            return RedirectResponse(f"/explorer/block/{height}", status_code=303)
        digest = self.parse_hash(query)
        if digest is not None:
            if self.service.block(digest, with_transactions=False) is not None:
                return RedirectResponse(f"/explorer/block/{digest.hex()}", status_code=303)
            if self.service.transaction(digest) is not None:
                return RedirectResponse(f"/explorer/tx/{digest.hex()}", status_code=303)
            raise PageError(404, "Not found", "No block hash and no transaction id on this node matches.", query)
        public_key = _PUBLIC_KEY.fullmatch(query)
        if public_key is not None and crypto.is_valid_public_key(bytes.fromhex(public_key.group(1))):
            # A sender's public key (as a transaction shows it) names its account too.
            account = address_of(bytes.fromhex(public_key.group(1)))
            return RedirectResponse(f"/explorer/account/{self.address(account)}", status_code=303)
        if query.lower().startswith(self.prefix + "1"):
            account = self.parse_address(query)
            return RedirectResponse(f"/explorer/account/{self.address(account)}", status_code=303)
        try:
            _, data = bech32m_decode(query)
        except InvalidAddress:
            data = b""
        if len(data) == ADDRESS_SIZE:
            # The same key's account under another prefix (a wallet that showed dev1... on a
            # tst network): the 20 bytes name the account, the prefix only the network.
            return RedirectResponse(f"/explorer/account/{self.address(data)}", status_code=303)
        raise PageError(
            404, "Not found",
            f"Search takes a block height, a block hash, a transaction id or an address starting with '{self.prefix}1'.",
            query,
        )
