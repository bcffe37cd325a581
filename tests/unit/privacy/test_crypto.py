"""Sealed files: round trips, random access, and every kind of tampering caught with the file named."""

from __future__ import annotations

import base64
import contextlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmkit.errors import ConfigError
from llmkit.privacy import crypto
from llmkit.privacy.context import RunContext
from llmkit.privacy.crypto import HEADER_SIZE, NONCE, TAG, Key, SealError, SealedFile

CHUNK = 64  # small chunks: every boundary case in a few hundred bytes
RECORD = CHUNK + NONCE + TAG


_contexts = contextlib.ExitStack()


def use_key(env: str, environ: dict[str, str]) -> None:
    """A run context whose key is ``env`` (present in ``environ`` or not), until the test ends."""
    present = crypto.key_from_env(env, environ) if environ.get(env, "").strip() else None
    _contexts.enter_context(RunContext(env, present).active())


@pytest.fixture(autouse=True)
def _no_active_key():
    yield
    _contexts.close()


def key(seed: int = 0) -> Key:
    return Key(bytes([seed]) * 32, "TEST_KEY")


def sealed(tmp_path: Path, data: bytes, k: Key | None = None, name: str = "f.bin") -> Path:
    path = tmp_path / name
    crypto.seal_file(path, data, k or key(), chunk=CHUNK)
    return path


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_and_size(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = sealed(tmp_path, data)
    f = SealedFile(path, key())
    assert f.size == size and f.read_all() == data
    assert size < 16 or data[:16] not in path.read_bytes()  # ciphertext, not the plaintext
    assert crypto.is_sealed(path)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(0, 700), st.integers(0, 700))
