"""The wallet's errors and the exit code each one ends the command with.

Every failure the wallet expects is a WalletError: the entry point prints its
message as one line (and as a JSON document with --json) and exits with its code.
The codes are part of the interface, documented in docs/wallet.md and `wallet --help`.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1  # anything not listed below, and "no" to a confirmation
    USAGE = 2  # bad flags or bad input: amount, address, key name, file
    UNREACHABLE = 3  # no answer from the node
    REJECTED = 4  # the node refused (or dropped) the transaction, or it could not pay
    TIMEOUT = 5  # not final before --timeout
    KEYSTORE = 6  # wrong password, or a keystore file that is corrupt or was altered
    NOT_FOUND = 7  # no such key, transaction or file


EXIT_CODE_HELP = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "unexpected failure, or a question answered no (nothing changed)",
    ExitCode.USAGE: "usage error or bad input (amount, address, key name, file, chain id)",
    ExitCode.UNREACHABLE: "the node cannot be reached",
    ExitCode.REJECTED: "the node refused or dropped the transaction, or the balance does not cover it",
    ExitCode.TIMEOUT: "the transaction was not final before --timeout",
    ExitCode.KEYSTORE: "wrong password, or a keystore file that is corrupt or was altered",
    ExitCode.NOT_FOUND: "no such key, transaction or file",
}


class WalletError(Exception):
    """An expected failure: `reason` is a stable code for scripts, the message is for people."""

    code: ExitCode = ExitCode.FAILURE

    def __init__(
        self, message: str, reason: str = "failure", code: ExitCode | None = None, data: dict | None = None
    ):
        super().__init__(message)
        self.reason = reason
        # Extra members of the --json error document (e.g. the id of a transaction that timed out).
        self.data = data or {}
        if code is not None:
            self.code = code


class BadInput(WalletError):
    code = ExitCode.USAGE


class NotFound(WalletError):
    code = ExitCode.NOT_FOUND


class KeystoreError(WalletError):
    code = ExitCode.KEYSTORE


class WrongPassword(KeystoreError):
    def __init__(self, message: str):
        super().__init__(message, "wrong_password")


class CorruptKeystore(KeystoreError):
    def __init__(self, message: str):
        super().__init__(message, "corrupt_keystore")
