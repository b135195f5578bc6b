"""Broker-mode workers deployed as separate hosts: they share only PostgreSQL, Redis and S3.

On one machine a "host" is a folder of its own, outside the run folder, that
a worker process starts in: its working directory, HOME and TMPDIR. Nothing
else points it at a folder: a worker's environment must carry no file:// or
sqlite URL and no path of the run folder (where the intake keeps its inbox,
the redis-server its files and the runner the worker logs) - the run refuses
to start otherwise. After the run each host folder is searched for a stored
file (the bytes of a submitted document) and for a SQLite file with docpipe's
tables; finding one fails the run (other programs' databases - onnxruntime
keeps one below HOME/.cache - are theirs). What this does not prove: a worker could still open an
absolute path it was never told (every process runs as the same user).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ConfigurationError

#: Environment values that name storage only this host has.
LOCAL_STORAGE = re.compile(r"file://|sqlite(\+\w+)?:", re.IGNORECASE)
#: The first bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: Bytes of a host-folder file read for the comparison (larger ones are hashed in blocks).
_BLOCK = 1 << 20


class SharedStorageError(ConfigurationError):
    """A worker deployed as a separate host was given storage of the intake's host."""


@dataclass(frozen=True)
class WorkerHost:
    """One worker's folder: its working directory, with HOME and TMPDIR inside."""

    name: str
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def environment(self, shared: Mapping[str, str]) -> dict[str, str]:
        """`shared` (what every host is configured with) plus this host's own folders."""
        env = dict(shared)
        env.pop("OLDPWD", None)
        env |= {"HOME": str(self.home), "TMPDIR": str(self.tmp), "PWD": str(self.root)}
        return env


def _names_path_under(value: str, folder: Path) -> bool:
    """Whether `value` holds `folder` or a path below it (not merely a longer name)."""
    pattern = re.escape(str(folder)) + r"(?=$|/|" + re.escape(os.pathsep) + r")"
    return re.search(pattern, value) is not None


def environment_problems(env: Mapping[str, str], run_folder: Path) -> list[str]:
    """Why `env` is not a separate host's: local-storage URLs, paths of the run folder."""
    problems = []
    for key, value in sorted(env.items()):
        local = LOCAL_STORAGE.search(value)
        if local is not None:
            problems.append(f"{key} names storage of one host ({local[0]}...)")
        elif _names_path_under(value, run_folder.resolve()) or _names_path_under(value, run_folder):
            problems.append(f"{key} names a path in the run folder")
    return problems


def content_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def docpipe_tables(path: Path) -> list[str]:
    """docpipe's tables in `path` when it is a SQLite database; empty for any other file."""
    from pipeline.adapters.sql.schema import metadata

    try:
        with path.open("rb") as handle:
            if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                return []
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except (OSError, sqlite3.Error):
        return []
    return sorted({str(row[0]) for row in rows} & set(metadata.tables))


@dataclass
class SeparateHosts:
    """The worker-host folders of one run, created below a temporary folder of their own."""

    label: str
    root: Path = field(init=False)
    hosts: list[WorkerHost] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"docpipe-hosts-{self.label}-"))

    def host(self, name: str) -> WorkerHost:
        host = WorkerHost(name, self.root / name)
        for folder in (host.root, host.home, host.tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self.hosts.append(host)
        return host

    def check_environment(self, env: Mapping[str, str], run_folder: Path) -> None:
        """Refuse a worker environment that reaches storage of the intake's host."""
        problems = environment_problems(env, run_folder)
        if problems:
            raise SharedStorageError(
                "workers deployed as separate hosts share only PostgreSQL, Redis and S3, but "
                + "; ".join(problems)
            )

    def files(self) -> list[Path]:
        return sorted(p for host in self.hosts for p in host.root.rglob("*") if p.is_file())

    def leaked(self, stored: Iterable[Path]) -> list[str]:
        """Host-folder files that are a stored document's bytes or a docpipe database."""
        digests = {content_digest(p) for p in stored if p.is_file() and p.stat().st_size}
        sizes = {p.stat().st_size for p in stored if p.is_file()}
        found = []
        for path in self.files():
            relative = path.relative_to(self.root)
            if tables := docpipe_tables(path):
                found.append(f"{relative} (a docpipe database: {', '.join(tables)})")
            elif path.stat().st_size in sizes and content_digest(path) in digests:
                found.append(f"{relative} (a stored document)")
        return found

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def working_directory(pid: int) -> Path | None:
    """Where a running process works (from /proc), or None when that cannot be read."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
