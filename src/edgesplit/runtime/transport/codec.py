"""numpy <-> KServe v2 tensors. Raw contents are used both ways (zero-copy ``np.frombuffer`` on receipt);
typed ``contents`` fields from clients that send them are accepted too."""

from __future__ import annotations

import math
import struct
import time
from functools import lru_cache

import numpy as np

from edgesplit.runtime.errors import InferError, OverLimit
from edgesplit.runtime.model import TRACE_DECODED, TRACE_RECEIVED, TRACE_SENT
from edgesplit.runtime.shm import SharedTensor
from edgesplit.runtime.transport import kserve_v2_pb2 as pb
from edgesplit.runtime.transport.limits import echo

NUMPY_TO_KSERVE = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "int8": "INT8",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "uint32": "UINT32",
    "uint64": "UINT64",
}
KSERVE_TO_NUMPY = {v: k for k, v in NUMPY_TO_KSERVE.items()}
_DTYPES = {k: np.dtype(v) for k, v in KSERVE_TO_NUMPY.items()}
# keyed by dtype objects: numpy's ``dtype.name`` is computed in Python, slow with cold caches (as a worker's are
# right after its engine ran): hot paths never ask for it
KSERVE_OF_DTYPE = {np.dtype(k): v for k, v in NUMPY_TO_KSERVE.items()}
MAX_DIMS = 32  # dimensions of one tensor (numpy's own limit is 64; no model here takes more than 4)
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def _tensor(name: str, datatype: str, shape, raw: bytes | None, contents, max_bytes: int | None = None) -> np.ndarray:
    """One tensor as an array. ``max_bytes``: refuse it, before anything is allocated, if its array would be larger."""
    label = f"input {echo(name)}"
    if datatype not in KSERVE_TO_NUMPY:
        raise InferError(f"{label}: unsupported datatype {echo(datatype)}; send FP32 or UINT8")
    dtype = _DTYPES[datatype]
    if len(shape) > MAX_DIMS:
        raise InferError(f"{label}: {len(shape)} dimensions; at most {MAX_DIMS}")
    shape = tuple(shape)
    if any(d < 0 for d in shape):
        raise InferError(f"{label}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)  # Python ints: no overflow
    if max_bytes is not None and count * dtype.itemsize > max_bytes:
        raise OverLimit(
            f"{label}: shape {list(shape)} {datatype} takes {count * dtype.itemsize} bytes, over the "
            f"limit of {max_bytes}; send smaller batches"
        )
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InferError(f"{label}: {len(raw)} bytes for shape {list(shape)} {datatype} (expected {count * dtype.itemsize})")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = _TYPED_FIELD.get(datatype)
    values = getattr(contents, field) if field else []
    if len(values) != count:
        raise InferError(f"{label}: {len(values)} values for shape {list(shape)} (expected {count})")
    # one value at a time: converting the repeated field as a whole makes a Python object per value first (~30x)
    if dtype.kind in "iu" and count:  # typed contents travel in wider fields: never wrap a value that does not fit
        wide = np.fromiter(values, np.int64 if dtype.kind == "i" or field == "uint_contents" else np.uint64, count)
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InferError(f"{label}: {datatype} values must lie in {info.min}..{info.max}, got {wide.min()}..{wide.max()}")
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype, count).reshape(shape)


# Triton's system shared-memory extension: an input tensor whose bytes are in a region the caller registered
SHM_REGION, SHM_OFFSET, SHM_BYTES = "shared_memory_region", "shared_memory_offset", "shared_memory_byte_size"


