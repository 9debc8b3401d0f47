"""Secrets and confirmations from a person: passwords, mnemonics, private keys.

A secret never comes from a command-line flag's value (it would sit in the shell
history and in `ps`): it comes from a file named by a flag, from an environment
variable meant for scripts, or from a prompt that does not echo.  Without a terminal
to prompt on, the wallet says which flag or variable to use instead of hanging.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from wallet.errors import BadInput, NotFound, WalletError

PASSWORD_ENV = "LEDGER_WALLET_PASSWORD"
NEW_PASSWORD_ENV = "LEDGER_WALLET_NEW_PASSWORD"
SOURCE_PASSWORD_ENV = "LEDGER_WALLET_SOURCE_PASSWORD"
_MAX_SECRET_FILE = 64 * 1024


class Aborted(WalletError):
    def __init__(self, message: str = "aborted: nothing was changed"):
        super().__init__(message, "aborted")


def interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def read_secret_file(path: Path, what: str, whole: bool = False) -> str:
    """The first line of `path` (all of it when `whole`), or of stdin for '-'."""
    if str(path) == "-":
        text = sys.stdin.read(_MAX_SECRET_FILE + 1)
    else:
        try:
            if path.stat().st_size > _MAX_SECRET_FILE:
                raise BadInput(f"the {what} file {path} is too large", "bad_secret_file")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotFound(f"no {what} file {path}", "file_not_found") from None
        except IsADirectoryError:
            raise BadInput(f"the {what} file {path} is a folder", "bad_secret_file") from None
        except UnicodeDecodeError:
            raise BadInput(f"the {what} file {path} is not UTF-8 text", "bad_secret_file") from None
        except OSError as exc:
            raise BadInput(f"cannot read the {what} file {path}: {exc.strerror}", "bad_secret_file") from None
    if len(text) > _MAX_SECRET_FILE:
        raise BadInput(f"the {what} input is too large", "bad_secret_file")
    value = text.strip() if whole else (text.splitlines()[0] if text else "")
    if not value:
        raise BadInput(f"the {what} file {path} is empty", "empty_secret")
    return value


def _prompt_hidden(prompt: str) -> str:
    try:
        return getpass.getpass(prompt, stream=sys.stderr)
    except EOFError:
        raise Aborted() from None


def _no_terminal(what: str, flag: str, env: str | None) -> BadInput:
    alternatives = f"{flag}" + (f" or the environment variable {env}" if env else "")
    return BadInput(f"no {what} given and no terminal to ask on: use {alternatives}", "no_secret")


def secret(
    what: str, prompt: str, file: Path | None, flag: str, env: str | None = None, confirm: bool = False
) -> str:
    """A secret from `file`, else `env`, else a hidden prompt (asked twice when `confirm`)."""
    if file is not None:
        return read_secret_file(file, what)
    if env:
        value = os.environ.get(env)
        if value:
            return value
    if not interactive():
        raise _no_terminal(what, flag, env)
    value = _prompt_hidden(prompt)
    if not value:
        raise BadInput(f"the {what} is empty", "empty_secret")
    if confirm and _prompt_hidden("Repeat it: ") != value:
        raise BadInput(f"the two {what}s do not match", "secret_mismatch")
    return value


def password(target: str, file: Path | None, new: bool = False) -> str:
    """The password of a key: --password-file, $LEDGER_WALLET_PASSWORD, or a prompt."""
    prompt = f"New password for {target}: " if new else f"Password for {target}: "
    return secret("password", prompt, file, "--password-file", PASSWORD_ENV, confirm=new)


def ask_line(question: str) -> str:
    """One line from stdin after `question` on stderr (works piped, for scripted confirmations)."""
    sys.stderr.write(question)
    sys.stderr.flush()
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not interactive():
        sys.stderr.write("\n")  # a terminal echoes the Enter key; piped answers do not
    if not line:
        raise Aborted("aborted: no answer on stdin")
    return line.strip()


def confirm(question: str) -> bool:
    return ask_line(f"{question} [y/N] ").lower() in ("y", "yes")
