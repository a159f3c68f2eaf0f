"""fast_publish over TLS (`rediss://`), against a real redis-server that speaks only TLS.

A throwaway certificate authority and server certificate are made with openssl in the
test's directory; redis-server listens with `--port 0 --tls-port`, so nothing reaches it
in plain text. The scaffolded API publishes through the fast path (its route carries
TLS), a real prefork worker on the same TLS server runs what it wrote, and a client
that does not trust the server's certificate is refused instead of falling back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    AUTH,
    free_port,
    missing,
    port_open,
    runner_python,
    running,
    scaffold,
    serve_app,
    start_process,
    wait_until,
)

pytestmark = pytest.mark.e2e


@dataclass
class TlsRedis:
    port: int
    ca: Path  # the certificate authority that signed the server's certificate
    other_ca: Path  # one that did not

    def url(self, db: int, query: str = "") -> str:
        return f"rediss://127.0.0.1:{self.port}/{db}{query}"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _make_ca(name: str, cwd: Path) -> None:
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}"),
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        missing("redis-server and openssl are needed for the TLS tests")
    certs = tmp_path_factory.mktemp("celery-tls-certs")
    _make_ca("ca", certs)
    _make_ca("other-ca", certs)
    (certs / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"),
        *("-keyout", "server.key", "-out", "server.csr"),
        cwd=certs,
    )
    _openssl(
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
        *("-CAcreateserial", "-days", "1", "-extfile", "san.cnf", "-out", "server.pem"),
        cwd=certs,
    )
    port = free_port()
    proc = start_process(
        [
            str(binary),
            *("--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *("--tls-cert-file", "server.pem", "--tls-key-file", "server.key"),
            *("--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(certs)),
        ],
        cwd=certs,
        log_path=certs / "redis.log",
    )
    with running(proc):

        def up() -> bool:
            if not proc.alive():
                missing(f"redis-server without TLS support:\n{proc.log()}")
            return port_open("127.0.0.1", port)

        wait_until(up, 10, "redis-server with TLS")
        yield TlsRedis(port, certs / "ca.pem", certs / "other-ca.pem")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scaffold("layered", tmp_path_factory.mktemp("celery-tls"), "--runner", "celery")


def _env(tls: TlsRedis, trust: Path, query: str = "") -> dict[str, str]:
    return {
        "CELERY_BROKER_URL": tls.url(0, query),
        "CELERY_RESULT_BACKEND": tls.url(1, query),
        # what the system trusts (no ssl_ca_certs in the URL): our throwaway CA
        "SSL_CERT_FILE": str(trust),
    }


# Run in the project's environment: where fast_publish would write, then one message
# through it, reported as JSON.
PUBLISH = """
import asyncio, json, sys, uuid
from kombu.exceptions import OperationalError
from app.tasks import fast_publish, registry, tasks

async def main():
    found = fast_publish.route()
    out = {"fast": found is not None}
    if found is not None:
        out["broker_tls"] = found.broker.get("connection_class", type).__name__
        out["backend_tls"] = found.backend.get("connection_class", type).__name__
        task_id = str(uuid.uuid4())
        try:
            await fast_publish.enqueue(
                tasks.process_order, {"order_id": 7}, task_id=task_id, ttl=600
            )
            out["sent"] = task_id
        except OperationalError as exc:
            chain, cause = [], exc
            while cause is not None:
                chain.append(repr(cause))
                cause = cause.__cause__ or cause.__context__
            out["error"] = " <- ".join(chain)
        await fast_publish.aclose()
    print(json.dumps(out))