def test_random_access_reads_match_slices(data: bytes, offset: int, n: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = sealed(Path(d), data)
        f = SealedFile(path, key(), cache=2)
        assert f.read(offset, n) == data[offset : offset + n]


def test_streaming_writer_equals_one_shot(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 3)
    with crypto.SealedWriter(tmp_path / "s.bin", key(), chunk=CHUNK) as w:
        for i in range(0, len(data), 7):
            w.write(data[i : i + 7])
    assert SealedFile(tmp_path / "s.bin", key()).read_all() == data


def test_sealed_array_behaves_like_the_array(tmp_path: Path) -> None:
    arr = np.arange(1000, dtype=np.uint16)
    path = sealed(tmp_path, arr.tobytes())
    use_key("K", {"K": base64.b64encode(key().raw).decode()})
    s = crypto.open_array(path, np.uint16)
    assert isinstance(s, crypto.SealedArray)
    assert len(s) == 1000 and s[7] == 7 and s[-1] == 999
    for a, b in [(0, 10), (30, 31), (31, 97), (990, 2000), (500, 400)]:
        assert np.array_equal(s[a:b], arr[a:b])
    assert np.array_equal(np.asarray(s), arr)
    with pytest.raises(IndexError):
        s[::2]


def flip(path: Path, at: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("where", ["header", "nonce", "ciphertext", "tag", "last chunk"])
def test_a_flipped_byte_is_caught_and_named(tmp_path: Path, where: str) -> None:
    path = sealed(tmp_path, os.urandom(3 * CHUNK + 10))
    at = {"header": 20, "nonce": HEADER_SIZE + RECORD + 3, "ciphertext": HEADER_SIZE + RECORD + NONCE + 5,
          "tag": HEADER_SIZE + 2 * RECORD - 1, "last chunk": path.stat().st_size - 1}[where]
    flip(path, at)
    with pytest.raises(SealError) as err:
        SealedFile(path, key()).read_all()
    assert str(path) in err.value.summary
    assert "nothing was read" in err.value.detail or "another key" in err.value.summary


@pytest.mark.parametrize("cut", ["a whole last chunk", "inside the last chunk", "to the header"])
def test_truncation_is_caught(tmp_path: Path, cut: str) -> None:
    data = os.urandom(3 * CHUNK)  # three full chunks
    path = sealed(tmp_path, data)
    size = {"a whole last chunk": HEADER_SIZE + 2 * RECORD, "inside the last chunk": path.stat().st_size - 5,
            "to the header": HEADER_SIZE}[cut]
    with open(path, "r+b") as fh:
        fh.truncate(size)
    with pytest.raises(SealError, match="damaged"):
        SealedFile(path, key()).read_all()


def test_reordered_chunks_are_caught(tmp_path: Path) -> None:
    path = sealed(tmp_path, os.urandom(3 * CHUNK + 5))
    raw = path.read_bytes()
    a, b = raw[HEADER_SIZE : HEADER_SIZE + RECORD], raw[HEADER_SIZE + RECORD : HEADER_SIZE + 2 * RECORD]
    path.write_bytes(raw[:HEADER_SIZE] + b + a + raw[HEADER_SIZE + 2 * RECORD :])
    with pytest.raises(SealError, match="chunk 0"):
        SealedFile(path, key()).read_all()


def test_chunks_spliced_from_another_file_are_caught(tmp_path: Path) -> None:
    one = sealed(tmp_path, os.urandom(2 * CHUNK + 5), name="one")
    two = sealed(tmp_path, os.urandom(2 * CHUNK + 5), name="two")  # same key, same length
    r1, r2 = one.read_bytes(), two.read_bytes()
    spliced = tmp_path / "spliced"
    spliced.write_bytes(r1[: HEADER_SIZE + RECORD] + r2[HEADER_SIZE + RECORD :])  # chunk 1+ of the other file
    with pytest.raises(SealError, match="chunk 1"):
        SealedFile(spliced, key()).read_all()
    swapped_header = tmp_path / "header"
    swapped_header.write_bytes(r2[:HEADER_SIZE] + r1[HEADER_SIZE:])
    with pytest.raises(SealError, match="chunk 0"):
        SealedFile(swapped_header, key()).read_all()


def test_appended_bytes_are_caught(tmp_path: Path) -> None:
    path = sealed(tmp_path, os.urandom(2 * CHUNK))
    with open(path, "ab") as fh:
        fh.write(os.urandom(RECORD))  # looks like one more chunk
    with pytest.raises(SealError):
        SealedFile(path, key()).read_all()


def test_wrong_key_is_not_damage(tmp_path: Path) -> None:
    path = sealed(tmp_path, b"secret text", key(1))
    with pytest.raises(SealError) as err:
        SealedFile(path, key(2))
    assert "another key" in err.value.summary and key(1).id_hex in err.value.summary
    assert "not damage" in err.value.detail


def test_reading_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sealed(tmp_path, b"secret text")
    with pytest.raises(SealError, match="no key is set"):
        crypto.read_bytes(path)
    use_key("RUN_KEY", {})  # the config names a variable that is not set
    with pytest.raises(ConfigError, match="RUN_KEY is not set"):
        crypto.read_bytes(path)
    monkeypatch.setenv("RUN_KEY", base64.b64encode(key().raw).decode())
    assert crypto.read_bytes(path) == b"secret text"


def test_plain_files_read_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"plain")
    assert crypto.read_bytes(tmp_path / "p") == b"plain" and not crypto.is_sealed(tmp_path / "p")


def test_write_bytes_seals_only_with_an_active_key(tmp_path: Path) -> None:
    crypto.write_bytes(tmp_path / "a", b"x" * 100)
    assert (tmp_path / "a").read_bytes() == b"x" * 100
    use_key("K", {"K": crypto.new_key()})
    crypto.write_bytes(tmp_path / "b", b"x" * 100)
    assert crypto.is_sealed(tmp_path / "b") and crypto.read_bytes(tmp_path / "b") == b"x" * 100


@pytest.mark.parametrize("value, problem", [("", "is not set"), ("not base64!", "256-bit key"),
                                            (base64.b64encode(b"short").decode(), "256-bit key")])
def test_bad_keys_are_refused(value: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        crypto.key_from_env("K", {"K": value})


def test_keygen_makes_distinct_valid_keys() -> None:
    a, b = crypto.new_key(), crypto.new_key()
    assert a != b and len(base64.b64decode(a)) == 32
    assert crypto.key_from_env("K", {"K": a}).id != crypto.key_from_env("K", {"K": b}).id


def test_header_layout() -> None:
    assert HEADER_SIZE == struct.calcsize("<8sB3xI8s16s") == 40


def test_directory_round_trip_in_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text('{"x": 1}')
    (src / "sub" / "b.bin").write_bytes(os.urandom(1000))
    sealed_dir = tmp_path / "sealed"
    crypto.seal_tree(src, sealed_dir, key())
    assert crypto.has_sealed(sealed_dir) and not crypto.has_sealed(src)
    use_key("K", {"K": base64.b64encode(key().raw).decode()})
    with crypto.readable_dir(sealed_dir) as plain:
        assert plain != sealed_dir and str(plain).startswith(("/dev/shm", "/tmp"))
        assert (plain / "a.json").read_text() == '{"x": 1}'
        assert (plain / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert not plain.exists()  # the plaintext is gone when the load is done


def test_sealed_safetensors_load_equals_the_library(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load, save

    tensors = {"w": torch.randn(3, 5), "b": torch.zeros(0), "h": torch.randn(4).to(torch.bfloat16),
               "i": torch.arange(6, dtype=torch.int64).view(2, 3), "m": torch.tensor([True, False])}
    raw = save(tensors)
    crypto.seal_file(tmp_path / "t.safetensors", raw, key(), chunk=CHUNK)
    use_key("K", {"K": base64.b64encode(key().raw).decode()})
    mine, theirs = crypto.load_safetensors(tmp_path / "t.safetensors"), load(raw)
    assert mine.keys() == theirs.keys()
    for name, t in theirs.items():
        assert mine[name].dtype == t.dtype and mine[name].shape == t.shape and torch.equal(mine[name], t)
    mine["w"].add_(1)  # writable views of the decrypted buffer