def decode_request(req: pb.ModelInferRequest, regions=None, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The request's inputs as arrays. ``regions`` (``get(name) -> memoryview | None``): the shared-memory regions
    registered on the connection; an input naming one is a zero-copy view of it, and takes no raw buffer.
    ``max_bytes``: the most the inputs together may take, checked before each is converted."""
    raw = list(req.raw_input_contents)
    inline = [t for t in req.inputs if SHM_REGION not in t.parameters]
    if raw and len(raw) != len(inline):
        raise InferError(
            f"{len(inline)} inputs but {len(raw)} raw_input_contents; send one raw buffer per input "
            "(inputs in shared memory take none)"
        )
    raw_of = dict(zip((t.name for t in inline), raw))
    out, left = {}, max_bytes
    for t in req.inputs:
        if t.name in out:
            raise InferError(f"input {echo(t.name)} is given twice; send each input once")
        if SHM_REGION in t.parameters:
            out[t.name] = arr = _tensor(t.name, t.datatype, t.shape, _shared_bytes(t, regions), None, left)
        else:
            out[t.name] = arr = _tensor(t.name, t.datatype, t.shape, raw_of.get(t.name), t.contents, left)
        if left is not None:
            left -= arr.nbytes
    return out


def _shared_bytes(t, regions) -> memoryview:
    region = t.parameters[SHM_REGION].string_param
    offset, size = t.parameters[SHM_OFFSET].int64_param, t.parameters[SHM_BYTES].int64_param
    try:
        buf = regions.get(region) if regions is not None else None
    except ValueError as err:  # the region's file shrank since it was registered
        raise InferError(f"input {echo(t.name)}: {err}") from None
    if buf is None:
        raise InferError(
            f"input {echo(t.name)}: shared memory region {echo(region)} is not registered here; "
            "send the tensor in raw_input_contents"
        )
    if offset < 0 or size < 0 or offset + size > len(buf):
        raise InferError(
            f"input {echo(t.name)}: bytes {offset}..{offset + size} are outside region {echo(region)} ({len(buf)} bytes)"
        )
    return buf[offset : offset + size]


def encode_request(
    model_name: str, inputs: dict[str, np.ndarray], request_id: str = "", parameters: dict[str, object] | None = None
) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model_name, id=request_id)
    for key, value in (parameters or {}).items():
        _set_param(req.parameters[key], value)
    for name, arr in inputs.items():
        req.inputs.add(name=name, datatype=KSERVE_OF_DTYPE[arr.dtype], shape=arr.shape)
        req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    return req


def serialize_request(model_name: str, inputs: dict, request_id: str = "", parameters: dict[str, object] | None = None) -> bytes:
    """``encode_request(...).SerializeToString()``, the same bytes on the wire, several times faster.

    upb serialises a large ``bytes`` field many times slower than a copy of it, so each raw tensor is
    appended as its own length-delimited ``raw_input_contents`` field: concatenated protobuf encodings are
    one valid message, and a repeated field's values keep their order. The metadata (the model name, and
    the ``inputs`` tensors' names, types and shapes, and the request's ``parameters``) is the same request after
    request, so its encoding is cached and only the id is encoded each time, between the two in field order as protobuf writes them.
    An input given as a :class:`~edgesplit.runtime.shm.SharedTensor` is sent as a reference to its
    shared-memory slot instead (the receiver must have the region registered); a ring has few slots, so
    those references are cached too."""
    key, raws = [], []
    for name, arr in inputs.items():
        if isinstance(arr, SharedTensor):
            key.append((name, arr.array.dtype, arr.array.shape, (arr.region.name, arr.offset, arr.array.nbytes)))
            continue
        key.append((name, arr.dtype, arr.shape, None))
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)  # no copy
        raws += [_RAW_INPUT_TAG, _varint(raw.nbytes), raw]
    params = tuple(parameters.items()) if parameters else ()
    name_field, tensors_field = _request_metadata(model_name, tuple(key), params)
    rid = request_id.encode()
    id_field = _ID_TAG + _varint(len(rid)) + rid if rid else b""  # as protobuf writes it (the empty string: not at all)
    return b"".join([name_field, id_field, tensors_field, *raws])


def split_request_id(body: bytes) -> tuple[bytes, str] | None:
    """For a serialised request that starts as :func:`serialize_request` writes one (``model_name``, then ``id``,
    if any): the request's bytes without its id field, and its id. Requests that differ only by id give the same
    bytes, so a receiver can keep what it decoded of them. None for any other layout."""
    try:
        if body[:1] != _NAME_TAG:
            return None
        size, at = _read_varint(body, 1)
        end = at + size
        if body[end : end + 1] != _ID_TAG:
            return body, ""
        size, at = _read_varint(body, end + 1)
        return body[:end] + body[at + size :], body[at : at + size].decode()
    except (IndexError, UnicodeDecodeError):
        return None


def _read_varint(buf: bytes, at: int) -> tuple[int, int]:
    """The varint at ``buf[at:]`` and the offset after it."""
    value = shift = 0
    while True:
        byte = buf[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


@lru_cache(maxsize=256)
def _request_metadata(model_name: str, tensors: tuple, parameters: tuple) -> tuple[bytes, bytes]:
    """The encodings of a request's ``model_name`` field and of its ``parameters`` and ``inputs`` fields
    (shared-memory parameters included), for ``tensors`` = ((name, dtype, shape, (region, offset, byte size)
    or None), ...) and ``parameters`` = ((key, value), ...)."""
    req = pb.ModelInferRequest()
    for key, value in parameters:
        _set_param(req.parameters[key], value)
    for name, dtype, shape, shared in tensors:
        t = req.inputs.add(name=name, datatype=KSERVE_OF_DTYPE[dtype], shape=shape)
        if shared is not None:
            region, offset, size = shared
            t.parameters[SHM_REGION].string_param = region
            t.parameters[SHM_OFFSET].int64_param = offset
            t.parameters[SHM_BYTES].int64_param = size
    return pb.ModelInferRequest(model_name=model_name).SerializeToString(), req.SerializeToString()


_RAW_INPUT_TAG = bytes([pb.ModelInferRequest.DESCRIPTOR.fields_by_name["raw_input_contents"].number << 3 | 2])  # wire type 2
_ID_TAG = bytes([pb.ModelInferRequest.DESCRIPTOR.fields_by_name["id"].number << 3 | 2])
_NAME_TAG = bytes([pb.ModelInferRequest.DESCRIPTOR.fields_by_name["model_name"].number << 3 | 2])


@lru_cache(maxsize=1024)  # the same few lengths again and again: a lookup costs less than the loop
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_response(
    model_name: str, request_id: str, outputs: dict[str, np.ndarray], parameters: dict[str, object] | None = None
) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model_name, id=request_id)
    for name, arr in outputs.items():
        resp.outputs.add(name=name, datatype=KSERVE_OF_DTYPE[arr.dtype], shape=arr.shape)
        resp.raw_output_contents.append(np.ascontiguousarray(arr).tobytes())
    for key, value in (parameters or {}).items():
        _set_param(resp.parameters[key], value)
    return resp


def serialize_response(
    model_name: str, request_id: str, outputs: dict[str, np.ndarray], parameters: dict[str, object] | None = None
) -> bytes:
    """``encode_response(...).SerializeToString()`` parsed back, the same message, written without building it.

    A worker writes this right after its engine returns, with its caches cold: building a response
    object there cost several times a string join (docs/benchmarks.md). The metadata (model name,
    output names, types and shapes) is the same answer after answer, so its encoding is cached; the id,
    the parameters and the raw outputs are encoded here, in field-number order as protobuf writes them."""
    key = tuple((name, arr.dtype, arr.shape) for name, arr in outputs.items())
    name_field, outputs_field = _response_metadata(model_name, key)
    rid = request_id.encode()
    parts = [name_field, _ID_TAG + _varint(len(rid)) + rid if rid else b""]
    for k, value in (parameters or {}).items():
        parts.append(_double_field_prefix(k) + _DOUBLE.pack(value) if type(value) is float else _param_field(k, value))
    parts.append(outputs_field)
    for arr in outputs.values():
        raw = arr.tobytes()  # outputs are small (features, logits): a copy is cheaper than a view's setup
        parts += [_RAW_OUTPUT_TAG, _varint(len(raw)), raw]
    return b"".join(parts)


@lru_cache(maxsize=256)
def _response_metadata(model_name: str, outputs: tuple) -> tuple[bytes, bytes]:
    """The encodings of a response's ``model_name`` field and of its ``outputs`` fields, for ``outputs`` =
    ((name, dtype, shape), ...)."""
    resp = pb.ModelInferResponse()
    for name, dtype, shape in outputs:
        resp.outputs.add(name=name, datatype=KSERVE_OF_DTYPE[dtype], shape=shape)
    return pb.ModelInferResponse(model_name=model_name).SerializeToString(), resp.SerializeToString()


# wire tags (field number << 3 | wire type) of a parameters map entry and of InferParameter's fields
_ENTRY_KEY, _ENTRY_VALUE = 0x0A, 0x12  # key = 1, value = 2: length-delimited
_BOOL, _INT64, _STRING, _DOUBLE_TAG, _UINT64 = 0x08, 0x10, 0x1A, 0x21, 0x28  # 1-3, 5: varint or bytes; 4: fixed64


def _param_field(key: str, value) -> bytes:
    """One entry of a response's ``parameters`` map, as a field of the response."""
    k = key.encode()
    entry = bytes([_ENTRY_KEY]) + _varint(len(k)) + k + _param_value(value)
    return _PARAMS_TAG + _varint(len(entry)) + entry


