"""The keystore at rest: sealing round-trips, tampering and wrong passwords are told apart,
files are private and never half written; Web3 v3 files and BIP-39 phrases against their
published test vectors."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.address import address_of, encode_address
from ledger.crypto import PrivateKey
from ledger.hdkeys import ExtendedKey, account_path
from wallet import keystore as keystore_module
from wallet.errors import BadInput, CorruptKeystore, ExitCode, KeystoreError, WalletError, WrongPassword
from wallet.keystore import LIGHT_KDF, Keystore, describe, open_sealed, reseal, seal
from wallet.mnemonics import key_from_mnemonic, new_mnemonic, normalize_mnemonic
from wallet.web3_keystore import decrypt_web3_keystore, ethereum_address, keccak256

KEY = PrivateKey(bytes.fromhex("7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"))


def stored(tmp_path, name="alice", password="correct horse"):
    store = Keystore(tmp_path / "keystore")
    entry = store.add(KEY, name, password, "dev", LIGHT_KDF, path=None)
    return store, entry


# --- our keystore ------------------------------------------------------------------------------


def test_round_trip_gives_back_the_key(tmp_path):
    store, entry = stored(tmp_path)
    found = store.find("alice")
    assert found.account == address_of(KEY.public_key)
    assert found.stored_address == encode_address("dev", address_of(KEY.public_key))
    assert open_sealed(found, "correct horse").secret == KEY.secret
    # found by address too, under any network prefix
    assert store.find(encode_address("other", address_of(KEY.public_key))).name == "alice"


def test_file_is_0600_in_a_0700_folder_and_holds_no_secret_in_clear(tmp_path):
    store, entry = stored(tmp_path)
    assert stat.S_IMODE(entry.file.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    text = entry.file.read_text()
    assert KEY.secret.hex() not in text
    assert json.loads(text)["address"].startswith("dev1")
    assert [p.name for p in store.folder.iterdir()] == ["alice.json"]  # no temp file left behind


def test_wrong_password_is_told_apart_from_tampering(tmp_path):
    store, entry = stored(tmp_path)
    with pytest.raises(WrongPassword) as caught:
        open_sealed(entry, "wrong horse")
    assert caught.value.code == ExitCode.KEYSTORE
    assert "wrong password" in str(caught.value)

    document = json.loads(entry.file.read_text())
    ciphertext = bytearray.fromhex(document["crypto"]["ciphertext"])
    ciphertext[5] ^= 0x01
    document["crypto"]["ciphertext"] = ciphertext.hex()
    with pytest.raises(CorruptKeystore, match="altered"):
        open_sealed(describe(document, entry.file), "correct horse")


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "mallory"), ("created", "2001-01-01T00:00:00Z"), ("path", "m/44'/1'/0'/0/7")],
)
def test_clear_fields_are_bound_to_the_ciphertext(tmp_path, field, value):
    _, entry = stored(tmp_path)
    document = json.loads(entry.file.read_text())
    document[field] = value
    with pytest.raises(CorruptKeystore, match="altered"):
        open_sealed(describe(document, entry.file), "correct horse")


def test_an_address_that_is_not_the_keys_is_refused_without_a_password(tmp_path):
    _, entry = stored(tmp_path)
    document = json.loads(entry.file.read_text())
    other = PrivateKey.generate()
    document["address"] = encode_address("dev", address_of(other.public_key))
    with pytest.raises(CorruptKeystore, match="does not belong"):
        describe(document, entry.file)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_byte_never_yields_another_key(tmp_path, data):
    """Any one-byte change either fails loudly or (a hex digit's case, say) changes nothing."""
    store = Keystore(Path(tempfile.mkdtemp(dir=tmp_path)) / "keystore")
    entry = store.add(KEY, "alice", "pw", "dev", LIGHT_KDF)
    raw = bytearray(entry.file.read_bytes())
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    entry.file.write_bytes(bytes(raw))
    try:
        key = open_sealed(store.read(entry.file), "pw")
    except (KeystoreError, BadInput):
        return
    assert key.secret == KEY.secret


def test_reseal_changes_password_and_keeps_the_clear_fields(tmp_path):
    store, entry = stored(tmp_path)
    updated = store.replace(entry, reseal(entry, KEY, "new password", LIGHT_KDF))
    assert (updated.name, updated.stored_address, updated.created) == (entry.name, entry.stored_address, entry.created)
    assert open_sealed(store.find("alice"), "new password").secret == KEY.secret
    with pytest.raises(WrongPassword):
        open_sealed(store.find("alice"), "correct horse")
    assert stat.S_IMODE(updated.file.stat().st_mode) == 0o600


def test_names_and_keys_are_never_stored_twice(tmp_path):
    store, entry = stored(tmp_path)
    before = entry.file.read_bytes()
    with pytest.raises(BadInput, match="already exists"):
        store.add(PrivateKey.generate(), "alice", "pw", "dev", LIGHT_KDF)
    with pytest.raises(BadInput, match="already stored as 'alice'"):
        store.add(KEY, "bob", "pw", "dev", LIGHT_KDF)
    assert entry.file.read_bytes() == before
    assert sorted(p.name for p in store.folder.iterdir()) == ["alice.json"]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "x.json", "a" * 65, "名前"])
