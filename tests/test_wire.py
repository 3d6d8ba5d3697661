"""Wire compatibility: our messages encode to the bytes Viam's field tables dictate.

Expected byte strings are derived by hand from the tag bytes in the wire spec, so a
wrong field number, type or package in protos/ changes them and fails these tests.
"""

from __future__ import annotations

import struct

from google.protobuf import any_pb2, struct_pb2, timestamp_pb2

from syncd import mapping
from syncd.gen.app.data.v1 import data_pb2
from syncd.gen.app.datasync.v1 import data_sync_grpc
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.proto.rpc.v1 import auth_grpc, auth_pb2


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (payloads here are all shorter than 128 bytes)."""
    assert len(payload) < 128
    return bytes([tag, len(payload)]) + payload


def _double(tag: int, value: float) -> bytes:
    return bytes([tag]) + struct.pack("<d", value)


def _check(message, expected: bytes) -> None:
    assert message.SerializeToString(deterministic=True).hex(" ") == expected.hex(" ")
    assert type(message).FromString(expected) == message


UPLOAD_METADATA_BYTES = b"".join(
    [
        _ld(0x0A, b"p"),  # part_id = 1
        _ld(0x12, b"t"),  # component_type = 2
        _ld(0x1A, b"n"),  # component_name = 3
        _ld(0x2A, b"m"),  # method_name = 5
        b"\x30\x03",  # type = 6, DATA_TYPE_FILE = 3
        _ld(0x3A, b"f"),  # file_name = 7
        _ld(0x42, _ld(0x0A, b"k") + _ld(0x12, _ld(0x0A, b"u") + _ld(0x12, b"v"))),  # 8
        _ld(0x4A, b".x"),  # file_extension = 9
        _ld(0x52, b"a"),  # tags = 10
        _ld(0x52, b"b"),
        _ld(0x62, b"d"),  # dataset_ids = 12
        _ld(0x6A, b"i/j"),  # mime_type = 13
        _ld(0x72, b"\x08\x01\x10\x02"),  # file_create_time = 14
        _ld(0x7A, b"\x08\x03"),  # file_modify_time = 15
    ]
)


def _upload_metadata() -> ds.UploadMetadata:
    md = ds.UploadMetadata(
        part_id="p",
        component_type="t",
        component_name="n",
        method_name="m",
        type=ds.DATA_TYPE_FILE,
        file_name="f",
        file_extension=".x",
        tags=["a", "b"],
        dataset_ids=["d"],
        mime_type="i/j",
        file_create_time=timestamp_pb2.Timestamp(seconds=1, nanos=2),
        file_modify_time=timestamp_pb2.Timestamp(seconds=3),
    )
    md.method_parameters["k"].CopyFrom(any_pb2.Any(type_url="u", value=b"v"))
    return md


def test_upload_metadata_every_field():
    _check(_upload_metadata(), UPLOAD_METADATA_BYTES)


SENSOR_METADATA_BYTES = b"".join(
    [
        _ld(0x0A, b"\x08\x01"),  # time_requested = 1
        _ld(0x12, b"\x08\x02"),  # time_received = 2
        b"\x18\x01",  # mime_type = 3 (deprecated enum), IMAGE_JPEG = 1
        _ld(
            0x22,  # annotations = 4
            _ld(
                0x0A,  # bboxes = 1
                _ld(0x0A, b"i")
                + _ld(0x12, b"l")
                + _double(0x19, 0.5)
                + _double(0x21, 0.25)
                + _double(0x29, 0.75)
                + _double(0x31, 1.0)
                + _double(0x39, 0.9),
            )
            + _ld(0x12, _ld(0x0A, b"c") + _double(0x11, 0.8) + _ld(0x1A, b"k")),
        ),
    ]
)


def _sensor_metadata() -> ds.SensorMetadata:
    return ds.SensorMetadata(
        time_requested=timestamp_pb2.Timestamp(seconds=1),
        time_received=timestamp_pb2.Timestamp(seconds=2),
        mime_type=ds.MIME_TYPE_IMAGE_JPEG,
        annotations=data_pb2.Annotations(
            bboxes=[
                data_pb2.BoundingBox(
                    id="i",
                    label="l",
                    x_min_normalized=0.5,
                    y_min_normalized=0.25,
                    x_max_normalized=0.75,
                    y_max_normalized=1.0,
                    confidence=0.9,
                )
            ],
            classifications=[data_pb2.Classification(label="c", confidence=0.8, id="k")],
        ),
    )


def test_sensor_data_with_struct():
    reading = struct_pb2.Struct()
    reading.update({"x": 1.0})
    value = _double(0x11, 1.0)  # Value.number_value = 2
    struct_bytes = _ld(0x0A, _ld(0x0A, b"x") + _ld(0x12, value))  # Struct.fields = 1
    expected = _ld(0x0A, SENSOR_METADATA_BYTES) + _ld(0x12, struct_bytes)
    _check(ds.SensorData(metadata=_sensor_metadata(), struct=reading), expected)


def test_sensor_data_with_binary():
    expected = _ld(0x0A, SENSOR_METADATA_BYTES) + _ld(0x1A, b"\xff\xd8jpeg")
    _check(ds.SensorData(metadata=_sensor_metadata(), binary=b"\xff\xd8jpeg"), expected)


def test_file_upload_request_metadata_then_contents():
    _check(ds.FileUploadRequest(metadata=_upload_metadata()), _ld(0x0A, UPLOAD_METADATA_BYTES))
    chunk = ds.FileUploadRequest(file_contents=ds.FileData(data=b"abc"))
    _check(chunk, _ld(0x12, _ld(0x0A, b"abc")))


def test_file_metadata_request_framed_by_hand_is_what_protobuf_makes():
    for md in (ds.UploadMetadata(), _upload_metadata(), ds.UploadMetadata(file_name="x" * 200)):
        expected = ds.FileUploadRequest(metadata=md).SerializeToString()
        assert mapping.file_metadata_request(md) == expected


def test_chunk_requests_framed_by_hand_are_what_protobuf_makes():
    # Sizes around each varint length boundary, an empty chunk, and a memoryview.
    for size in (0, 1, 126, 127, 128, 16_381, 16_382, 16_383, 16_384, 65_536, 2_097_152):
        data = bytes(i % 251 for i in range(size))
        for chunk in (data, memoryview(data)):
            file_request = ds.FileUploadRequest(file_contents=ds.FileData(data=data))
            assert mapping.file_chunk_request(chunk) == file_request.SerializeToString()
            streaming = ds.StreamingDataCaptureUploadRequest(data=data)
            assert mapping.streaming_chunk_request(chunk) == streaming.SerializeToString()


def test_streaming_and_unary_requests():
    header = ds.DataCaptureUploadMetadata(
        upload_metadata=_upload_metadata(), sensor_metadata=_sensor_metadata()
    )
    header_bytes = _ld(0x0A, UPLOAD_METADATA_BYTES) + _ld(0x12, SENSOR_METADATA_BYTES)
    _check(header, header_bytes)
    first = ds.StreamingDataCaptureUploadRequest(metadata=header)
    assert first.SerializeToString()[:1] == b"\x0a"
    _check(ds.StreamingDataCaptureUploadRequest(data=b"zz"), _ld(0x12, b"zz"))
    unary = ds.DataCaptureUploadRequest(
        metadata=_upload_metadata(), sensor_contents=[ds.SensorData(binary=b"q")]
    )
    _check(unary, _ld(0x0A, UPLOAD_METADATA_BYTES) + _ld(0x12, _ld(0x1A, b"q")))
    _check(ds.DataCaptureUploadResponse(file_id="f", binary_data_id="b"), b"\x0a\x01f\x12\x01b")


def test_capture_file_header():
    header = ds.DataCaptureMetadata(
        component_type="t",
        component_name="n",
        method_name="m",
        type=ds.DATA_TYPE_TABULAR_SENSOR,
        file_extension=".dat",
        tags=["a"],
        mime_type="x/y",
    )
    header.method_parameters["k"].CopyFrom(any_pb2.Any(type_url="u", value=b"v"))
    expected = b"".join(
        [
            _ld(0x0A, b"t"),
            _ld(0x12, b"n"),
            _ld(0x22, b"m"),
            b"\x28\x02",
            _ld(0x32, _ld(0x0A, b"k") + _ld(0x12, _ld(0x0A, b"u") + _ld(0x12, b"v"))),
            _ld(0x3A, b".dat"),
            _ld(0x42, b"a"),
            _ld(0x52, b"x/y"),
        ]
    )
    _check(header, expected)


def test_authenticate_request():
    request = auth_pb2.AuthenticateRequest(
        entity="e", credentials=auth_pb2.Credentials(type="api-key", payload="s")
    )
    expected = _ld(0x0A, b"e") + _ld(0x12, _ld(0x0A, b"api-key") + _ld(0x12, b"s"))
    _check(request, expected)
    _check(auth_pb2.AuthenticateResponse(access_token="t"), b"\x0a\x01t")


def test_enum_numbers():
    assert [ds.DATA_TYPE_UNSPECIFIED, ds.DATA_TYPE_BINARY_SENSOR] == [0, 1]
    assert [ds.DATA_TYPE_TABULAR_SENSOR, ds.DATA_TYPE_FILE] == [2, 3]
    assert ds.MIME_TYPE_APPLICATION_PCD == 3 and ds.MIME_TYPE_VIDEO_MP4 == 4


def test_rpc_paths():
    class Service(data_sync_grpc.DataSyncServiceBase):
        DataCaptureUpload = FileUpload = StreamingDataCaptureUpload = None

    class Auth(auth_grpc.AuthServiceBase):
        Authenticate = None

    assert sorted(Service().__mapping__()) == [
        "/viam.app.datasync.v1.DataSyncService/DataCaptureUpload",
        "/viam.app.datasync.v1.DataSyncService/FileUpload",
        "/viam.app.datasync.v1.DataSyncService/StreamingDataCaptureUpload",
    ]
    assert list(Auth().__mapping__()) == ["/proto.rpc.v1.AuthService/Authenticate"]
