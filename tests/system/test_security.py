"""Security against real servers: loopback-only embedded servers, NATS nkey and JWT (creds file)
authentication, and database credentials that never reach output, logs or the journal.

Keys and JWTs are made offline with the `nkeys` package (nats-py's own dependency for nkey
auth): an operator signs an account, the account signs a user, as `nsc` would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nkeys
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from journal.connection import JournalUnavailable
from journal.embedded import EmbeddedNats, free_port, nats_server_binary, port_open
from journal.event import BifocalEvent, Embedder
from journal.journal import Journal
from projections.memory import Memory
from projections.postgres import EmbeddedPostgres, PostgresUnavailable, connect
from projections.runner import ProjectionRunner
from soul.cli import main
from tests.system.test_cluster import cluster, nodes  # noqa: F401  (cluster is a fixture)

NONE = Embedder("none", 0)


def note(prose: str) -> BifocalEvent:
    return BifocalEvent("perception", prose, [], NONE, "source:user")


# -- loopback only -----------------------------------------------------------------------


def listening(pid: int) -> list[tuple[str, str]]:
    """(family, address:port) of every listening socket of process `pid`, from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for family in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/{pid}/net/{family}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (state == "0A" or family.startswith("udp")):  # 0A: TCP LISTEN
                found.append((family, address(local)))
    for line in Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[6] in inodes and len(fields) > 7:
            found.append(("unix", fields[7]))
    return found


def address(hex_address: str) -> str:
    """"0100007F:1F90" -> "127.0.0.1:8080"; IPv6 as four little-endian 32-bit words."""
    host, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    ip = ".".join(map(str, raw)) if len(raw) == 4 else ":".join(raw[i : i + 2].hex() for i in range(0, 16, 2))
    return f"{ip}:{int(port, 16)}"


def test_address_parsing() -> None:
    assert address("0100007F:1F90") == "127.0.0.1:8080"
    assert address("00000000000000000000000001000000:0050") == "0000:0000:0000:0000:0000:0000:0000:0001:80"


def test_embedded_nats_listens_on_loopback_only(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path)
    server.start()
    try:
        sockets = listening(server.status()["pid"])
    finally:
        server.stop()
    assert sockets and all(family == "tcp" and where.startswith("127.0.0.1:") for family, where in sockets), sockets


def test_cluster_nodes_listen_on_loopback_only(cluster: tuple[str, Path]) -> None:
    for name, node in nodes(cluster[1]).items():
        sockets = listening(int(node["pid"]))
        assert len(sockets) == 2, (name, sockets)  # client and route ports
        assert all(family == "tcp" and where.startswith("127.0.0.1:") for family, where in sockets), (name, sockets)


def test_embedded_postgres_listens_on_a_unix_socket_only() -> None:
    home = Path(tempfile.mkdtemp(prefix="soul-pg-"))  # see conftest.pg_home
    server = EmbeddedPostgres(home)
    server.start()
    try:
        sockets = listening(server.status()["pid"])
    finally:
        server.stop()
        shutil.rmtree(home)
    assert sockets and all(family == "unix" for family, _ in sockets), sockets  # no TCP or UDP port at all
    assert any(where.endswith(".s.PGSQL.5432") for _, where in sockets)


# -- NATS authentication ------------------------------------------------------------------


def keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def public(key: nkeys.KeyPair) -> str:
    return key.public_key.decode()


