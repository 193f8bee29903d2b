"""The torch.save container written and read without torch, checked against torch itself."""

import collections
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

import torch_reference as ref
from jaxconnectome import connectome
from jaxconnectome.artifact import ArtifactError, torch_format
from test_artifact_torch_scheme import raw_bytes, to_numpy

GRAPH = connectome.load_connectome()
MASK = connectome.hop_mask("connectome", "post_to_pre", seed=0)
SMALL = {"vocab": 128, "embed": 64, "heads": 1, "head_dim": 16}


def reference_state_dict(dtype: torch.dtype) -> collections.OrderedDict:
    model = ref.build_reference_model(SMALL, torch.from_numpy(MASK), torch.from_numpy(GRAPH.sensory_idx),
                                      torch.from_numpy(GRAPH.motor_idx), seed=0)
    return model.to(dtype).state_dict()


def torch_save_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def as_numpy_state_dict(state_dict) -> collections.OrderedDict:
    out = collections.OrderedDict((name, to_numpy(t)) for name, t in state_dict.items())
    out._metadata = state_dict._metadata
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_writer_matches_torch_save_bytes(dtype):
    state_dict = reference_state_dict(dtype)
    expected = torch_save_bytes(state_dict)
    actual = torch_format.dumps(as_numpy_state_dict(state_dict))
    assert len(actual) == len(expected)
    # Everything up to the serialization id record is identical; only the id's first 20
    # digits (a hash of the record names) are computed differently.
    id_header = expected.index(b"archive/.data/serialization_id") - 30
    assert actual[:id_header] == expected[:id_header]
    ids = [zipfile.ZipFile(io.BytesIO(blob)).read("archive/.data/serialization_id") for blob in (actual, expected)]
    assert ids[0][20:] == ids[1][20:]


def test_torch_loads_written_objects():
    state_dict = reference_state_dict(torch.bfloat16)
    obj = {
        "__quant_format__": "x",
        "state": as_numpy_state_dict(state_dict),
        "numbers": [1, -2, 300, 70_000, 2**40, 1.5, True, None],
        "scalar": np.asarray(2.5, np.float32),
        "types": {str(dtype): np.arange(5).astype(dtype) for dtype in (np.int8, np.uint8, np.int16, np.int32, np.float16,
                                                                       np.float64, np.bool_)},
    }
    loaded = torch.load(io.BytesIO(torch_format.dumps(obj)), weights_only=True)
    assert list(loaded["state"]) == list(state_dict)
    assert loaded["state"]._metadata == state_dict._metadata
    for name, tensor in state_dict.items():
        assert torch.equal(loaded["state"][name], tensor), name
    assert loaded["numbers"] == [1, -2, 300, 70_000, 2**40, 1.5, True, None]
    assert loaded["scalar"].shape == ()
    assert float(loaded["scalar"]) == 2.5
    for name, array in obj["types"].items():
        np.testing.assert_array_equal(loaded["types"][name].numpy(), array)


def test_reader_reads_torch_save_output():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "state": reference_state_dict(torch.bfloat16),
        "view": base[1:, ::2],  # offset and strides into a shared storage
        "same_storage": base,
        "transposed": base.t(),
        "parameter": torch.nn.Parameter(torch.ones(3)),
        "empty": torch.zeros(0, 5),
        "long": torch.tensor([1, 2**40]),
    }
    loaded = torch_format.loads(torch_save_bytes(obj), "saved.pt")
    assert loaded["state"]._metadata == obj["state"]._metadata
    for name, tensor in obj["state"].items():
        np.testing.assert_array_equal(raw_bytes(loaded["state"][name]), raw_bytes(to_numpy(tensor)), err_msg=name)
    for name in ("view", "same_storage", "transposed", "long"):
        np.testing.assert_array_equal(loaded[name], obj[name].numpy())
    np.testing.assert_array_equal(loaded["parameter"], np.ones(3, np.float32))
    assert loaded["empty"].shape == (0, 5)


def test_reader_rejects_other_globals():
    class Exploit:
        def __reduce__(self):
            return (print, ("this must not run",))

    blob = torch_format.dumps({"ok": np.ones(2, np.float32)})
    archive = zipfile.ZipFile(io.BytesIO(blob))
    patched = io.BytesIO()
    with zipfile.ZipFile(patched, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"ok": Exploit()}, protocol=2)
            out.writestr(info.filename, data)
    with pytest.raises(ArtifactError, match=r"evil\.pt: .*\.print is not allowed"):
        torch_format.loads(patched.getvalue(), "evil.pt")


def test_reader_rejects_non_zip_data():
    with pytest.raises(ArtifactError, match=r"junk\.pt: not a torch zip file"):
        torch_format.loads(b"PK\x03\x04 not really a zip", "junk.pt")


def test_writer_is_deterministic():
    state_dict = as_numpy_state_dict(reference_state_dict(torch.float32))
    assert torch_format.dumps(state_dict) == torch_format.dumps(state_dict)
