"""Encryption at rest: sealed files, AES-256-GCM in authenticated chunks (``cryptography``).

A sealed file is a header then fixed-size chunks::

    header  = b"LLMKSEAL" | version (1 byte) | 3 zero bytes | chunk size (u32 LE) | key id (8) | file id (16)
    chunk i = nonce (12, random) | ciphertext | tag (16)
              associated data: header | i (u64 LE) | final flag (1 byte)

Every chunk carries the whole header, its own index and whether it is the last one as associated
data, so a changed header, a flipped byte, chunks swapped within a file or spliced from another
file (another file id), and a truncation (the new last chunk was not sealed as final) all fail
to open. The plaintext size follows from the file size, so a reader seeks straight to the chunk
that holds an offset: token shards keep random access (``SealedFile.read`` decrypts only the
chunks it needs and keeps a few in a cache).

The key comes from an environment variable whose *name* is ``privacy.encryption_key_env``
(never from the config itself); the run context (``llmkit.privacy.context``) that a command's entry
builds holds it for what that command reads and writes. Files written while a key
is active are sealed; readers open sealed and plain files alike (``read_bytes``), so one code path
serves encrypted and plain runs. Directories written by other libraries (``save_pretrained``)
are written to and read from a private scratch folder in memory (``/dev/shm``) and sealed file by
file: their plaintext never reaches the disk.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from llmkit.errors import ConfigError, LlmkitError

MAGIC = b"LLMKSEAL"
VERSION = 1
_HEADER = struct.Struct("<8sB3xI8s16s")
HEADER_SIZE = _HEADER.size  # 40
NONCE, TAG = 12, 16
CHUNK = 1 << 16
SCRATCH_PREFIX = "llmkit-plain-"


class SealError(LlmkitError):
    """A sealed file cannot be opened: missing or wrong key, damage, truncation (exit 2)."""

    exit_code = 2


class Key:
    """A 256-bit key and its id (8 bytes of a hash of it: names the key, reveals nothing)."""

    def __init__(self, raw: bytes, env: str = "") -> None:
        if len(raw) != 32:
            raise ValueError("an AES-256 key is 32 bytes")
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.raw, self.env = raw, env
        self.id = hashlib.sha256(b"llmkit key id\0" + raw).digest()[:8]
        self.aead = AESGCM(raw)

    @property
    def id_hex(self) -> str:
        return self.id.hex()


def new_key() -> str:
    """A fresh random key, base64 (what `llmkit privacy keygen` prints)."""
    return base64.b64encode(os.urandom(32)).decode()


def key_from_env(name: str, environ: Mapping[str, str] | None = None) -> Key:
    """The key in environment variable ``name``; a clear error when it is unset or not a key."""
    environ = os.environ if environ is None else environ
    text = environ.get(name, "").strip()
    if not text:
        raise ConfigError(f"privacy.encryption_key_env names {name}, but {name} is not set",
                          "the run's data, tokenizer, checkpoints and model are encrypted with the key it holds",
                          f"export {name}=<the run's key> (make one with `llmkit privacy keygen`)")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"{name} does not hold a 256-bit key",
                          "the key is 32 random bytes written in base64 (44 characters)",
                          f"make one with `llmkit privacy keygen` and put it in {name}")
    return Key(raw, name)


# --- the key of the run being worked on ------------------------------------------------------------


def active() -> Key | None:
    """The key files are written with (None: plain): the current run context's
    (``llmkit.privacy.context``), after checking a configured key is present."""
    from llmkit.privacy.context import current

    return current().write_key()


def enabled() -> bool:
    """Whether the run being worked on is encrypted (whether or not its key is present)."""
    from llmkit.privacy.context import current

    return current().encrypted


# --- sealing -------------------------------------------------------------------------------------


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + struct.pack("<QB", index, 1 if final else 0)


class SealedWriter:
    """Write a sealed file chunk by chunk (``write`` any amount, then ``close``)."""

    def __init__(self, path: str | os.PathLike[str], key: Key, chunk: int = CHUNK) -> None:
        self.path, self.key, self.chunk = Path(path), key, chunk
        self.header = _HEADER.pack(MAGIC, VERSION, chunk, key.id, os.urandom(16))
        self._fh = open(self.path, "wb")  # noqa: SIM115 (closed in close)
        self._fh.write(self.header)
        self._buf = bytearray()
        self._index = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        if self._buf:  # top up the partial chunk first
            take = min(len(view), self.chunk - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self.chunk and len(view):
                self._seal(bytes(self._buf), final=False)
                self._buf.clear()
        while len(view) > self.chunk:  # whole chunks straight from the caller's buffer; the last one
            self._seal(view[: self.chunk], final=False)  # (at least one byte) waits for close
            view = view[self.chunk :]
        self._buf += view
        return len(data)

    def _seal(self, plain: bytes | memoryview, final: bool) -> None:
        nonce = os.urandom(NONCE)
        self._fh.write(nonce)
        self._fh.write(self.key.aead.encrypt(nonce, plain, _aad(self.header, self._index, final)))
        self._index += 1

    def close(self) -> None:
        if self._fh.closed:
            return
        self._seal(bytes(self._buf), final=True)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()

    def __enter__(self) -> SealedWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def seal_file(path: str | os.PathLike[str], data: bytes, key: Key, chunk: int = CHUNK) -> None:
    with SealedWriter(path, key, chunk) as w:
        w.write(data)


def is_sealed(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` starts with the sealed-file magic."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


def _damaged(path: Path, why: str) -> SealError:
    return SealError(f"{path} is damaged: {why}",
                     "the encrypted file does not authenticate (a changed byte, a truncation, or parts of "
                     "another file); nothing was read from it and nothing was changed",
                     "restore the file from a copy, or make it again (`llmkit prepare` / `llmkit train`)")


class SealedFile:
    """Random-access reads of a sealed file; each chunk is authenticated when it is decrypted."""

    def __init__(self, path: str | os.PathLike[str], key: Key | None = None, cache: int = 16) -> None:
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as fh:
            header = fh.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            raise _damaged(self.path, "no sealed-file header")
        _, version, chunk, key_id, _file_id = _HEADER.unpack(header)
        if version != VERSION or chunk <= 0:
            raise _damaged(self.path, f"unknown format version {version}")
        self.key = key if key is not None else _key_for(self.path, key_id)
        if key_id != self.key.id:
            raise SealError(f"{self.path} is encrypted with another key (key id {key_id.hex()}, "
                            f"{self.key.env or 'the key given'} has {self.key.id_hex})",
                            "a wrong key is not damage: nothing was read, changed or skipped",
                            f"set {self.key.env or 'the key variable'} to the key this run was encrypted "
                            "with (if a `llmkit privacy rotate` was interrupted, rerun it)")
        self.header, self.chunk = header, chunk
        record = chunk + NONCE + TAG
        body = size - HEADER_SIZE
        self.chunks = max(1, -(-body // record))
        last = body - (self.chunks - 1) * record - NONCE - TAG
        if body < NONCE + TAG or last < 0:
            raise _damaged(self.path, "truncated")
        self.size = (self.chunks - 1) * chunk + last
        self._record = record
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_size = cache
        self._fh = open(self.path, "rb")  # noqa: SIM115 (closed with the object)

    def __del__(self) -> None:
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()

    def _chunk(self, i: int) -> bytes:
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        self._fh.seek(HEADER_SIZE + i * self._record)
        rec = self._fh.read(self._record)
        from cryptography.exceptions import InvalidTag

        try:
            plain = self.key.aead.decrypt(rec[:NONCE], rec[NONCE:], _aad(self.header, i, i == self.chunks - 1))
        except (InvalidTag, ValueError):
            raise _damaged(self.path, f"chunk {i} of {self.chunks} fails authentication"
                           + (" (truncated?)" if i == self.chunks - 1 else "")) from None
        self._cache[i] = plain
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return plain

    def read(self, offset: int, n: int) -> bytes:
        """``n`` plaintext bytes from ``offset`` (fewer at the end)."""
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        first, last = offset // self.chunk, (offset + n - 1) // self.chunk
        if first == last:
            start = offset - first * self.chunk
            return self._chunk(first)[start : start + n]
        out = b"".join(self._chunk(i) for i in range(first, last + 1))
        start = offset - first * self.chunk
        return out[start : start + n]

    def read_all(self) -> bytes:
        """The whole plaintext, every chunk authenticated (the cache is left alone)."""
        return bytes(self.read_into_buffer())

    def read_into_buffer(self) -> bytearray:
        """``read_all`` into a fresh writable buffer (no final copy: tensors can be views of it)."""
        from cryptography.exceptions import InvalidTag

        out = bytearray(self.size)
        view = memoryview(out)
        record = bytearray(self._record)
        into = getattr(self.key.aead, "decrypt_into", None)  # cryptography >= 45: no per-chunk allocation
        with open(self.path, "rb") as fh:
            fh.seek(HEADER_SIZE)
            for i in range(self.chunks):
                n = fh.readinto(record)
                rec = memoryview(record)[:n]
                aad = _aad(self.header, i, i == self.chunks - 1)
                dest = view[i * self.chunk : i * self.chunk + n - NONCE - TAG]
                try:
                    if into is not None:
                        into(rec[:NONCE], rec[NONCE:], aad, dest)
                    else:
                        dest[:] = self.key.aead.decrypt(rec[:NONCE], rec[NONCE:], aad)
                except (InvalidTag, ValueError):
                    raise _damaged(self.path, f"chunk {i} of {self.chunks} fails authentication"
                                   + (" (truncated?)" if i == self.chunks - 1 else "")) from None
        view.release()
        return out

    def verify(self) -> None:
        """Authenticate every chunk (a damaged file is found before any work, not mid-run), streaming:
        memory stays at one chunk whatever the file's size."""
        from cryptography.exceptions import InvalidTag

        scratch = bytearray(self.chunk)
        into = getattr(self.key.aead, "decrypt_into", None)
        with open(self.path, "rb") as fh:
            fh.seek(HEADER_SIZE)
            for i in range(self.chunks):
                rec = fh.read(self._record)
                aad = _aad(self.header, i, i == self.chunks - 1)
                try:
                    if into is not None:
                        into(rec[:NONCE], rec[NONCE:], aad, memoryview(scratch)[: len(rec) - NONCE - TAG])
                    else:
                        self.key.aead.decrypt(rec[:NONCE], rec[NONCE:], aad)
                except (InvalidTag, ValueError):
                    raise _damaged(self.path, f"chunk {i} of {self.chunks} fails authentication"
                                   + (" (truncated?)" if i == self.chunks - 1 else "")) from None


