"""BIP-32 derivation against the published vectors, BIP-39 seeds, and the dev keys."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnemonic import Mnemonic

from ledger.crypto import PrivateKey
from ledger.hdkeys import (
    DEV_MNEMONIC,
    HARDENED,
    ExtendedKey,
    account_key,
    account_path,
    dev_keys,
    mnemonic_to_seed,
)

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58check_decode(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + BASE58_ALPHABET.index(char)
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    raw = b"\x00" * (len(text) - len(text.lstrip("1"))) + raw
    payload, checksum = raw[:-4], raw[-4:]
    assert hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] == checksum, "bad base58 checksum"
    return payload


def parse_extended(text: str) -> tuple[bytes, bytes]:
    """(chain code, key data) of a serialized xprv/xpub: 4 version, 1 depth, 4 fingerprint, 4 index, 32, 33."""
    payload = base58check_decode(text)
    assert len(payload) == 78
    return payload[13:45], payload[45:78]


# BIP-32 "Test Vectors": (seed hex, [(path, ext pub, ext prv), ...]).
BIP32_VECTORS = [
    (
        "000102030405060708090a0b0c0d0e0f",
        [
            (
                "m",
                "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFjqJoCu1Rupje8YtGqsefD265TMg7usUDFdp6W1EGMcet8",
                "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi",
            ),
            (
                "m/0H",
                "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw",
                "xprv9uHRZZhk6KAJC1avXpDAp4MDc3sQKNxDiPvvkX8Br5ngLNv1TxvUxt4cV1rGL5hj6KCesnDYUhd7oWgT11eZG7XnxHrnYeSvkzY7d2bhkJ7",
            ),
            (
                "m/0H/1",
                "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ",
                "xprv9wTYmMFdV23N2TdNG573QoEsfRrWKQgWeibmLntzniatZvR9BmLnvSxqu53Kw1UmYPxLgboyZQaXwTCg8MSY3H2EU4pWcQDnRnrVA1xe8fs",
            ),
            (
                "m/0H/1/2H",
                "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5",
                "xprv9z4pot5VBttmtdRTWfWQmoH1taj2axGVzFqSb8C9xaxKymcFzXBDptWmT7FwuEzG3ryjH4ktypQSAewRiNMjANTtpgP4mLTj34bhnZX7UiM",
            ),
            (
                "m/0H/1/2H/2",
                "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
                "xprvA2JDeKCSNNZky6uBCviVfJSKyQ1mDYahRjijr5idH2WwLsEd4Hsb2Tyh8RfQMuPh7f7RtyzTtdrbdqqsunu5Mm3wDvUAKRHSC34sJ7in334",
            ),
            (
                "m/0H/1/2H/2/1000000000",
                "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy",
                "xprvA41z7zogVVwxVSgdKUHDy1SKmdb533PjDz7J6N6mV6uS3ze1ai8FHa8kmHScGpWmj4WggLyQjgPie1rFSruoUihUZREPSL39UNdE3BBDu76",
            ),
        ],
    ),
    (
        "fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a29f9c999693908d8a8784817e7b7875726f6c696663605d5a5754514e4b484542",
        [
            (
                "m",
                "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB",
                "xprv9s21ZrQH143K31xYSDQpPDxsXRTUcvj2iNHm5NUtrGiGG5e2DtALGdso3pGz6ssrdK4PFmM8NSpSBHNqPqm55Qn3LqFtT2emdEXVYsCzC2U",
            ),
            (
                "m/0",
                "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH",
                "xprv9vHkqa6EV4sPZHYqZznhT2NPtPCjKuDKGY38FBWLvgaDx45zo9WQRUT3dKYnjwih2yJD9mkrocEZXo1ex8G81dwSM1fwqWpWkeS3v86pgKt",
            ),
            (
                "m/0/2147483647H",
                "xpub6ASAVgeehLbnwdqV6UKMHVzgqAG8Gr6riv3Fxxpj8ksbH9ebxaEyBLZ85ySDhKiLDBrQSARLq1uNRts8RuJiHjaDMBU4Zn9h8LZNnBC5y4a",
                "xprv9wSp6B7kry3Vj9m1zSnLvN3xH8RdsPP1Mh7fAaR7aRLcQMKTR2vidYEeEg2mUCTAwCd6vnxVrcjfy2kRgVsFawNzmjuHc2YmYRmagcEPdU9",
            ),
            (
                "m/0/2147483647H/1",
                "xpub6DF8uhdarytz3FWdA8TvFSvvAh8dP3283MY7p2V4SeE2wyWmG5mg5EwVvmdMVCQcoNJxGoWaU9DCWh89LojfZ537wTfunKau47EL2dhHKon",
                "xprv9zFnWC6h2cLgpmSA46vutJzBcfJ8yaJGg8cX1e5StJh45BBciYTRXSd25UEPVuesF9yog62tGAQtHjXajPPdbRCHuWS6T8XA2ECKADdw4Ef",
            ),
            (
                "m/0/2147483647H/1/2147483646H",
                "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL",
                "xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMpCqE2VbFWc",
            ),
            (
                "m/0/2147483647H/1/2147483646H/2",
                "xpub6FnCn6nSzZAw5Tw7cgR9bi15UV96gLZhjDstkXXxvCLsUXBGXPdSnLFbdpq8p9HmGsApME5hQTZ3emM2rnY5agb9rXpVGyy3bdW6EEgAtqt",
                "xprvA2nrNbFZABcdryreWet9Ea4LvTJcGsqrMzxHx98MMrotbir7yrKCEXw7nadnHM8Dq38EGfSh6dqA9QWTyefMLEcBYJUuekgW4BYPJcr9E7j",
            ),
        ],
    ),
    (
        # Retention of leading zeros in derived private keys.
        "4b381541583be4423346c643850da4b320e46a87ae3d2a4e6da11eba819cd4acba45d239319ac14f863b8d5ab5a0d0c64d2e8a1e7d1457df2e5a3c51c73235be",
        [
            (
                "m",
                "xpub661MyMwAqRbcEZVB4dScxMAdx6d4nFc9nvyvH3v4gJL378CSRZiYmhRoP7mBy6gSPSCYk6SzXPTf3ND1cZAceL7SfJ1Z3GC8vBgp2epUt13",
                "xprv9s21ZrQH143K25QhxbucbDDuQ4naNntJRi4KUfWT7xo4EKsHt2QJDu7KXp1A3u7Bi1j8ph3EGsZ9Xvz9dGuVrtHHs7pXeTzjuxBrCmmhgC6",
            ),
            (
                "m/0H",
                "xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNLf9fq9MYo6oDaPPLPxSb7gwQN3ih19Zm4Y",
                "xprv9uPDJpEQgRQfDcW7BkF7eTya6RPxXeJCqCJGHuCJ4GiRVLzkTXBAJMu2qaMWPrS7AANYqdq6vcBcBUdJCVVFceUvJFjaPdGZ2y9WACViL4L",
            ),
        ],
    ),
]

BIP32_CASES = [
    pytest.param(seed, path, xpub, xprv, id=f"vector{number}:{path}")
    for number, (seed, chain) in enumerate(BIP32_VECTORS, start=1)
    for path, xpub, xprv in chain
]


@pytest.mark.parametrize(("seed_hex", "path", "xpub", "xprv"), BIP32_CASES)
def test_bip32_published_vectors(seed_hex, path, xpub, xprv):
    key = ExtendedKey.from_seed(bytes.fromhex(seed_hex)).derive(path)
    chain_code, private_data = parse_extended(xprv)
    public_chain_code, public_key = parse_extended(xpub)
    assert private_data[0] == 0
    assert key.secret == private_data[1:]
    assert key.chain_code == chain_code == public_chain_code
    assert key.public_key() == public_key
    assert key.private_key().public_key == public_key


def test_vector_three_really_has_a_leading_zero():
    # The point of vector 3: the master key starts with a zero byte, which must be kept
    # (32 bytes) when it is hashed to derive the hardened child m/0H.
    seed, chain = BIP32_VECTORS[2]
    _, private_data = parse_extended(chain[0][2])
    assert private_data[1] == 0
    master = ExtendedKey.from_seed(bytes.fromhex(seed))
    assert len(master.secret) == 32 and master.secret[0] == 0


def test_derive_step_by_step_equals_derive_by_path():
    root = ExtendedKey.from_seed(bytes.fromhex(BIP32_VECTORS[0][0]))
    by_path = root.derive("m/0H/1/2H")
    step = root.child(0 + HARDENED).child(1).child(2 + HARDENED)
    assert (step.secret, step.chain_code) == (by_path.secret, by_path.chain_code)


@pytest.mark.parametrize("spelling", ["m/0'/1", "m/0h/1", "m/0H/1"])
def test_hardened_spellings_agree(spelling):
    root = ExtendedKey.from_seed(bytes(16))
    assert root.derive(spelling).secret == root.child(HARDENED).child(1).secret


def test_hardened_and_normal_children_differ():
    root = ExtendedKey.from_seed(bytes(16))
    assert root.derive("m/0").secret != root.derive("m/0'").secret


@pytest.mark.parametrize("path", ["", "0/1", "M/0", "m/", "m//1", "m/x", "m/-1", "m/2147483648", "m/1/2147483648'", "m/0'x"])
def test_bad_paths_are_refused(path):
    with pytest.raises(ValueError):
        ExtendedKey.from_seed(bytes(16)).derive(path)


# --- BIP-39 seeds ---------------------------------------------------------------------------

# From trezor/python-mnemonic vectors.json ("english", passphrase "TREZOR"): mnemonic, seed.
TREZOR_VECTORS = [
    (
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about",
        "c55257c360c07c72029aebc1b53c05ed0362ada38ead3e3e9efa3708e53495531f09a6987599d18264c1e1c92f2cf141630c7a3c4ab7c81b2f001698e7463b04",
    ),
    (
        "legal winner thank year wave sausage worth useful legal winner thank yellow",
        "2e8905819b8723fe2c1d161860e5ee1830318dbf49a83bd451cfb8440c28bd6fa457fe1296106559a3c80937a1c1069be3a3a5bd381ee6260e8d9739fce1f607",
    ),
    (
        "zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo zoo wrong",
        "ac27495480225222079d7be181583751e86f571027b0497b5b5d11218e0a8a13332572917f0f8e5a589620c6f15b11c61dee327651a14c34e18231052e48c069",
    ),
    (
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic avoid letter always",
        "107d7c02a5aa6f38c58083ff74f04c607c2d2c0ecc55501dadd72d025b751bc27fe913ffb796f841c49b1d33b610cf0e91d3aa239027f5e99fe4ce9e5088cd65",
    ),
    (
        "hamster diagram private dutch cause delay private meat slide toddler razor book happy fancy gospel tennis maple dilemma loan word shrug inflict delay length",
        "64c87cde7e12ecf6704ab95bb1408bef047c22db4cc7491c4271d170a1b213d20b385bc1588d9c7b38f1b39d415665b8a9030c9ec653d75e65f847d8fc1fc440",
    ),
]


@pytest.mark.parametrize(("mnemonic", "seed_hex"), TREZOR_VECTORS, ids=[m.split()[0] + str(len(m.split())) for m, _ in TREZOR_VECTORS])
def test_bip39_trezor_vectors(mnemonic, seed_hex):
    assert mnemonic_to_seed(mnemonic, "TREZOR").hex() == seed_hex


def test_bip39_passphrase_changes_the_seed():
    mnemonic = TREZOR_VECTORS[0][0]
    assert mnemonic_to_seed(mnemonic) != mnemonic_to_seed(mnemonic, "TREZOR")


def test_bip39_extra_whitespace_is_normalized():
    mnemonic, seed_hex = TREZOR_VECTORS[1]
    assert mnemonic_to_seed("  " + mnemonic.replace(" ", "   ") + "\n", "TREZOR").hex() == seed_hex


def test_bip39_passphrase_is_nfkd_normalized():
    composed = "caf\u00e9"  # é as one code point
    decomposed = "cafe\u0301"  # e + combining acute accent
    mnemonic = TREZOR_VECTORS[0][0]
    assert mnemonic_to_seed(mnemonic, composed) == mnemonic_to_seed(mnemonic, decomposed)


@settings(max_examples=15, deadline=None)
@given(entropy=st.sampled_from([16, 20, 24, 28, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
       passphrase=st.text(max_size=12))
def test_bip39_seed_and_master_key_agree_with_the_mnemonic_package(entropy, passphrase):
    reference = Mnemonic("english")
    words = reference.to_mnemonic(entropy)
    seed = mnemonic_to_seed(words, passphrase)
    assert seed == reference.to_seed(words, passphrase)
    chain_code, private_data = parse_extended(reference.to_hd_master_key(seed))
    master = ExtendedKey.from_seed(seed)
    assert (master.chain_code, master.secret) == (chain_code, private_data[1:])


# --- accounts and dev keys ------------------------------------------------------------------

# Computed once from DEV_MNEMONIC at m/44'/1'/0'/0/0 and pinned: every dev network funds this key,
# so a change here silently moves the dev funds of every user.
FIRST_DEV_PUBLIC_KEY = "03244b42a9df73401473dff8ec9c7f85a080952c342494214d99a5ab13d6a71864"


def test_account_path_layout():
    assert account_path(0) == "m/44'/1'/0'/0/0"
    assert account_path(17) == "m/44'/1'/0'/0/17"


def test_dev_mnemonic_is_a_valid_bip39_phrase():
    assert Mnemonic("english").check(DEV_MNEMONIC)


def test_first_dev_key_is_stable():
    first = dev_keys(1)[0]
    assert first.public_key.hex() == FIRST_DEV_PUBLIC_KEY
    via_path = ExtendedKey.from_seed(mnemonic_to_seed(DEV_MNEMONIC)).derive(account_path(0)).private_key()
    assert via_path.secret == first.secret
    assert account_key(DEV_MNEMONIC, 0).secret == first.secret


def test_dev_keys_follow_the_account_path_and_are_distinct():
    keys = dev_keys(5)
    root = ExtendedKey.from_seed(mnemonic_to_seed(DEV_MNEMONIC))
    for index, key in enumerate(keys):
        assert isinstance(key, PrivateKey)
        assert key.secret == root.derive(account_path(index)).secret
    assert len({key.secret for key in keys}) == 5
    assert [key.secret for key in dev_keys(3)] == [key.secret for key in keys[:3]]


def test_account_key_passphrase_gives_other_keys():
    assert account_key(DEV_MNEMONIC, 0, "secret").secret != account_key(DEV_MNEMONIC, 0).secret