def test_bad_key_names_are_refused(tmp_path, name):
    with pytest.raises(BadInput):
        Keystore(tmp_path).add(KEY, name, "pw", "dev", LIGHT_KDF)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_file_at_all(tmp_path, monkeypatch):
    store = Keystore(tmp_path / "keystore")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keystore_module.os, "fsync", disk_full)
    with pytest.raises(WalletError, match="No space left"):
        store.add(KEY, "alice", "pw", "dev", LIGHT_KDF)
    assert list(store.folder.iterdir()) == []


def test_an_empty_password_is_refused():
    with pytest.raises(BadInput, match="empty"):
        seal(KEY, "alice", "", "dev", LIGHT_KDF)


def test_hostile_kdf_parameters_are_refused_before_any_work(tmp_path):
    _, entry = stored(tmp_path)
    document = json.loads(entry.file.read_text())
    document["crypto"]["kdfparams"]["n"] = 2**30
    with pytest.raises(CorruptKeystore, match="'n'"):
        open_sealed(describe(document, entry.file), "correct horse")
    document["crypto"]["kdfparams"]["n"] = 3 * 2**10
    with pytest.raises(CorruptKeystore, match="power of two"):
        open_sealed(describe(document, entry.file), "correct horse")


def test_unreadable_files_are_reported_not_fatal(tmp_path):
    store, _ = stored(tmp_path)
    (store.folder / "junk.json").write_text("{not json")
    entries, problems = store.scan()
    assert [e.name for e in entries] == ["alice"]
    assert problems and "not valid JSON" in problems[0][1]
    with pytest.raises(CorruptKeystore):
        store.find("junk")


# --- Web3 Secret Storage v3: the definition's published test vectors (password "testpassword") -----

WEB3_SECRET = "7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
WEB3_ETH_ADDRESS = "008aeeda4d805471df9b2a5b0f38a0c3bcba786b"
WEB3_PBKDF2 = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "6087dab2f9fdbbfaddc31a909735c1e6"},
        "ciphertext": "5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46",
        "kdf": "pbkdf2",
        "kdfparams": {
            "c": 262144,
            "dklen": 32,
            "prf": "hmac-sha256",
            "salt": "ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd",
        },
        "mac": "517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}
# The original wiki's scrypt vector (n = 2^18, r = 1, p = 8).
WEB3_SCRYPT = {
    "crypto": {
        "cipher": "aes-128-ctr",
        "cipherparams": {"iv": "83dbcc02d8ccb40e466191a123791e0e"},
        "ciphertext": "d172bf743a674da9cdad04534d56926ef8358534d458fffccd4e6ad2fbde479c",
        "kdf": "scrypt",
        "kdfparams": {
            "dklen": 32,
            "n": 262144,
            "r": 1,
            "p": 8,
            "salt": "ab0c7876052600dd703518d6fc3fe8984592145b591fc8fb5c6d43190334ba19",
        },
        "mac": "2103ac29920d71da29f15d75b4a16dbe95cfd7ff8faea1056c33131d846e3097",
    },
    "id": "3198bc9c-6672-5ab3-d995-4942343ae5b6",
    "version": 3,
}


def test_keccak_is_ethereums_not_nists():
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"").hex() != hashlib.sha3_256(b"").hexdigest()


def test_web3_pbkdf2_vector():
    key = decrypt_web3_keystore(WEB3_PBKDF2, "testpassword")
    assert key.secret.hex() == WEB3_SECRET
    assert ethereum_address(key).hex() == WEB3_ETH_ADDRESS


def test_web3_scrypt_vector():
    assert decrypt_web3_keystore(WEB3_SCRYPT, "testpassword").secret.hex() == WEB3_SECRET


def test_web3_geths_capitalised_crypto_and_its_address_field():
    document = {k: v for k, v in WEB3_PBKDF2.items() if k != "crypto"}
    document["Crypto"] = WEB3_PBKDF2["crypto"]
    document["address"] = WEB3_ETH_ADDRESS
    assert decrypt_web3_keystore(document, "testpassword").secret.hex() == WEB3_SECRET
    document["address"] = "11" * 20
    with pytest.raises(CorruptKeystore, match="not the address of the key"):
        decrypt_web3_keystore(document, "testpassword")


