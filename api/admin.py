"""The node's admin endpoint: faults laid on its peer links on purpose (the fault lab), and
Raft's leadership transfer and membership changes.

Only from loopback, and only with the token the node writes to `<data_dir>/admin.token`
when it starts (bitcoind's cookie file): `Authorization: Bearer <token>`.  Anything
else is answered 401 (or 403 from another host) and changes nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from api.problems import ProblemException, problem, problem_of
from api.schemas import AddressText, InvalidInput, _Response, parse_address
from ledger import crypto
from ledger.address import encode_address

ADMIN_TAG = "admin"


class LinkFaultsOut(_Response):
    blocked: list[str] = Field(description="node ids this node will not talk to (a partition)")
    delay_ms: int = Field(description="added to every outgoing peer message")
    loss_percent: float = Field(description="share of outgoing peer messages dropped at random")


class LinkFaultsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # the handler refuses unknown fields: the schema says so

    blocked: list[Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]] = Field(
        default_factory=list, description="node ids (40 lowercase hex digits) to cut off")
    delay_ms: int = Field(default=0, ge=0, le=60_000)
    loss_percent: float = Field(default=0.0, ge=0, le=100)


class LeadershipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: AddressText = Field(description="the member to lead next: its bech32m address")


class LeadershipOut(_Response):
    from_: str = Field(alias="from", description="the leader asked to step aside")
    to: str = Field(description="the member asked to take over")
    term: int = Field(description="the term now; the new leader's is higher")


class AddMemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid", title="AddMember")
    add: Annotated[str, Field(pattern="^0[23][0-9a-fA-F]{64}$",
                              description="the node key to add (GET /v1/node on that node says it): it joins as a "
                                          "learner and becomes a voter once it has caught up")]


class RemoveMemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid", title="RemoveMember")
    remove: AddressText = Field(description="the address of the member to remove")


# One change a request: the body is one of the two.
MEMBERS_BODY = {"oneOf": [AddMemberIn.model_json_schema(), RemoveMemberIn.model_json_schema()]}


class MembersOut(_Response):
    change: str = Field(description="add learner, remove voter or remove learner")
    member: str = Field(description="the member added or removed")
    term: int = Field(description="the leader's term")


def _object(body: Any, fields: set[str]) -> dict:
    """A request body that is a JSON object with no field beyond `fields`."""
    if not isinstance(body, dict):
        raise ProblemException(problem("wrong_type", "the body is a JSON object"))
    unknown = sorted(set(body) - fields)
    if unknown:
        raise ProblemException(problem("unknown_field", f"unknown field {unknown[0]!r}", unknown[0]))
    return body


def _node_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text) if len(text) == 2 * crypto.PUBLIC_KEY_SIZE else b""
    except ValueError:
        key = b""
    if not crypto.is_valid_public_key(key):
        raise InvalidInput("invalid_value", "add is a node key: 66 hex digits of a compressed secp256k1 public key "
                                            "(GET /v1/node on that node says its node_key)", "add")
    return key


MEMBER_REASONS = ("already_member", "not_a_member")  # about the body's field, not the node's state


class AdminRefused(Exception):
    """A leadership transfer or membership change the node will not start: `reason` is the
    problem code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _from_loopback(request: Request) -> bool:
    host = request.client.host if request.client is not None else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_admin_routes(app: FastAPI, token: str | None, json_body: Callable[[Request], Awaitable[Any]]) -> None:
    """`token` None: the node runs without an admin endpoint (every call answers 401)."""

    def authorize(request: Request) -> None:
        # A request a proxy forwarded comes from elsewhere, whatever address the proxy has.
        forwarded = any(name in request.headers for name in ("forwarded", "x-forwarded-for", "x-real-ip"))
        if forwarded or not _from_loopback(request):
            raise ProblemException(problem("forbidden", "the admin endpoint answers on loopback only"))
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Bytes, not str: compare_digest refuses non-ASCII text, and a header may hold any latin-1.
        if token is None or scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("latin-1"), token.encode("ascii")):
            raise ProblemException(
                problem("unauthorized", "send Authorization: Bearer <the token in the node's data folder, admin.token>"),
                {"WWW-Authenticate": "Bearer"},
            )

    def service_faults(request: Request):
        service = request.app.state.service
        try:
            return service, service.link_faults()
        except LookupError as exc:
            raise ProblemException(problem("no_peer_network", str(exc))) from None

    responses = {401: {"description": "no or wrong token"}, 403: {"description": "not from loopback"}}

    @app.get("/v1/admin/faults", response_model=LinkFaultsOut, tags=[ADMIN_TAG], responses=responses,
             summary="The faults laid on this node's peer links")
    async def get_faults(request: Request) -> Any:
        authorize(request)
        return service_faults(request)[1]

    @app.put("/v1/admin/faults", response_model=LinkFaultsOut, tags=[ADMIN_TAG], responses=responses,
             summary="Partition, delay or drop this node's peer messages",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": LinkFaultsIn.model_json_schema()}}}})
    async def put_faults(request: Request) -> Any:
        authorize(request)
        service, _ = service_faults(request)
        body = _object(await json_body(request), {"blocked", "delay_ms", "loss_percent"})
        blocked = body.get("blocked", [])
        if not isinstance(blocked, list) or not all(isinstance(node_id, str) for node_id in blocked):
            raise ProblemException(problem("wrong_type", "blocked is a list of node ids", "blocked"))
        try:
            return service.set_link_faults(frozenset(blocked), body.get("delay_ms", 0), body.get("loss_percent", 0.0))
        except ValueError as exc:  # the node's own check of each setting names the field
            raise ProblemException(problem("invalid_value", str(exc), getattr(exc, "field", None))) from None

    @app.post("/v1/admin/leadership", response_model=LeadershipOut, status_code=202, tags=[ADMIN_TAG],
              responses={**responses, 409: {"description": "not the leader, or an engine without one"},
                         422: {"description": "not a member"}},
              summary="Hand this node's lead to another member (Raft)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": LeadershipIn.model_json_schema()}}}})
    async def transfer_leadership(request: Request) -> Any:  # async: the engine's events belong to the loop
        authorize(request)
        service = request.app.state.service
        body = _object(await json_body(request), {"to"})
        if not isinstance(body.get("to"), str):
            raise ProblemException(problem("wrong_type", "to is the address of a member", "to"))
        try:
            to = parse_address(body["to"], service.genesis.address_prefix, "to")
        except InvalidInput as exc:
            raise ProblemException(problem_of(exc)) from None
        try:
            moved = service.transfer_leadership(to)
        except AdminRefused as exc:
            raise ProblemException(problem(exc.reason, str(exc), "to" if exc.reason == "not_a_member" else None)) from None
        prefix = service.genesis.address_prefix
        return {"from": encode_address(prefix, bytes.fromhex(moved["from"])), "to": encode_address(prefix, to),
                "term": moved["term"]}

    @app.post("/v1/admin/members", response_model=MembersOut, status_code=202, tags=[ADMIN_TAG],
              responses={**responses, 409: {"description": "not the leader, a change under way, or an engine "
                                                           "without a membership to change"},
                         422: {"description": "already a member, not a member, or not a key"}},
              summary="Add or remove one member (Raft)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": MEMBERS_BODY}}}})
    async def change_members(request: Request) -> Any:  # async: the engine's events belong to the loop
        authorize(request)
        service = request.app.state.service
        body = _object(await json_body(request), {"add", "remove"})
        if len(body) != 1:
            raise ProblemException(problem("missing_field", "name one change: add (a node key) or remove (an address)"))
        field, value = next(iter(body.items()))
        if not isinstance(value, str):
            raise ProblemException(problem("wrong_type", f"{field} is a string", field))
        prefix = service.genesis.address_prefix
        key = address = None
        try:
            if field == "add":
                key = _node_key(value)
            else:
                address = parse_address(value, prefix, "remove")
        except InvalidInput as exc:
            raise ProblemException(problem_of(exc)) from None
        try:
            changed = service.change_membership(key, address)
        except AdminRefused as exc:
            raise ProblemException(problem(exc.reason, str(exc), field if exc.reason in MEMBER_REASONS else None)) from None
        return {"change": changed["change"], "member": encode_address(prefix, bytes.fromhex(changed["member"])),
                "term": changed["term"]}

    @app.delete("/v1/admin/faults", response_model=LinkFaultsOut, tags=[ADMIN_TAG], responses=responses,
                summary="Heal every link")
    async def heal(request: Request) -> Any:  # async: the network and events hub belong to the loop
        authorize(request)
        service, _ = service_faults(request)
        return service.set_link_faults(frozenset(), 0, 0.0)