def _key_for(path: Path, key_id: bytes) -> Key:
    from llmkit.privacy.context import current

    ctx = current()
    if ctx.key is not None:
        return ctx.key
    if ctx.key_env is not None:
        return key_from_env(ctx.key_env)
    raise SealError(f"{path} is encrypted (key id {key_id.hex()}) and no key is set",
                    "the run was written with privacy.encryption_key_env; this command did not read that "
                    "run's config, so it does not know which variable holds the key",
                    "run the command on the run directory (runs/<name>) with the key's variable set, or "
                    "pass --config with the run's config")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """A file's content: decrypted (and authenticated) when sealed, as is when plain."""
    p = Path(path)
    if is_sealed(p):
        return SealedFile(p).read_all()
    return p.read_bytes()


def read_text(path: str | os.PathLike[str]) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path``: sealed when a key is active, plain otherwise (fsynced either way)."""
    key = active()
    if key is not None:
        seal_file(path, data, key)
        return
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def open_writer(path: str | os.PathLike[str]) -> Any:
    """A binary file object for streaming writes: a SealedWriter with a key, else a plain file."""
    key = active()
    return SealedWriter(path, key) if key is not None else open(path, "wb")  # noqa: SIM115


# --- directories written and read by other libraries -----------------------------------------------


def _scratch_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def clean_stale_scratch() -> None:
    """Remove scratch folders left by processes that died (kill -9) while a load ran."""
    root = _scratch_root()
    if root is None:
        return
    for d in Path(root).glob(f"{SCRATCH_PREFIX}*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A private (0700) folder in memory for plaintext, removed on exit."""
    clean_stale_scratch()
    d = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=_scratch_root()))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def has_sealed(directory: str | os.PathLike[str]) -> bool:
    """Whether any file in ``directory`` (recursively) is sealed."""
    p = Path(directory)
    return p.is_dir() and any(f.is_file() and is_sealed(f) for f in p.rglob("*"))


