"""Read and write the file format of `torch.save`, without importing torch.

A torch file is an uncompressed zip archive. Its entries, under a folder named after the
archive ("archive" when saved to a buffer), are `data.pkl` (the object, pickled with
protocol 2), `.format_version`, `.storage_alignment`, `byteorder`, one `data/<key>` entry
of raw little-endian bytes per tensor storage, `version` and `.data/serialization_id`.
Tensors appear in the pickle as `torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, backward_hooks)`, and each storage as a persistent id
`("storage", torch.<Type>Storage, key, "cpu", numel)`.

`dumps` writes what torch 2.13's `torch.save` writes for dicts, OrderedDicts, strings,
numbers and tensors (numpy arrays here), byte for byte except for the first 20 digits of
the serialization id (see `serialization_id`). `loads` reads such files, including those
saved by PyTorch, and rejects every global a state_dict does not need, as
`torch.load(..., weights_only=True)` does.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

from jaxconnectome.artifact.errors import ArtifactError

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
# numpy dtype <-> the legacy typed storage class torch names in the pickle.
STORAGE_TYPES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    BFLOAT16: "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
DTYPES_BY_STORAGE = {name: dtype for dtype, name in STORAGE_TYPES.items()}

ALIGNMENT = 64  # torch aligns every record's data to 64 bytes (the `.storage_alignment` record)
# torch 2.13 writes file format version 3 for files without newer features.
FILE_FORMAT_VERSION = b"3\n"
_MAX_ZIP32 = 0xFFFFFFFF

_STORAGE = "storage"  # one object each, so that the pickle memo reuses them as torch's does
_CPU = "cpu"


class _Global:
    """A `module name` reference written as the pickle GLOBAL opcode."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name


_ORDERED_DICT = _Global("collections", "OrderedDict")
_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_GLOBALS = {dtype: _Global("torch", name) for dtype, name in STORAGE_TYPES.items()}


def is_float_dtype(dtype: np.dtype) -> bool:
    """Tell whether torch counts `dtype` as floating point (bfloat16 included)."""
    return np.dtype(dtype) in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), BFLOAT16)


def torch_dtype_name(dtype: np.dtype) -> str:
    """Return torch's name of a dtype without the `torch.` prefix, e.g. "bfloat16"."""
    dtype = np.dtype(dtype)
    return "bool" if dtype == np.bool_ else dtype.name


# ---------------------------------------------------------------------------- writing


