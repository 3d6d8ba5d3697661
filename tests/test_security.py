"""Security: secrets never reach a log, keys are not exposed on disk or on the wire, and
TLS verifies the server.

- A full `syncd run --once` at debug level with an API key (from the file and from the
  environment), against a receiver that requires it and revokes the token half-way (so
  the client authenticates again), and with a wrong key: no log line holds the key, a
  token, or an authorization header. The same for `syncd sink` at debug level.
- A config or key file readable by other users: warned about by `syncd check-config` and
  `syncd run`.
- An API key over plaintext to a non-loopback address: refused by config validation
  unless ``cloud.allow_insecure``.
- TLS against a local server with a self-signed CA: refused without ``cloud.ca_file``,
  accepted with it, refused again when the certificate names another host.

The sink's own checks (path safety of uploaded names and a symlink planted in the store,
API-key and token checks on every call) are in tests/test_sink_server.py:
test_path_tricks_stay_inside_the_store, test_a_link_out_of_the_store_is_refused,
test_wrong_credentials_are_unauthenticated, test_data_calls_need_a_valid_token.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
from pathlib import Path

import pytest
from capture_gen import sample_tabular, tabular_header, write_capture
from daemon_support import ROOT, SYNCD, free_port, wait_listening, write_config
from grpclib.client import Channel
from recording_server import RecordingServer, Upload

from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.app.datasync.v1.data_sync_grpc import DataSyncServiceStub
from syncd.gen.proto.rpc.v1 import auth_pb2
from syncd.gen.proto.rpc.v1.auth_grpc import AuthServiceStub
from syncd.outbox import Outbox

KEY_ID = "key-id-1"
KEY = "SECRET-api-key-0123456789abcdef"


async def run_syncd(*args: str, env: dict | None = None, timeout: float = 90) -> tuple[int, str]:
    """A `syncd` subprocess on the running loop; returns (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *SYNCD,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(errors="replace")


class _Polled:
    """An asyncio subprocess as wait_listening wants it (``poll``, ``returncode``)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    def poll(self) -> int | None:
        return self._proc.returncode

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode


def assert_no_secrets(text: str, secrets: list[str]) -> None:
    assert text.strip(), "no log output at all: the check would prove nothing"
    for secret in secrets:
        assert secret not in text, f"a secret reached the log: {secret[:6]}..."
    assert "Bearer" not in text and "authorization" not in text.lower()


def some_data(tmp_path: Path) -> None:
    for i in range(3):
        write_capture(tmp_path / "capture", tabular_header(name=f"s{i}"), sample_tabular(5))
    (tmp_path / "capture" / "notes.txt").write_text("notes")
    with Outbox(tmp_path / "state") as ob:
        ob.add_tabular("rdk:component:sensor", "api", "Readings", {"x": 1})


# --- secrets never logged -------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "environment"])
async def test_run_at_debug_level_never_logs_the_key_or_a_token(tmp_path, where):
    async with RecordingServer(KEY_ID, KEY) as server:
        revoked = {"done": False}

        async def on_message(upload: Upload, index: int, stream) -> None:
            if not revoked["done"]:  # the first upload's token goes stale: authenticate again
                revoked["done"] = True
                server.revoke_tokens()

        server.on_message = on_message
        cloud = {"api_key_id": KEY_ID}
        env = {}
        if where == "file":
            cloud["api_key"] = KEY
        else:
            env["SYNCD_API_KEY"] = KEY
        config = write_config(
            tmp_path, server.port, cloud=cloud, log_level="debug", file_quiet_period_s=0
        )
        some_data(tmp_path)
        code, out = await run_syncd("run", "-c", str(config), "--once", "--timeout", "60", env=env)
        assert code == 0, out
        assert len(server.issued) >= 2 and "authenticating again" in out
        assert "DEBUG" in out  # debug lines were written
        assert_no_secrets(out, [KEY, *server.issued])
        assert {u.metadata.component_name for u in server.uploads} >= {"s0", "s1", "s2", "api"}
        for upload in server.uploads:
            assert upload.authorization is not None

        # a wrong key: refused, retried, still never logged
        wrong = "WRONG-key-fedcba9876543210"
        config = write_config(
            tmp_path,
            server.port,
            cloud={"api_key_id": KEY_ID, "api_key": wrong},
            log_level="debug",
            name="wrong.yaml",
        )
        (tmp_path / "capture" / "more.txt").write_text("more")
        code, out = await run_syncd("run", "-c", str(config), "--once", "--timeout", "2")
        assert code == 1, out
        assert "UNAUTHENTICATED" in out
        assert_no_secrets(out, [wrong, KEY, *server.issued])


async def test_sink_at_debug_level_never_logs_the_key_or_a_token(tmp_path):
    port = free_port()
    store = tmp_path / "store"
    key_file = tmp_path / "sink.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    sink = await asyncio.create_subprocess_exec(
        *SYNCD,
        "sink",
        "--listen",
        f"127.0.0.1:{port}",
        "--store",
        str(store),
        "--api-key-id",
        KEY_ID,
        "--api-key-file",
        str(key_file),
        "--log-level",
        "debug",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(wait_listening, port, _Polled(sink))
        config = write_config(
            tmp_path,
            port,
            cloud={"api_key_id": KEY_ID, "api_key": KEY},
            log_level="debug",
            file_quiet_period_s=0,
        )
        some_data(tmp_path)
        code, daemon_out = await run_syncd("run", "-c", str(config), "--once", "--timeout", "60")
        assert code == 0, daemon_out
        # a token we can see: our own client's
        channel = Channel("127.0.0.1", port)
        try:
            reply = await AuthServiceStub(channel).Authenticate(
                auth_pb2.AuthenticateRequest(
                    entity=KEY_ID, credentials=auth_pb2.Credentials(type="api-key", payload=KEY)
                )
            )
            token = reply.access_token
            request = ds.DataCaptureUploadRequest(
                metadata=ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_BINARY_SENSOR),
                sensor_contents=[ds.SensorData(binary=b"x")],
            )
            await DataSyncServiceStub(channel).DataCaptureUpload(
                request, metadata={"authorization": f"Bearer {token}"}
            )
            with pytest.raises(Exception, match="invalid"):
                await DataSyncServiceStub(channel).DataCaptureUpload(
                    request, metadata={"authorization": "Bearer not-" + token}
                )
        finally:
            channel.close()
    finally:
        sink.terminate()
        out, _ = await sink.communicate()
    sink_out = out.decode(errors="replace")
    assert "DEBUG" in sink_out
    assert_no_secrets(sink_out, [KEY, token])
    assert_no_secrets(daemon_out, [KEY, token])


# --- key files readable by others ------------------------------------------------------


def test_key_readable_by_others_warns_in_the_cli(tmp_path):
    config = write_config(tmp_path, 443, cloud={"api_key_id": KEY_ID, "api_key": KEY})
    config.chmod(0o644)
    result = subprocess.run(
        [*SYNCD, "check-config", "-c", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0
    assert "warning" in result.stderr and "readable by other users" in result.stderr
    assert f"chmod 600 {config}" in result.stderr
    assert KEY not in result.stdout + result.stderr
    config.chmod(0o600)
    result = subprocess.run(
        [*SYNCD, "check-config", "-c", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert "readable by other users" not in result.stderr

    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o644)
    config = write_config(
        tmp_path, 443, cloud={"api_key_id": KEY_ID, "api_key_file": key_file}, name="kf.yaml"
    )
    result = subprocess.run(
        [*SYNCD, "check-config", "-c", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert "api_key_file" in result.stderr and "readable by other users" in result.stderr
    assert KEY not in result.stdout + result.stderr


async def test_key_readable_by_others_warns_when_running(tmp_path):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, cloud={"api_key_id": KEY_ID, "api_key": KEY})
        config.chmod(0o644)
        _, out = await run_syncd("run", "-c", str(config), "--once", "--timeout", "2")
    assert "WARNING" in out and "readable by other users" in out
    assert KEY not in out


# --- no key in plaintext over the network -----------------------------------------------


@pytest.mark.parametrize(
    "address,refused",
    [
        ("robots.example.com:8080", True),
        ("10.1.2.3:8080", True),
        ("127.0.0.1.nip.io:8080", True),  # a name, not a loopback address
        ("[fe80::1]:8080", True),
        ("127.0.0.1:8080", False),
        ("127.8.9.10:8080", False),
        ("localhost:8080", False),
        ("[::1]:8080", False),
    ],
)
def test_a_key_never_goes_in_plaintext_off_the_machine(tmp_path, address, refused):
    config = write_config(
        tmp_path, 1, cloud={"address": address, "api_key_id": KEY_ID, "api_key": KEY}
    )
    result = subprocess.run(
        [*SYNCD, "check-config", "-c", str(config)], capture_output=True, text=True, cwd=ROOT
    )
    assert KEY not in result.stdout + result.stderr
    if refused:
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "cloud.tls" in line and "plaintext" in line and "allow_insecure" in line
        allowed = write_config(
            tmp_path,
            1,
            cloud={
                "address": address,
                "api_key_id": KEY_ID,
                "api_key": KEY,
                "allow_insecure": True,
            },
            name="allowed.yaml",
        )
        assert load_config(allowed).cloud.allow_insecure
    else:
        assert result.returncode == 0, result.stderr


def test_a_key_from_the_environment_is_held_to_the_same_rule(tmp_path):
    config = write_config(
        tmp_path, 1, cloud={"address": "robots.example.com:8080", "api_key_id": KEY_ID}
    )
    result = subprocess.run(
        [*SYNCD, "check-config", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "SYNCD_API_KEY": KEY},
    )
    assert result.returncode == 2 and "plaintext" in result.stderr
    assert KEY not in result.stdout + result.stderr


# --- TLS verification ----------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost signed by it, and one for
    another name: made with the openssl command line."""
    d = tmp_path_factory.mktemp("pki")
    try:
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=syncd test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make certificates with openssl: {exc}")
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("other", "DNS:other.example")):
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d,
        )  # fmt: skip
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    return d