@lru_cache(maxsize=64)
def _double_field_prefix(key: str) -> bytes:
    """``_param_field(key, x)`` for a float ``x``, less its last 8 bytes (x itself): the same for every x."""
    return _param_field(key, 0.0)[: -_DOUBLE.size]


def _param_value(value) -> bytes:
    """A parameters map entry's value field (field 2: an ``InferParameter``, one of its fields set)."""
    if isinstance(value, bool):
        body = bytes([_BOOL, value])
    elif isinstance(value, int):
        body = bytes([_INT64]) + _varint(value & 0xFFFFFFFFFFFFFFFF)  # two's complement
    elif isinstance(value, float):
        body = bytes([_DOUBLE_TAG]) + _DOUBLE.pack(value)
    else:
        text = str(value).encode()
        body = bytes([_STRING]) + _varint(len(text)) + text
    return bytes([_ENTRY_VALUE]) + _varint(len(body)) + body


_PARAMS_TAG = bytes([pb.ModelInferResponse.DESCRIPTOR.fields_by_name["parameters"].number << 3 | 2])
_RAW_OUTPUT_TAG = bytes([pb.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number << 3 | 2])
_DOUBLE = struct.Struct("<d")


def decode_response(resp: pb.ModelInferResponse, sent_at: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The answer's outputs and parameters. A traced answer (``model.TRACE``) also gets when its request was sent
    (``sent_at``, ``time.monotonic()``) and when it was decoded, here."""
    raw = list(resp.raw_output_contents)
    outputs = {
        t.name: _tensor(t.name, t.datatype, t.shape, raw[i] if raw else None, t.contents) for i, t in enumerate(resp.outputs)
    }
    params = {
        k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in resp.parameters.items() if v.WhichOneof("parameter_choice")
    }
    return outputs, _stamped(params, sent_at)


def _stamped(params: dict, sent_at: float | None) -> dict:
    """A traced answer's parameters get when its request was sent and when it was decoded (now)."""
    if TRACE_RECEIVED in params:
        params[TRACE_SENT], params[TRACE_DECODED] = sent_at, time.monotonic()
    return params


def parse_response(body: bytes, sent_at: float | None = None) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """``decode_response(ModelInferResponse.FromString(body), sent_at)``, read straight from the wire format.

    A coordinator decodes every branch's answer with its caches cold, where protobuf's accessors cost several
    times a walk over the message's few fields. Outputs whose metadata encodes the same
    (answer after answer) are described once. Anything this walk does not expect (typed contents instead of raw
    ones, a field it does not know) is left to protobuf: the result is the same either way (tested)."""
    try:
        outputs, params = _walk_response(body)
    except (_Unusual, IndexError, ValueError, UnicodeDecodeError, struct.error):
        return decode_response(pb.ModelInferResponse.FromString(body), sent_at)
    return outputs, _stamped(params, sent_at)


class _Unusual(Exception):
    """A response :func:`parse_response` leaves to protobuf."""


def _walk_response(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    metas, raws, params = [], [], {}
    at, end = 0, len(body)
    while at < end:
        tag = body[at]  # every field of ModelInferResponse is length-delimited, numbered under 16: a one-byte tag
        if tag & 0x87 != 2:
            raise _Unusual
        size, at = _read_varint(body, at + 1)
        if at + size > end:
            raise _Unusual
        field = tag >> 3
        if field == 4:  # parameters: a map entry
            key, value = _param_entry(body[at : at + size])
            params[key] = value
        elif field == 5:  # outputs
            metas.append(_output_meta(body[at : at + size]))
        elif field == 6:  # raw_output_contents
            raws.append(body[at : at + size])
        elif field not in (1, 2, 3):  # model_name, model_version, id: not needed here
            raise _Unusual
        at += size
    if len(raws) != len(metas):
        raise _Unusual  # typed contents
    outputs = {}
    for (name, dtype, shape, nbytes), raw in zip(metas, raws):
        if len(raw) != nbytes:
            raise InferError(f"output {name!r}: {len(raw)} bytes for shape {list(shape)} (expected {nbytes})")
        outputs[name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return outputs, params


@lru_cache(maxsize=256)
def _output_meta(encoded: bytes) -> tuple[str, np.dtype, tuple[int, ...], int]:
    """An ``outputs`` entry's (name, dtype, shape, byte count), checked once per distinct encoding."""
    t = pb.ModelInferResponse.InferOutputTensor.FromString(encoded)
    if t.HasField("contents") or t.datatype not in KSERVE_TO_NUMPY or any(d < 0 for d in t.shape):
        raise _Unusual  # protobuf's path says what is wrong, or reads the typed contents
    shape = tuple(t.shape)
    return t.name, _DTYPES[t.datatype], shape, math.prod(shape) * _DTYPES[t.datatype].itemsize


def _param_entry(entry: bytes) -> tuple[str, object]:
    """A parameters map entry: its key, and the value of the one field of its ``InferParameter`` that is set."""
    if entry[0] != _ENTRY_KEY:
        raise _Unusual
    size, at = _read_varint(entry, 1)
    key = entry[at : at + size].decode()
    at += size
    if at == len(entry):
        raise _Unusual  # no value: protobuf's path leaves it out
    if entry[at] != _ENTRY_VALUE:
        raise _Unusual
    size, at = _read_varint(entry, at + 1)
    value = entry[at : at + size]
    if at + size != len(entry) or not value:
        raise _Unusual
    kind = value[0]
    if kind == _DOUBLE_TAG and len(value) == 1 + _DOUBLE.size:
        return key, _DOUBLE.unpack_from(value, 1)[0]
    if kind in (_BOOL, _INT64, _UINT64):
        number, after = _read_varint(value, 1)
        if after != len(value):
            raise _Unusual
        if kind == _BOOL:
            return key, bool(number)
        if kind == _INT64 and number >= 1 << 63:
            number -= 1 << 64  # two's complement
        return key, number
    if kind == _STRING:
        size, after = _read_varint(value, 1)
        if after + size != len(value):
            raise _Unusual
        return key, value[after:].decode()
    raise _Unusual


def _set_param(p: pb.InferParameter, value) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = str(value)
