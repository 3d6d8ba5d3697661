"""``syncd sink``: its settings (file and flags) and the command as a real subprocess."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import pytest
from grpclib.client import Channel

from syncd.errors import ConfigError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.app.datasync.v1.data_sync_grpc import DataSyncServiceStub
from syncd.gen.proto.rpc.v1 import auth_pb2
from syncd.gen.proto.rpc.v1.auth_grpc import AuthServiceStub
from syncd.sink_config import load_sink_config
from syncd.sink_store_items import iter_store

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"sink listening on 127\.0\.0\.1:(\d+), storing into (\S+)")


# --- settings -------------------------------------------------------------------------


def test_file_with_every_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("s3cret\n")
    conf = tmp_path / "sink.yaml"
    conf.write_text(
        "listen: 0.0.0.0:8080\n"
        "store: received\n"
        "api_key_id: abc\n"
        "api_key_file: key\n"
        "max_message_bytes: 32MiB\n"
        "max_upload_bytes: 2 GB\n"
        "min_free_bytes: 1048576\n"
        "log_level: debug\n"
    )
    cfg = load_sink_config(conf)
    assert (cfg.host, cfg.port, cfg.store) == ("0.0.0.0", 8080, tmp_path / "received")
    assert (cfg.api_key_id, cfg.api_key) == ("abc", "s3cret")
    assert (cfg.max_message_bytes, cfg.max_upload_bytes, cfg.min_free_bytes) == (
        32 * 1024**2,
        2 * 1000**3,
        1024**2,
    )
    assert cfg.log_level == "debug"
    assert "s3cret" not in repr(cfg)


def test_flags_override_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "sink.yaml"
    conf.write_text("listen: '[::1]:9000'\nstore: /data\napi_key_id: a\napi_key_file: missing\n")
    cfg = load_sink_config(
        conf, {"listen": "127.0.0.1:0", "api_key": "k", "store": "rel", "log_level": None}
    )
    assert (cfg.host, cfg.port, cfg.api_key) == ("127.0.0.1", 0, "k")
    assert cfg.store == Path("rel")  # a flag's path is relative to where syncd runs
    assert load_sink_config(conf, {"api_key": "k"}).host == "::1"


def test_flags_alone() -> None:
    cfg = load_sink_config(None, {"listen": "localhost:50051", "store": "/srv/sink"})
    assert (cfg.host, cfg.port, cfg.store, cfg.api_key) == (
        "localhost",
        50051,
        Path("/srv/sink"),
        None,
    )


@pytest.mark.parametrize(
    "text,expected",
    [
        ("store: s\n", ["listen: required"]),
        ("listen: 'x:1'\n", ["store: required"]),
        ("listen: nope\nstore: s\n", ["sink.yaml: listen: 'nope' is not HOST:PORT"]),
        ("listen: 'h:70000'\nstore: s\n", ["listen: 'h:70000' is not HOST:PORT"]),
        ("listen: 'h:1'\nstore: s\nstroe: t\n", ["unknown key 'stroe' (did you mean 'store'?)"]),
        (
            "listen: 'h:1'\nstore: s\nmax_message_bytes: lots\n",
            ["max_message_bytes: 'lots' is not"],
        ),
        ("listen: 'h:1'\nstore: s\nmax_message_bytes: 1024\n", ["max_message_bytes: 1024 is out"]),
        ("listen: 'h:1'\nstore: s\nmin_free_bytes: -1\n", ["min_free_bytes: -1 is out of range"]),
        ("listen: 'h:1'\nstore: s\nlog_level: loud\n", ["log_level: 'loud' is not one of"]),
        ("listen: 'h:1'\nstore: s\napi_key_id: a\n", ["api_key (or api_key_file): required"]),
        ("listen: 'h:1'\nstore: s\napi_key: k\n", ["api_key_id: required"]),
        (
            "listen: 'h:1'\nstore: s\napi_key_id: a\napi_key: k\napi_key_file: f\n",
            ["api_key_file: give api_key or api_key_file, not both"],
        ),
        ("listen: 'h:1'\nstore: s\napi_key_id: a\napi_key_file: nowhere\n", ["cannot read"]),
        ("- a\n- b\n", ["expected a mapping", "listen: required", "store: required"]),
        ("listen: [1\n", ["not valid YAML at line", "listen: required", "store: required"]),
        (
            "listen: 1\nstore: 2\nmax_upload_bytes: 0\n",
            ["listen: 1 is not", "store: 2 is not a folder", "max_upload_bytes: 0 is out"],
        ),
    ],
)
def test_problems_one_line_each(tmp_path: Path, text: str, expected: list[str]) -> None:
    conf = tmp_path / "sink.yaml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sink_config(conf)
    problems = info.value.problems
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem
        assert "\n" not in problem


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    conf = tmp_path / "sink.yaml"
    conf.write_text("listen: 'h:1'\nstore: s\napi_key: ['top-secret']\n")
    with pytest.raises(ConfigError) as info:
        load_sink_config(conf)
    assert "top-secret" not in str(info.value)


def test_store_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        load_sink_config(None, {"listen": "h:1", "store": str(tmp_path / "f")})


# --- the command ----------------------------------------------------------------------


async def read_until(stream: asyncio.StreamReader, pattern: re.Pattern[str]) -> re.Match[str]:
    seen = []
    while True:
        line = (await asyncio.wait_for(stream.readline(), 15)).decode()
        if not line:
            raise AssertionError("the sink exited early:\n" + "".join(seen))
        seen.append(line)
        if match := pattern.search(line):
            return match


async def start_sink(syncd_cmd: list[str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *syncd_cmd, "sink", *args, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )


async def test_sink_command_serves_and_stops_on_sigterm(
    syncd_cmd: list[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    proc = await start_sink(
        syncd_cmd, "--listen", "127.0.0.1:0", "--store", str(store), "--log-level", "debug"
    )
    try:
        assert proc.stderr is not None
        match = await read_until(proc.stderr, LISTENING)
        port = int(match[1])
        assert port > 0 and match[2] == str(store)
        channel = Channel("127.0.0.1", port)
        try:
            um = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_BINARY_SENSOR)
            request = ds.DataCaptureUploadRequest(
                metadata=um, sensor_contents=[ds.SensorData(binary=b"hello")]
            )
            reply = await DataSyncServiceStub(channel).DataCaptureUpload(request)
        finally:
            channel.close()
        await read_until(proc.stderr, re.compile(f"stored binary {reply.binary_data_id}"))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert [i.read_bytes() for i in iter_store(store)] == [b"hello"]


async def test_sink_command_with_a_config_file_and_key(
    syncd_cmd: list[str], tmp_path: Path
) -> None:
    (tmp_path / "sink.key").write_text("k-123\n")
    conf = tmp_path / "sink.yaml"
    conf.write_text(
        "listen: 127.0.0.1:1\nstore: received\napi_key_id: id-1\napi_key_file: sink.key\n"
    )
    proc = await start_sink(syncd_cmd, "-c", str(conf), "--listen", "127.0.0.1:0")
    try:
        assert proc.stderr is not None
        match = await read_until(proc.stderr, LISTENING)
        assert match[2] == str(tmp_path / "received")
        channel = Channel("127.0.0.1", int(match[1]))
        try:
            auth = await AuthServiceStub(channel).Authenticate(
                auth_pb2.AuthenticateRequest(
                    entity="id-1", credentials=auth_pb2.Credentials(type="api-key", payload="k-123")
                )
            )
            assert auth.access_token
        finally:
            channel.close()
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        rest = (await proc.stderr.read()).decode()
        assert "k-123" not in rest and auth.access_token not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_bad_sink_config_exits_2_with_one_line(syncd_cmd: list[str], tmp_path: Path) -> None:
    conf = tmp_path / "sink.yaml"
    conf.write_text("listen: 127.0.0.1:0\nstore: s\nmax_message_bytes: lots\n")
    result = subprocess.run(
        [*syncd_cmd, "sink", "-c", str(conf)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("syncd: ") and "max_message_bytes" in lines[0]


def test_missing_store_flag_exits_2(syncd_cmd: list[str]) -> None:
    result = subprocess.run(
        [*syncd_cmd, "sink", "--listen", "127.0.0.1:0"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "syncd: store: required (a folder, in the config file or as --store)"
    ]
