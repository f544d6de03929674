"""A real, private PostgreSQL server for the tests, from Debian's ``postgresql`` package.

``initdb`` in a temporary directory, ``postgres`` on a free loopback port with its
socket in that directory, trust authentication for the test user and a password
for another (the tests check that no error shows it); the server dies with the test
process. Run as root (CI's containers), the server runs as the ``postgres`` user the
package creates, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from redis_servers import HOST, _die_with_parent, _Servers, _tail, free_port

START_TIMEOUT = 30.0
PASSWORD_USER = "crabpw"
PASSWORD = "s3cret/pa:ss@word?#"  # reserved characters, percent-encoded in URLs


def postgres_bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: PATH's, else Debian's newest."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    return Path(candidates[-1]).parent if candidates else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def postgres_missing() -> str | None:
    """Why no server can start here, or None."""
    if postgres_bindir() is None:
        return "PostgreSQL's initdb and postgres not found (Debian's postgresql package)"
    if os.geteuid() == 0 and _postgres_user() is None:
        return "running as root and there is no 'postgres' user to run the server as"
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as error:
        return f"psycopg not importable ({error}); install the 'postgres' extra"
    return None


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


class PostgresServer(_Servers):
    """One ``postgres`` on a free loopback port, its data in a temporary directory."""

    def __init__(self) -> None:
        bindir = postgres_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pg-test-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.port = 0
        self.user = "crab"
        self._proc: subprocess.Popen[bytes] | None = None
        self._as = _postgres_user() if os.geteuid() == 0 else None
        if self._as is not None:
            os.chown(self.dir, self._as.pw_uid, self._as.pw_gid)
        try:
            self._initdb()
            self.start()
            self._add_password_user()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """The URL of database ``postgres`` as the test user (no password: trusted)."""
        return f"postgresql://{self.user}@{HOST}:{self.port}/postgres"

    @property
    def password_url(self) -> str:
        """The URL of a user who logs in with :data:`PASSWORD` (percent-encoded)."""
        from urllib.parse import quote

        return (
            f"postgresql://{PASSWORD_USER}:{quote(PASSWORD, safe='')}@{HOST}:{self.port}/postgres"
        )

    def _run_as(self) -> dict[str, object]:
        if self._as is None:
            return {"preexec_fn": _die_with_parent}
        uid, gid = self._as.pw_uid, self._as.pw_gid

        def demote() -> None:
            os.setgid(gid)
            os.setuid(uid)
            _die_with_parent()

        return {"preexec_fn": demote}

    def _initdb(self) -> None:
        done = subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self._run_as(),  # type: ignore[arg-type]
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        with (self.data / "pg_hba.conf").open("w") as hba:
            hba.write(f"host all {PASSWORD_USER} {HOST}/32 scram-sha-256\n")
            hba.write(f"host all all {HOST}/32 trust\nlocal all all trust\n")

    def start(self) -> None:
        """Start (or restart) the server on its port (a free one the first time)."""
        self.port = self.port or free_port()
        args = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        args += ["-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={self.dir}"]
        # Speed over durability: the tests kill clients, not this server's machine.
        args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        args += ["-c", "max_connections=300"]
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                **self._run_as(),  # type: ignore[arg-type]
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {self._proc.returncode}:\n{_tail(self.log)}"
                )
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not answer within {START_TIMEOUT}s:\n{_tail(self.log)}")

    def _answers(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def _add_password_user(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(PASSWORD_USER), sql.Literal(PASSWORD)
                )
            )
            conn.execute(
                sql.SQL("GRANT CREATE ON DATABASE postgres TO {}").format(
                    sql.Identifier(PASSWORD_USER)
                )
            )

    def execute(self, statement: str, *params: object) -> list[tuple[object, ...]]:
        """Run one statement as the test user (a superuser); its rows."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(statement, params or None)
            return cursor.fetchall() if cursor.description else []

    def stop_process(self, *, fast: bool = True) -> None:
        """Stop the server (SIGINT: fast shutdown, clients cut off), keeping its data."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(2 if fast else 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port: every connection drops."""
        self.stop_process()
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)
