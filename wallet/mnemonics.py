"""BIP-39 mnemonics for the wallet: new phrases, checked phrases, and the key at an index.

Word lists and checksums come from the `mnemonic` package (the Trezor reference
implementation); the seed and BIP-32 derivation come from `ledger.hdkeys`, which the
node also uses for its dev accounts, so a phrase gives the same keys everywhere.
Accounts live at m/44'/1'/0'/0/i (coin type 1, see ledger.hdkeys.COIN_TYPE).
"""

from __future__ import annotations

import unicodedata

from mnemonic import Mnemonic

from ledger.crypto import PrivateKey
from ledger.hdkeys import HARDENED, ExtendedKey, account_path, mnemonic_to_seed
from wallet.errors import BadInput

WORDS_STRENGTH = {12: 128, 15: 160, 18: 192, 21: 224, 24: 256}
_ENGLISH = Mnemonic("english")
_MAX_PHRASE = 1000


def new_mnemonic(words: int = 24) -> str:
    if words not in WORDS_STRENGTH:
        raise BadInput(f"a mnemonic has 12, 15, 18, 21 or 24 words, not {words}", "bad_word_count")
    return _ENGLISH.generate(WORDS_STRENGTH[words])


def normalize_mnemonic(text: str) -> str:
    """The phrase as BIP-39 checks it: NFKD, lower case, single spaces.  BadInput unless valid."""
    if len(text) > _MAX_PHRASE:
        raise BadInput("the mnemonic is too long", "bad_mnemonic")
    words = unicodedata.normalize("NFKD", text).lower().split()
    if len(words) not in WORDS_STRENGTH:
        raise BadInput(
            f"a mnemonic has 12, 15, 18, 21 or 24 words; this one has {len(words)}", "bad_mnemonic"
        )
    unknown = [w for w in words if w not in _ENGLISH.wordlist]
    if unknown:
        # Say where, never what: the words of a secret phrase do not belong in a terminal log.
        positions = ", ".join(str(i + 1) for i, w in enumerate(words) if w in unknown)
        raise BadInput(f"the mnemonic has words not in the BIP-39 English list (word {positions})", "bad_mnemonic")
    phrase = " ".join(words)
    if not _ENGLISH.check(phrase):
        raise BadInput("the mnemonic's checksum does not match: a word is wrong or out of order", "bad_mnemonic")
    return phrase


def check_index(index: int) -> int:
    if not 0 <= index < HARDENED:
        raise BadInput(f"the account index is from 0 to {HARDENED - 1}, not {index}", "bad_index")
    return index


def key_from_mnemonic(phrase: str, index: int, passphrase: str = "") -> tuple[PrivateKey, str]:
    """(key, derivation path) of account `index` of a valid phrase."""
    path = account_path(check_index(index))
    seed = mnemonic_to_seed(normalize_mnemonic(phrase), passphrase)
    return ExtendedKey.from_seed(seed).derive(path).private_key(), path