@contextlib.contextmanager
def readable_dir(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """``directory`` itself when nothing in it is sealed, else a scratch copy with every file decrypted."""
    src = Path(directory)
    if not has_sealed(src):
        yield src
        return
    with scratch() as tmp:
        decrypt_tree(src, tmp)
        yield tmp


def decrypt_tree(src: Path, dest: Path) -> list[str]:
    """Copy ``src`` into ``dest`` with every sealed file decrypted; returns the relative names."""
    names = []
    for f in sorted(src.rglob("*")):
        if f.is_file():
            rel = f.relative_to(src)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(read_bytes(f))
            names.append(str(rel))
    return names


def seal_tree(src: Path, dest: Path, key: Key) -> None:
    """Seal every file of ``src`` into ``dest`` (same relative names)."""
    for f in sorted(src.rglob("*")):
        if f.is_file():
            rel = f.relative_to(src)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            seal_file(dest / rel, f.read_bytes(), key)


@contextlib.contextmanager
def writable_dir(staged: Path) -> Iterator[Path]:
    """Where a library should ``save_pretrained`` into the staged folder ``staged``: ``staged`` itself
    when writing plain, else a scratch folder in memory whose files are sealed into ``staged``."""
    key = active()
    if key is None:
        yield staged
        return
    with scratch() as tmp:
        yield tmp
        seal_tree(tmp, staged, key)


class SealedArray:
    """A read-only 1-D array view of a sealed file of ``dtype`` items: ``len``, slices with step 1,
    single items; what the samplers use of a ``numpy.memmap``."""

    def __init__(self, path: str | os.PathLike[str], dtype: Any) -> None:
        import numpy as np

        self.file = SealedFile(path)
        self.dtype = np.dtype(dtype)
        if self.file.size % self.dtype.itemsize:
            raise _damaged(self.file.path, f"{self.file.size} bytes is not a whole number of {self.dtype} items")
        self.size = self.file.size // self.dtype.itemsize
        self.shape = (self.size,)
        self.ndim = 1

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: Any) -> Any:
        import numpy as np

        item = self.dtype.itemsize
        if isinstance(index, slice):
            start, stop, step = index.indices(self.size)
            if step != 1:
                raise IndexError("a sealed array takes slices with step 1")
            n = max(0, stop - start)
            return np.frombuffer(self.file.read(start * item, n * item), dtype=self.dtype)
        i = int(index)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        return np.frombuffer(self.file.read(i * item, item), dtype=self.dtype)[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        out = np.frombuffer(self.file.read_all(), dtype=self.dtype)
        return out.astype(dtype) if dtype is not None else out


def open_array(path: str | os.PathLike[str], dtype: Any, verify: bool = True) -> Any:
    """A read-only array of a token file: a ``numpy.memmap`` when plain, a ``SealedArray`` when
    sealed (every chunk authenticated first with ``verify``, so damage is found before any work)."""
    import numpy as np

    p = Path(path)
    if is_sealed(p):
        arr = SealedArray(p, dtype)
        if verify:
            arr.file.verify()
        return arr
    if p.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(p, dtype=dtype, mode="r")


def load_npy(path: str | os.PathLike[str]) -> Any:
    """A ``.npy`` file (sealed or plain), never unpickling."""
    import io

    import numpy as np

    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def save_npy(path: str | os.PathLike[str], array: Any) -> None:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getvalue())