def server_context(pki: Path, name: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / f"{name}.pem", pki / f"{name}.key")
    context.set_alpn_protocols(["h2"])
    return context


async def sync_over_tls(tmp_path: Path, pki: Path, cert: str, ca: bool, caplog) -> tuple:
    async with RecordingServer(KEY_ID, KEY) as server:
        pass  # only for a free port number's sake: the TLS one starts below
    server = RecordingServer(KEY_ID, KEY)
    await server.start("127.0.0.1", ssl=server_context(pki, cert))
    try:
        cloud = {"tls": True, "api_key_id": KEY_ID, "api_key": KEY}
        if ca:
            cloud["ca_file"] = pki / "ca.pem"
        config = write_config(tmp_path, server.port, cloud=cloud, file_quiet_period_s=0)
        (tmp_path / "capture" / "secret-notes.txt").write_text("over TLS only")
        with caplog.at_level(logging.INFO):
            code = await run_daemon(load_config(config), once=True, timeout=1.5)
    finally:
        await server.stop()
    return code, server, caplog.text


async def test_tls_refuses_an_unknown_ca(tmp_path, pki, caplog):
    code, server, text = await sync_over_tls(tmp_path, pki, "server", False, caplog)
    assert code == 1
    assert server.uploads == [] and server.auth_calls == []  # the key never left
    assert "CERTIFICATE_VERIFY_FAILED" in text


async def test_tls_with_the_ca_configured_syncs(tmp_path, pki, caplog):
    code, server, text = await sync_over_tls(tmp_path, pki, "server", True, caplog)
    assert code == 0, text
    (upload,) = server.uploads
    assert upload.payload == b"over TLS only" and upload.authorization


async def test_tls_refuses_a_certificate_for_another_host(tmp_path, pki, caplog):
    code, server, text = await sync_over_tls(tmp_path, pki, "other", True, caplog)
    assert code == 1
    assert server.uploads == [] and server.auth_calls == []
    assert "CERTIFICATE_VERIFY_FAILED" in text and "127.0.0.1" in text