def test_web3_wrong_password_and_damaged_mac():
    with pytest.raises(WrongPassword):
        decrypt_web3_keystore(WEB3_PBKDF2, "testpassworD")
    damaged = json.loads(json.dumps(WEB3_PBKDF2))
    damaged["crypto"]["ciphertext"] = "00" + damaged["crypto"]["ciphertext"][2:]
    with pytest.raises(WrongPassword, match="MAC"):
        decrypt_web3_keystore(damaged, "testpassword")


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("crypto", "cipher"), "aes-128-cbc", "unsupported cipher"),
        (("crypto", "kdf"), "argon2", "unsupported kdf"),
        (("crypto", "kdfparams", "c"), 10**9, "out of bounds"),
        (("crypto", "kdfparams", "prf"), "hmac-sha512", "prf"),
        (("crypto", "cipherparams", "iv"), "zz", "not hex"),
        (("crypto", "kdfparams", "dklen"), 16, "dklen"),
    ],
)
def test_web3_malformed_files_are_refused(path, value, match):
    document = json.loads(json.dumps(WEB3_PBKDF2))
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(CorruptKeystore, match=match):
        decrypt_web3_keystore(document, "testpassword")


def test_web3_hostile_scrypt_cost_is_refused_before_any_work():
    document = json.loads(json.dumps(WEB3_SCRYPT))
    document["crypto"]["kdfparams"].update(n=2**20, r=16)
    with pytest.raises(CorruptKeystore, match="1 GiB"):
        decrypt_web3_keystore(document, "testpassword")


def test_not_a_v3_file():
    with pytest.raises(BadInput, match="version 3"):
        decrypt_web3_keystore({"version": 1, "crypto": {}}, "x")


# --- BIP-39: the reference (Trezor) vectors, passphrase "TREZOR" ---------------------------------

# mnemonic, seed, master xprv (BIP-32 serialisation of the seed's master key)
BIP39_VECTORS = [
    (
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
        "xprv9s21ZrQH143K3h3fDYiay8mocZ3afhfULfb5GX8kCBdno77K4HiA15Tg23wpbeF1pLfs1c5SPmYHrEpTuuRhxMwvKDwqdKiGJS9XFKzUsAF",
    ),
    (
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
        None,
    ),
    (
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage above",
        "d71de856f81a8acc65e6fc851a38d4d7ec216fd0796d0a6827a3ad6ed5511a30fa280f12eb2e47ed2ac03b5c462a0358d18d69fe4f985ec81778c1b370b652a8",
        None,
    ),
]

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def xprv_master(text: str) -> ExtendedKey:
    number = 0
    for char in text:
        number = number * 58 + _BASE58.index(char)
    raw = number.to_bytes(82, "big")
    payload, checksum = raw[:-4], raw[-4:]
    assert hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == checksum
    return ExtendedKey(payload[46:78], payload[13:45])


@pytest.mark.parametrize(("phrase", "seed_hex", "xprv"), BIP39_VECTORS)
def test_bip39_vectors_give_the_published_seed_keys(phrase, seed_hex, xprv):
    seed = bytes.fromhex(seed_hex)
    master = xprv_master(xprv) if xprv else ExtendedKey.from_seed(seed)
    # the published seed and the published master key agree with each other...
    digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
    assert (master.secret, master.chain_code) == (digest[:32], digest[32:])
    # ...and the wallet's phrase -> key lands on the keys under that master.
    for index in (0, 1, 7):
        key, path = key_from_mnemonic(phrase, index, "TREZOR")
        assert path == account_path(index) == f"m/44'/1'/0'/0/{index}"
        assert key.secret == master.derive(path).secret


def test_phrases_are_normalised_and_checked():
    phrase = BIP39_VECTORS[0][0]
    assert normalize_mnemonic("  " + phrase.upper().replace(" ", "   ") + "\n") == phrase
    with pytest.raises(BadInput, match="checksum"):
        normalize_mnemonic("abandon " * 11 + "abandon")
    with pytest.raises(BadInput, match="11"):
        normalize_mnemonic("abandon " * 11)
    with pytest.raises(BadInput) as caught:
        normalize_mnemonic("abandon " * 11 + "bitcoinz")
    assert "word 12" in str(caught.value) and "bitcoinz" not in str(caught.value)


@pytest.mark.parametrize("words", [12, 24])
def test_new_mnemonics_are_valid_and_fresh(words):
    first, second = new_mnemonic(words), new_mnemonic(words)
    assert len(first.split()) == words
    assert normalize_mnemonic(first) == first
    assert first != second


def test_new_mnemonic_refuses_odd_lengths():
    with pytest.raises(BadInput):
        new_mnemonic(13)


def test_the_default_keystore_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LEDGER_KEYSTORE", str(tmp_path / "k"))
    assert keystore_module.default_keystore_dir() == tmp_path / "k"
    monkeypatch.delenv("LEDGER_KEYSTORE")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert keystore_module.default_keystore_dir() == tmp_path / "data" / "ledger" / "keystore"
    assert os.environ.get("LEDGER_KEYSTORE") is None