def plain_size(path: str | os.PathLike[str]) -> int:
    """The plaintext size of a file, sealed or not."""
    p = Path(path)
    return SealedFile(p).size if is_sealed(p) else p.stat().st_size


def key_id_of(path: str | os.PathLike[str]) -> str:
    """The key id (hex) in a sealed file's header."""
    with open(path, "rb") as fh:
        header = fh.read(HEADER_SIZE)
    return _HEADER.unpack(header)[3].hex()


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The tensors of a sealed safetensors file, as views of one decrypted buffer (no copy per
    tensor; the format is 8 bytes of header length, a JSON header of dtype / shape / byte offsets,
    then the raw data: nothing is unpickled)."""
    import json as _json

    import torch

    p = Path(path)
    buf = SealedFile(p).read_into_buffer()
    if len(buf) < 8:
        raise _damaged(p, "too short for a safetensors file")
    n = int.from_bytes(buf[:8], "little")
    try:
        header = _json.loads(bytes(buf[8 : 8 + n]))
    except ValueError:
        raise _damaged(p, "its safetensors header is not JSON") from None
    base = 8 + n
    out: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = getattr(torch, _SAFETENSORS_DTYPES[info["dtype"]])
        start, end = info["data_offsets"]
        if end - start == 0:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(buf, dtype=dtype, count=(end - start) // dtype.itemsize, offset=base + start)
        out[name] = flat.view(info["shape"])
    return out