class _PickleWriter:
    """Protocol-2 pickler for the few types a state_dict contains, memoised like `pickle`.

    Python's pickler is not used because torch's storage classes must be written as
    globals without importing torch. Objects are memoised by identity, as `pickle` does,
    and kept alive in the memo so that identities stay unique.
    """

    def __init__(self):
        self.out = io.BytesIO()
        self.memo: dict[int, tuple[int, Any]] = {}
        self.globals_memo: dict[tuple[str, str], int] = {}
        self.storages: list[np.ndarray] = []

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def put(self, obj: Any) -> None:
        index = len(self.memo) + len(self.globals_memo)
        self.memo[id(obj)] = (index, obj)
        self._put_index(index)

    def _put_index(self, index: int) -> None:
        self.write(b"q" + struct.pack("<B", index) if index < 256 else b"r" + struct.pack("<I", index))

    def get(self, index: int) -> None:
        self.write(b"h" + struct.pack("<B", index) if index < 256 else b"j" + struct.pack("<I", index))

    def dump(self, obj: Any) -> bytes:
        self.write(b"\x80\x02")
        self.save(obj)
        self.write(b".")
        return self.out.getvalue()

    def save(self, obj: Any) -> None:
        if obj is None:
            self.write(b"N")
            return
        if obj is True or obj is False:
            self.write(b"\x88" if obj else b"\x89")
            return
        if isinstance(obj, _Global):
            self.save_global(obj)
            return
        if id(obj) in self.memo:
            self.get(self.memo[id(obj)][0])
            return
        if isinstance(obj, (int, np.integer)) and not isinstance(obj, bool):
            self.save_int(int(obj))
        elif isinstance(obj, float):
            self.write(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            encoded = obj.encode("utf-8", "surrogatepass")
            self.write(b"X" + struct.pack("<I", len(encoded)) + encoded)
            self.put(obj)
        elif isinstance(obj, tuple):
            self.save_tuple(obj)
        elif isinstance(obj, list):
            self.write(b"]")
            self.put(obj)
            self.save_list_items(obj)
        elif isinstance(obj, collections.OrderedDict):
            self.save_ordered_dict(obj)
        elif isinstance(obj, dict):
            self.write(b"}")
            self.put(obj)
            self.save_dict_items(obj)
        elif isinstance(obj, np.ndarray):
            self.save_tensor(obj)
        else:
            raise TypeError(f"cannot write {type(obj).__name__} in a torch file; use dicts, strings, numbers, arrays")

    def save_int(self, value: int) -> None:
        if 0 <= value <= 0xFF:
            self.write(b"K" + struct.pack("<B", value))
        elif 0 <= value <= 0xFFFF:
            self.write(b"M" + struct.pack("<H", value))
        elif -(2**31) <= value < 2**31:
            self.write(b"J" + struct.pack("<i", value))
        else:
            encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.write(b"\x8a" + struct.pack("<B", len(encoded)) + encoded)

    def save_global(self, ref: _Global) -> None:
        key = (ref.module, ref.name)
        if key in self.globals_memo:
            self.get(self.globals_memo[key])
            return
        self.write(b"c" + f"{ref.module}\n{ref.name}\n".encode("ascii"))
        index = len(self.memo) + len(self.globals_memo)
        self.globals_memo[key] = index
        self._put_index(index)

    def save_tuple(self, obj: tuple) -> None:
        if not obj:
            self.write(b")")
            return
        if len(obj) <= 3:
            for item in obj:
                self.save(item)
            self.write({1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)])
        else:
            self.write(b"(")
            for item in obj:
                self.save(item)
            self.write(b"t")
        self.put(obj)

    def save_list_items(self, items: list) -> None:
        for start in range(0, len(items), 1000):  # pickle appends in batches of 1000
            batch = items[start : start + 1000]
            if len(batch) == 1:
                self.save(batch[0])
                self.write(b"a")
            else:
                self.write(b"(")
                for item in batch:
                    self.save(item)
                self.write(b"e")

    def save_dict_items(self, obj: dict) -> None:
        items = list(obj.items())
        for start in range(0, len(items), 1000):  # pickle sets items in batches of 1000
            batch = items[start : start + 1000]
            if len(batch) == 1:
                self.save(batch[0][0])
                self.save(batch[0][1])
                self.write(b"s")
            else:
                self.write(b"(")
                for key, value in batch:
                    self.save(key)
                    self.save(value)
                self.write(b"u")

    def save_ordered_dict(self, obj: collections.OrderedDict) -> None:
        # OrderedDict.__reduce__ returns (OrderedDict, (), state, None, items). Its state is
        # the instance __dict__, which contains `_metadata` for a module's state_dict.
        self.save_global(_ORDERED_DICT)
        self.write(b")R")
        self.put(obj)
        self.save_dict_items(obj)
        state = dict(vars(obj))
        if state:
            self.save(state)
            self.write(b"b")

    def save_tensor(self, array: np.ndarray) -> None:
        dtype = array.dtype
        if dtype not in STORAGE_TYPES:
            raise TypeError(f"cannot write arrays of dtype {dtype} in a torch file")
        data = np.asarray(array, order="C").astype(dtype.newbyteorder("<"), copy=False)
        key = str(len(self.storages))
        self.storages.append(data)
        self.save_global(_REBUILD_TENSOR)
        self.write(b"(")
        self.save((_STORAGE, _STORAGE_GLOBALS[dtype], key, _CPU, int(data.size)))
        self.write(b"Q")
        self.save(0)  # storage offset
        self.save(tuple(int(n) for n in data.shape))
        self.save(contiguous_strides(data.shape))
        self.save(False)  # requires_grad
        self.save(collections.OrderedDict())  # backward hooks
        self.write(b"t")
        self.put(object())  # the args tuple is memoised, as pickle does
        self.write(b"R")
        self.put(array)


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return row-major strides in elements, as torch reports them."""
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


class _ZipWriter:
    """Uncompressed zip writer laid out as PyTorch's stream writer (miniz) lays it out.

    Each local header carries an "FB" extra field of 'Z' bytes that pads the data to a
    64-byte boundary. Sizes go in a data descriptor after the data. The archive ends with
    zip64 end records, which miniz writes when asked for zip64 support.
    """

    def __init__(self, archive_name: str):
        self.prefix = archive_name + "/"
        self.out = io.BytesIO()
        self.entries: list[tuple[bytes, int, int, int]] = []  # name, crc, size, header offset
        self.combined_crc = 0
        self.names: list[str] = []

    def write_record(self, name: str, data: bytes) -> None:
        full_name = (self.prefix + name).encode("utf-8")
        offset = self.out.tell()
        if len(data) >= _MAX_ZIP32 or offset >= _MAX_ZIP32:
            raise ArtifactError(f"torch record {name} or its offset exceeds 4 GiB, which this writer does not support")
        start = offset + 30 + len(full_name) + 4
        padding = -start % ALIGNMENT
        extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
        crc = zlib.crc32(data)
        self.out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 0, 0x0808, 0, 0, 0, 0, 0, 0, len(full_name), len(extra)))
        self.out.write(full_name + extra)
        self.out.write(data)
        self.out.write(struct.pack("<4sIII", b"PK\x07\x08", crc, len(data), len(data)))
        self.entries.append((full_name, crc, len(data), offset))
        self.names.append(name)
        self.combined_crc = hash_combine(self.combined_crc, crc)

    def finish(self) -> bytes:
        central_offset = self.out.tell()
        for full_name, crc, size, offset in self.entries:
            self.out.write(
                struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 0, 0, 0x0808, 0, 0, 0, crc, size, size,
                            len(full_name), 0, 0, 0, 0, 0, offset)
            )
            self.out.write(full_name)
        central_size = self.out.tell() - central_offset
        zip64_offset = self.out.tell()
        count = len(self.entries)
        self.out.write(struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 0x031E, 45, 0, 0, count, count,
                                   central_size, central_offset))
        self.out.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_offset, 1))
        self.out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, central_size, central_offset, 0))
        return self.out.getvalue()


def hash_combine(seed: int, value: int) -> int:
    """c10::hash_combine on 64-bit integers, which torch uses to combine record CRCs."""
    mask = (1 << 64) - 1
    return (seed ^ ((value + 0x9E3779B9 + (seed << 6) + (seed >> 2)) & mask)) & mask


def serialization_id(names: list[str], combined_crc: int) -> bytes:
    """Return the 40-digit `.data/serialization_id` record.

    torch writes 20 digits of a hash of the record names, then 20 digits of the CRC32s of
    every record combined with `hash_combine`. The CRC half is reproduced exactly. The
    name half comes from std::hash over a set whose order depends on the C++ library.
    Here it is the first 8 bytes of sha256 over the sorted names, so the same files give
    the same id, but not torch's digits.
    """
    digest = hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).digest()
    name_hash = int.from_bytes(digest[:8], "little")
    return f"{name_hash:020d}{combined_crc:020d}".encode("ascii")


def dumps(obj: Any, archive_name: str = "archive") -> bytes:
    """Serialise `obj` (dicts, strings, numbers, numpy arrays as tensors) as torch.save does."""
    pickler = _PickleWriter()
    pickled = pickler.dump(obj)
    writer = _ZipWriter(archive_name)
    writer.write_record("data.pkl", pickled)
    writer.write_record(".format_version", b"1")
    writer.write_record(".storage_alignment", str(ALIGNMENT).encode("ascii"))
    writer.write_record("byteorder", b"little")
    for key, storage in enumerate(pickler.storages):
        writer.write_record(f"data/{key}", storage.tobytes())
    writer.write_record("version", FILE_FORMAT_VERSION)
    writer.write_record(".data/serialization_id", serialization_id(writer.names, writer.combined_crc))
    return writer.finish()


# ---------------------------------------------------------------------------- reading


class _StorageType:
    """Stand-in for `torch.<Type>Storage` while reading, carrying only its element dtype."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _LoadedTensor:
    """A tensor while the pickle is read; slots keep pickle's BUILD from setting attributes."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, np.ndarray):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 expects a storage as its first argument")
    size = tuple(int(n) for n in size)
    stride = tuple(int(n) for n in stride)
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride) or storage_offset < 0:
        raise pickle.UnpicklingError(f"invalid tensor layout: size {size}, stride {stride}, offset {storage_offset}")
    if 0 in size:
        return _LoadedTensor(np.zeros(size, storage.dtype))
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(f"tensor of size {size} and stride {stride} reads past its storage of {storage.size}")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return _LoadedTensor(np.array(view))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _LoadedTensor):
        raise pickle.UnpicklingError("_rebuild_parameter expects a tensor")
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a saved state_dict uses."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, big_endian: bool):
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.big_endian = big_endian
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in DTYPES_BY_STORAGE:
            return _StorageType(DTYPES_BY_STORAGE[name])
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a state_dict file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage record data/{key} is missing") from None
            dtype = storage_type.dtype.newbyteorder(">" if self.big_endian else "<")
            if len(raw) != int(numel) * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage data/{key} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}")
            self.storages[key] = np.frombuffer(raw, dtype).astype(storage_type.dtype)
        return self.storages[key]


def _unwrap(obj: Any) -> Any:
    """Replace loaded tensors by their arrays throughout dicts, lists and tuples."""
    if isinstance(obj, _LoadedTensor):
        return obj.array
    if isinstance(obj, collections.OrderedDict):
        out = collections.OrderedDict((key, _unwrap(value)) for key, value in obj.items())
        for attr, value in vars(obj).items():
            setattr(out, attr, _unwrap(value))
        return out
    if isinstance(obj, dict):
        return {key: _unwrap(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_unwrap(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(item) for item in obj)
    return obj


def is_torch_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def loads(data: bytes, source: str) -> Any:
    """Read a torch.save file from bytes; tensors come back as numpy arrays.

    `source` names the file in error messages. Raises ArtifactError when the bytes are not
    a torch zip file or its pickle uses anything beyond containers, numbers, strings and
    tensors.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ArtifactError(f"{source}: not a torch zip file ({error})") from None
    pickles = [name for name in names if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise ArtifactError(f"{source}: not a torch zip file (expected one <archive>/data.pkl entry, found {len(pickles)})")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = b"little"
    if f"{prefix}byteorder" in names:
        byteorder = archive.read(f"{prefix}byteorder").strip()
    if byteorder not in (b"little", b"big"):
        raise ArtifactError(f"{source}: unknown byteorder record {byteorder!r}")
    try:
        pickled = archive.read(pickles[0])
        unpickler = _RestrictedUnpickler(io.BytesIO(pickled), archive, prefix, byteorder == b"big")
        return _unwrap(unpickler.load())
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            zipfile.BadZipFile, zlib.error) as error:
        raise ArtifactError(f"{source}: cannot read the torch pickle: {error}") from None