def start_nats(folder: Path, settings: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = folder / "server.conf"
    config.write_text(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{folder / "js"}" }}\n{settings}')
    process = subprocess.Popen([str(nats_server_binary()), "-c", str(config), "-l", str(folder / "server.log")])
    deadline = time.monotonic() + 10
    while not port_open(port):
        assert process.poll() is None and time.monotonic() < deadline, (folder / "server.log").read_text()
        time.sleep(0.05)
    return process, f"nats://127.0.0.1:{port}"


@pytest.fixture
def nkey_server(tmp_path: Path) -> Iterator[tuple[str, nkeys.KeyPair]]:
    """A nats-server that admits one user, by nkey, and nobody else."""
    user = keypair(nkeys.PREFIX_BYTE_USER)
    process, url = start_nats(tmp_path, f"authorization {{ users = [ {{ nkey: {public(user)} }} ] }}\n")
    yield url, user
    process.terminate()
    process.wait(10)


def seed_file(folder: Path, key: nkeys.KeyPair, name: str) -> str:
    path = folder / name
    path.write_bytes(key.seed)
    path.chmod(0o600)
    return str(path)


def test_nkey_authentication(nkey_server: tuple[str, nkeys.KeyPair], tmp_path: Path, app_name: str) -> None:
    url, user = nkey_server
    env = {"SOUL_NATS_URL": url, "SOUL_NATS_TIMEOUT": "2"}
    signed = {**env, "SOUL_NATS_TIMEOUT": "30", "SOUL_NATS_NKEY_SEED": seed_file(tmp_path, user, "user.nk")}
    with Journal(app_name, signed) as journal:  # time to sign in on a loaded machine; refusals come fast
        journal.add(note("signed in with an nkey"))
        assert [e.event.prose for e in journal.read()] == ["signed in with an nkey"]
    stranger = seed_file(tmp_path, keypair(nkeys.PREFIX_BYTE_USER), "stranger.nk")
    with pytest.raises(JournalUnavailable, match="refused the credentials") as refused:
        Journal(app_name, {**env, "SOUL_NATS_NKEY_SEED": stranger})
    assert "\n" not in str(refused.value) and user.seed.decode() not in str(refused.value)
    with pytest.raises(JournalUnavailable):  # no credentials at all
        Journal(app_name, env)
    shown = subprocess.run([sys.executable, "-m", "soul", "--app", app_name, "tail", "--since", "1", "-F"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, **env, "SOUL_NATS_NKEY_SEED": stranger})
    assert shown.returncode == 1 and len(shown.stderr.splitlines()) == 1 and "refused the credentials" in shown.stderr


def test_token_authentication(tmp_path: Path, app_name: str) -> None:
    token = "t0ken-" + os.urandom(8).hex()
    process, url = start_nats(tmp_path, f'authorization {{ token: "{token}" }}\n')
    try:
        with Journal(app_name, {"SOUL_NATS_URL": url.replace("://", f"://{token}@")}) as journal:
            journal.add(note("signed in with a token"))
            assert len(list(journal.read())) == 1
        with pytest.raises(JournalUnavailable, match="refused the credentials") as refused:
            Journal(app_name, {"SOUL_NATS_URL": url.replace("://", "://wrong-token@"), "SOUL_NATS_TIMEOUT": "2"})
        assert "wrong-token" not in str(refused.value) and "***@127.0.0.1" in str(refused.value)
    finally:
        process.terminate()
        process.wait(10)


def jwt(issuer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) signed by `issuer`, the way nsc writes one."""
    body = {"iat": int(time.time()), "iss": public(issuer), "name": name, "sub": subject, "nats": {**claims, "version": 2}}
    body["jti"] = base64.b32encode(hashlib.new("sha512_256", json.dumps(body, sort_keys=True).encode()).digest()).decode().rstrip("=")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    signed = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode()) + "." + b64(json.dumps(body).encode())
    return signed + "." + b64(issuer.sign(signed.encode()))


def creds(user_jwt: str, user: nkeys.KeyPair) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")


@pytest.fixture
def operator_server(tmp_path: Path) -> Iterator[tuple[str, Path, nkeys.KeyPair]]:
    """A nats-server in operator mode (memory resolver): an operator, a JetStream account, a
    system account; and a creds file for a user of the account. Returns (url, creds, account)."""
    operator, account, system = keypair(nkeys.PREFIX_BYTE_OPERATOR), keypair(nkeys.PREFIX_BYTE_ACCOUNT), keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    limits = {k: -1 for k in ("subs", "data", "payload", "imports", "exports", "conn", "leaf")}
    accounts = {
        public(account): jwt(operator, public(account), "soul", {"type": "account", "limits": {
            **limits, "wildcards": True, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
        public(system): jwt(operator, public(system), "SYS", {"type": "account", "limits": limits}),
    }
    process, url = start_nats(tmp_path, (
        f'operator: "{jwt(operator, public(operator), "soul-test", {"type": "operator"})}"\n'
        f"system_account: {public(system)}\nresolver: MEMORY\n"
        f"resolver_preload: {{ {', '.join(f'{k}: {v!r}' for k, v in accounts.items())} }}\n"
    ).replace("'", '"'))
    user = keypair(nkeys.PREFIX_BYTE_USER)
    path = tmp_path / "user.creds"
    path.write_text(creds(jwt(account, public(user), "soul-user", {"type": "user", "pub": {}, "sub": {},
                                                                    "subs": -1, "data": -1, "payload": -1}), user))
    path.chmod(0o600)
    yield url, path, account
    process.terminate()
    process.wait(10)


def test_creds_file_authentication(operator_server: tuple[str, Path, nkeys.KeyPair], tmp_path: Path, app_name: str) -> None:
    url, path, account = operator_server
    env = {"SOUL_NATS_URL": url, "SOUL_NATS_TIMEOUT": "2"}
    with Journal(app_name, {**env, "SOUL_NATS_CREDS": str(path)}) as journal:
        journal.add(note("signed in with a user JWT"))
        assert [e.event.prose for e in journal.read()] == ["signed in with a user JWT"]
    forged = tmp_path / "forged.creds"  # a user JWT signed by a key the operator never trusted
    intruder = keypair(nkeys.PREFIX_BYTE_USER)
    forged.write_text(creds(jwt(keypair(nkeys.PREFIX_BYTE_ACCOUNT), public(intruder), "intruder", {"type": "user"}), intruder))
    with pytest.raises(JournalUnavailable) as refused:
        Journal(app_name, {**env, "SOUL_NATS_CREDS": str(forged)})
    assert "\n" not in str(refused.value)


def test_a_malformed_creds_file_is_one_line(operator_server: tuple[str, Path, nkeys.KeyPair], tmp_path: Path, app_name: str) -> None:
    url, _, _ = operator_server
    bad = tmp_path / "bad.creds"
    bad.write_text("not a creds file\n")
    env = {**os.environ, "SOUL_NATS_URL": url, "SOUL_NATS_TIMEOUT": "2", "SOUL_NATS_CREDS": str(bad)}
    try:
        shown = subprocess.run([sys.executable, "-m", "soul", "--app", app_name, "tail", "-F"], capture_output=True, text=True,
                               timeout=30, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("soul hung on a malformed creds file")
    assert shown.returncode == 1 and len(shown.stderr.splitlines()) == 1, shown.stderr
    assert "cannot reach NATS" in shown.stderr or "refused" in shown.stderr, shown.stderr


# -- database credentials -------------------------------------------------------------------

PASSWORD = "Pg-s3cret-hunter2"


@pytest.fixture
def guarded_postgres() -> Iterator[tuple[str, str]]:
    """A Postgres of its own where role `soul` must give its password (scram-sha-256) on the
    Unix socket; (url with the password, the same url with a wrong one)."""
    home = Path(tempfile.mkdtemp(prefix="soul-pg-"))  # see conftest.pg_home
    server = EmbeddedPostgres(home)
    admin = server.start()
    try:
        with connect(admin) as conn:  # also creates pgvector, which `soul` may not
            conn.execute(sql.SQL("CREATE ROLE soul LOGIN PASSWORD {}").format(sql.Literal(PASSWORD)))
            conn.execute("GRANT CREATE ON DATABASE postgres TO soul")
            hba = home / "pg" / "pg_hba.conf"
            hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n" + hba.read_text())
            conn.execute("SELECT pg_reload_conf()")
        socket = admin.split("?", 1)[1]
        yield f"postgresql://soul:{PASSWORD}@/postgres?{socket}", f"postgresql://soul:wrong-{PASSWORD[::-1]}@/postgres?{socket}"
    finally:
        server.stop()
        shutil.rmtree(home)


def test_the_database_password_never_shows(guarded_postgres: tuple[str, str], nats_url: str, app_name: str) -> None:
    right, wrong = guarded_postgres
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong.replace("soul:", "soul:x", 1)).close()  # the server really checks it
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        journal.add(note("a memory to project"))
        ProjectionRunner(journal, Memory(), right).close()
        with pytest.raises(PostgresUnavailable) as refused:
            ProjectionRunner(journal, Memory(), wrong)
    assert PASSWORD not in str(refused.value) and "soul:***@" in str(refused.value)

    said: list[str] = []
    handler = logging.Handler(logging.DEBUG)  # every log line of every library, at every level
    handler.emit = lambda record: said.append(logging.Formatter().format(record))  # type: ignore[method-assign]
    root = logging.getLogger()
    level, root.level = root.level, logging.DEBUG
    root.addHandler(handler)

    def query_form(url: str) -> str:  # the password as a parameter instead of in the authority
        user, rest = url.split("//", 1)[1].split("@", 1)
        return f"postgresql://{rest}&user=soul&password={user.split(':', 1)[1]}"

    try:
        for url in (right, query_form(right), wrong, query_form(wrong)):
            env = {"SOUL_APP": app_name, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": url}
            for args in (["projections", "rebuild", "memory"], ["projections", "status", "--json"], ["journal", "stats", "--json"],
                         ["search", "memory", "--mode", "keyword", "--json"], ["corpus", "list"], ["services", "status"]):
                done = CliRunner().invoke(main, args, env=env)
                said.append(f"{args} -> {done.exit_code}\n{done.output}")
                assert done.exception is None or isinstance(done.exception, SystemExit), said[-1]
                assert done.exit_code == (1 if "wrong" in url and args[0] in ("projections", "search", "corpus") else 0), said[-1]
    finally:
        root.removeHandler(handler)
        root.level = level
    real = subprocess.run([sys.executable, "-m", "soul", "projections", "status"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SOUL_APP": app_name, "SOUL_NATS_URL": nats_url, "SOUL_PG_URL": wrong})
    said.append(real.stdout + real.stderr)
    assert real.returncode == 1 and len(real.stderr.splitlines()) == 1
    assert PASSWORD not in "".join(said) and PASSWORD[::-1] not in "".join(said)
    assert any("soul:***@" in s for s in said) and any("password=***" in s for s in said)  # named, masked
    with Journal(app_name, {"SOUL_NATS_URL": nats_url}) as journal:
        journaled = b"".join(n.state for n in journal.recorder.select_notifications(1, 10_000))
    assert PASSWORD.encode() not in journaled


def test_journal_append_redacts_what_its_callers_missed(journal: Journal) -> None:
    key = "sk-ant-api03-" + "Zx9_" * 8
    journal.add(note(f"an agent pasted {key}"))
    (entry,) = journal.read()
    assert key not in entry.event.prose