asyncio.run(main())
"""


def _publish(python: Path, project: Path, env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        [str(python), "-c", PUBLISH],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project), "BGTASKS_API_TOKEN": "x", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, str] = json.loads(result.stdout.splitlines()[-1])
    return out


def _queue_length(tls: TlsRedis) -> int:
    out = subprocess.run(
        ["redis-cli", "--tls", "--cacert", str(tls.ca), "-p", str(tls.port), "-n", "0"]
        + ["--raw", "LLEN", "celery"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return int(out.stdout.strip())


def test_the_api_publishes_over_tls_on_the_fast_path_and_the_worker_runs_it(
    tls_redis: TlsRedis, project: Path, tmp_path: Path
) -> None:
    python = runner_python("celery")
    env = _env(tls_redis, tls_redis.ca)
    probe = _publish(python, project, env)
    assert probe["fast"] is True, probe
    assert probe["broker_tls"] == probe["backend_tls"] == "SSLConnection", probe
    assert "sent" in probe, probe
    worker = start_process(
        [str(python), "-m", "celery", "-A", "app.tasks.celery_app", "worker"]
        + ["-P", "prefork", "-c", "1", "--loglevel=info", "--without-mingle"]
        + ["-n", f"tls-{uuid.uuid4().hex[:6]}@%h", "--without-gossip"],
        cwd=project,
        log_path=tmp_path / "worker.log",
        env={**env, "PYTHONPATH": str(project)},
    )
    server, base = serve_app(python, project, "app.main:app", tmp_path / "uvicorn.log", env)
    with running(worker, server):
        wait_until(lambda: " ready." in worker.log() or not worker.alive(), 30, "worker")
        assert worker.alive(), worker.log()

        def final(task_id: str) -> dict[str, object] | None:
            response = httpx.get(f"{base}/tasks/status/{task_id}", headers=AUTH, timeout=10)
            assert response.status_code == 200, response.text
            body: dict[str, object] = response.json()
            return body if body["status"] == "complete" else None

        # the one the probe wrote, then ones the API queues
        done = wait_until(lambda: final(probe["sent"]), 30, "the probe's task")
        assert done["success"] is True, (done, worker.log())
        for n in (1, 2, 3):
            response = httpx.post(
                f"{base}/tasks/process-order", json={"order_id": n}, headers=AUTH, timeout=10
            )
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            done = wait_until(lambda task_id=task_id: final(task_id), 30, "a queued order")
            assert done["success"] is True, (done, worker.log())
            assert done["result"] == {"order_id": n, "status": "processed"}
    assert "published in the threadpool" not in server.log(), server.log()


def test_the_url_can_name_the_certificate_authority(tls_redis: TlsRedis, project: Path) -> None:
    python = runner_python("celery")
    query = f"?ssl_cert_reqs=required&ssl_ca_certs={tls_redis.ca}"
    before = _queue_length(tls_redis)
    # the system trusts another CA: only the URL's makes the connection succeed
    probe = _publish(python, project, _env(tls_redis, tls_redis.other_ca, query))
    assert probe["fast"] is True and "sent" in probe, probe
    assert _queue_length(tls_redis) == before + 1


def test_a_server_certificate_not_trusted_is_refused(tls_redis: TlsRedis, project: Path) -> None:
    python = runner_python("celery")
    before = _queue_length(tls_redis)
    probe = _publish(python, project, _env(tls_redis, tls_redis.other_ca))
    assert probe["fast"] is True, probe
    assert "certificate verify failed" in probe.get("error", ""), probe
    assert _queue_length(tls_redis) == before


# Serves the app's lifespan with the fast path unable to follow the blocking one (a
# celery release it was not verified against, or a rediss:// broker whose client has
# no TLS options), and reports what was logged at startup and after further publishes.
FALLBACK = """
import io, json, logging, sys
stream = io.StringIO()
logging.basicConfig(level=logging.WARNING, stream=stream, format="%(levelname)s %(message)s")
from app.tasks import fast_publish
from app.tasks.celery_app import celery_app
if sys.argv[1] == "release":
    fast_publish.VERIFIED_RELEASES = ()
else:
    celery_app.conf.broker_use_ssl = None
from fastapi.testclient import TestClient
from app.main import app
with TestClient(app):
    at_startup = stream.getvalue()
    later = (fast_publish.route(), fast_publish.route())
print(json.dumps({"startup": at_startup, "all": stream.getvalue(), "later": repr(later)}))
"""


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("release", "are not verified"),
        ("no-tls-options", "the broker URL is rediss:// but its client has no TLS options"),
    ],
)
def test_a_fallback_is_logged_once_at_startup_with_its_reason(
    tls_redis: TlsRedis, project: Path, case: str, reason: str
) -> None:
    python = runner_python("celery")
    result = subprocess.run(
        [str(python), "-c", FALLBACK, case],
        cwd=project,
        env={
            **os.environ,
            **_env(tls_redis, tls_redis.ca),
            "PYTHONPATH": str(project),
            "BGTASKS_API_TOKEN": "x",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    lines = [line for line in out["all"].splitlines() if "fast_publish is off" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith("WARNING ") and reason in lines[0], lines
    assert lines[0] in out["startup"], out  # before any request
    assert out["later"] == "(None, None)", out
