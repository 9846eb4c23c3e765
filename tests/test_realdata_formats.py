"""The formats written for other tools: TensorBoard event files (checked with protobuf's own decoder),
safetensors (checked against the format's layout), and the tokenizer keys of the sweep spec (old specs
keep their dataset hash)."""
import json
import struct

import numpy as np
import pytest


def _event_class():
    """Event/Summary/Value from TensorFlow's event.proto and summary.proto (the fields we write), built
    with protobuf's descriptor machinery: an independent decoder."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="medscale_test_event.proto", package="mstest")
    value = proto.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = proto.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".mstest.Value", label=F.LABEL_REPEATED)
    event = proto.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".mstest.Summary", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("mstest.Event"))


def test_crc32c_is_castagnoli():
    from medscale.scaling.run.tracking import crc32c

    assert crc32c(b"123456789") == 0xE3069283   # the CRC-32C check value (RFC 3720, B.4)
    assert crc32c(b"") == 0


def test_event_files_decode_with_protobuf_and_read_back(tmp_path):
    from medscale.scaling.run.tracking import EventFileWriter, read_records, read_scalars

    writer = EventFileWriter(tmp_path / "tb")
    writer.scalars(10, {"loss/held_out": 3.25, "lr": 1e-3, "grad_norm": None})
    writer.scalars(2**40, {"loss/held_out": 2.5})
    writer.close()
    Event = _event_class()
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    events = [Event.FromString(r) for r in read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert [e.step for e in events[1:]] == [10, 2**40]
    assert {v.tag: v.simple_value for v in events[1].summary.value} == {"loss/held_out": 3.25,
                                                                         "lr": pytest.approx(1e-3)}
    assert read_scalars(tmp_path) == {"loss/held_out": [(10, 3.25), (2**40, 2.5)], "lr": [(10, pytest.approx(1e-3))]}
    blob = bytearray(path.read_bytes())
    blob[-6] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="crc32c"):
        read_records(path)


def test_safetensors_layout(tmp_path):
    import ml_dtypes

    from medscale.scaling.run.export import read_safetensors, write_safetensors

    tensors = {"b.w_DxF": np.arange(6, dtype=np.float32).reshape(2, 3), "a.scale": np.array([1.5], np.float32),
               "c.half": np.array([1.0, -2.0], dtype=ml_dtypes.bfloat16), "d.ids": np.array([7], np.int32)}
    path = write_safetensors(tmp_path / "m.safetensors", tensors, {"run_id": "x"})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(blob[8:8 + n])
    assert header["__metadata__"] == {"run_id": "x"}
    assert header["b.w_DxF"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [header["a.scale"]["data_offsets"][1],
                                                                                  header["a.scale"]["data_offsets"][1] + 24]}
    assert header["c.half"]["dtype"] == "BF16" and header["d.ids"]["dtype"] == "I32"
    begin, end = header["b.w_DxF"]["data_offsets"]
    assert blob[8 + n + begin: 8 + n + end] == tensors["b.w_DxF"].astype("<f4").tobytes()
    assert 8 + n + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == len(blob)
    back, meta = read_safetensors(path)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)


def _spec(tokenizer):
    from medscale.scaling.sweep.spec import parse_spec

    return parse_spec({"name": "x", "objective": "decoder", "grid": {"mode": "ladder", "params": [1e5], "tokens": [1e6]},
                       "dataset": {"simulator": {"subjects": 10, "seed": 0}, "tokenizer": tokenizer}})


@pytest.mark.parametrize("tokenizer", [{}, {"min_count": 3, "value_bins": 7}])
def test_specs_from_before_the_tokenizer_keys_keep_their_dataset_id(tokenizer):
    from medscale.scaling.sweep.spec import dataset_id
    from medscale.scaling.sweep.step_dir import identity_hash

    full = {"min_count": 5, "value_bins": 10, **tokenizer}
    before = identity_hash({"dataset": {"simulator": {"subjects": 10, "seed": 0}, "meds": None, "tokenizer": full},
                            "format": 1})   # the identity as it was computed before time_scheme & co existed
    assert dataset_id(_spec(tokenizer)) == before
    explicit = {**tokenizer, "time_scheme": "bins", "values": "separate", "demographics": True}
    assert dataset_id(_spec(explicit)) == before


def test_each_tokenizer_choice_is_its_own_dataset():
    from medscale.scaling.sweep.spec import SpecError, dataset_id

    variants = [{}, {"time_scheme": "interval"}, {"values": "fused"}, {"demographics": False}, {"value_bins": "none"},
                {"value_bins": 0}]
    ids = [dataset_id(_spec(t)) for t in variants]
    assert len(set(ids[:5])) == 5 and ids[4] == ids[5]
    config = _spec({"time_scheme": "interval", "values": "fused", "demographics": False, "value_bins": 4}).dataset.tokenizer.to_config()
    assert (config.time_scheme, config.value_scheme, config.demographics, config.n_value_bins) == ("interval", "fused", False, 4)
    with pytest.raises(SpecError, match="time_scheme"):
        _spec({"time_scheme": "ethos"})
    with pytest.raises(SpecError, match="value_bins"):
        _spec({"value_bins": 500})
