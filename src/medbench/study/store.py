"""The study results store: one ``runs`` table in any SQLAlchemy database (SQLite by default, PostgreSQL by URL).

Only portable SQLAlchemy Core is used. Every status change is its own transaction, and claiming a run is a
conditional UPDATE whose row count says who won, so any number of processes (on any number of hosts, with a
server database) can pull runs from one table without two of them running the same id.
"""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from medbench.errors import MedbenchError

DB_NAME = "study.db"
STATUSES = ("pending", "running", "done", "failed")
SQLITE_BUSY_MS = 60_000

metadata = MetaData()
runs = Table(
    "runs", metadata,
    Column("id", String(64), primary_key=True),
    Column("study", String(255), nullable=False),
    Column("config", Text, nullable=False),          # canonical JSON of the resolved RunConfig
    Column("axes", Text),                            # JSON: this run's values of the grid axes
    Column("status", String(16), nullable=False, index=True),
    Column("run_dir", Text),
    Column("metrics", Text),                         # metrics.json's content; NULL until done
    Column("error", Text),                           # one line, for failed runs
    Column("started", DateTime(timezone=True)),
    Column("finished", DateTime(timezone=True)),
    Column("seconds", Float),
    Column("pid", Integer),
    Column("host", String(255)),
    Column("attempts", Integer, nullable=False, default=0),
)


def default_url(out_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / DB_NAME}"


def this_host() -> str:
    return socket.gethostname()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie (a SIGKILLed worker nobody reaped)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # Linux: state is the field after the parenthesised command name
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Store:
    """The ``runs`` table behind ``url`` (created when missing)."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        try:
            parsed = make_url(url)
        except Exception as e:  # noqa: BLE001 - SQLAlchemy raises several types for a malformed URL
            raise MedbenchError(f"not a database URL: {url!r} ({e})") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            db = parsed.database
            if db and db != ":memory:":
                if not create and not Path(db).is_file():
                    raise MedbenchError(f"no study database at {db}")
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_MS / 1000}
        else:
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as e:
            raise MedbenchError(f"cannot open study database {parsed.render_as_string(hide_password=True)}: "
                                f"{e}".replace("\n", " ")) from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            metadata.create_all(self.engine, checkfirst=True)
        except SQLAlchemyError as e:
            if not self._tables_exist():  # a concurrent creator may have won the race
                raise MedbenchError(f"cannot open study database {parsed.render_as_string(hide_password=True)}: "
                                    f"{str(e).splitlines()[0]}") from None

    def _tables_exist(self) -> bool:
        from sqlalchemy import inspect

        try:
            return inspect(self.engine).has_table("runs")
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------------------------
    def add(self, rows: Iterable[dict[str, Any]]) -> int:
        """Insert runs that are not in the table yet as 'pending' (existing rows are kept). Returns how many
        were added. Each row: id, study, config (JSON text), axes (JSON text, optional), run_dir."""
        rows = list(rows)
        with self.engine.connect() as c:
            have = set()
            ids = [r["id"] for r in rows]
            for i in range(0, len(ids), 500):
                have.update(c.execute(select(runs.c.id).where(runs.c.id.in_(ids[i:i + 500]))).scalars())
        added = 0
        for r in rows:
            if r["id"] in have:
                continue
            try:
                with self.engine.begin() as c:
                    c.execute(insert(runs).values(id=r["id"], study=r["study"], config=r["config"],
                                                  axes=r.get("axes"), run_dir=r.get("run_dir"), status="pending",
                                                  attempts=0))
                added += 1
            except IntegrityError:  # another process inserted it first
                pass
        return added

    def claim(self, run_id: str, pid: int | None = None, host: str | None = None, *,
              statuses: tuple[str, ...] = ("pending", "failed"), run_dir: str | None = None) -> bool:
        """Atomically take ``run_id`` for process ``pid`` on ``host`` if its status is one of ``statuses``:
        True for exactly one of any number of concurrent claimers."""
        values: dict[str, Any] = dict(status="running", pid=pid if pid is not None else os.getpid(),
                                      host=host or this_host(), started=_now(), finished=None, seconds=None,
                                      error=None, metrics=None, attempts=runs.c.attempts + 1)
        if run_dir is not None:
            values["run_dir"] = run_dir
        with self.engine.begin() as c:
            res = c.execute(update(runs).where(runs.c.id == run_id, runs.c.status.in_(statuses)).values(**values))
            return res.rowcount == 1

    def _finish(self, run_id: str, pid: int | None, host: str | None, **values) -> bool:
        cond = [runs.c.id == run_id, runs.c.status == "running"]
        if pid is not None:  # only the owner may close its run
            cond += [runs.c.pid == pid, runs.c.host == (host or this_host())]
        with self.engine.begin() as c:
            return c.execute(update(runs).where(*cond).values(finished=_now(), **values)).rowcount == 1

    def mark_done(self, run_id: str, metrics: dict | str, seconds: float, *, pid: int | None = None,
                  host: str | None = None) -> bool:
        text = metrics if isinstance(metrics, str) else json.dumps(metrics, allow_nan=False)
        return self._finish(run_id, pid, host, status="done", metrics=text, seconds=seconds, error=None)

    def mark_failed(self, run_id: str, error: str, seconds: float | None = None, *, pid: int | None = None,
                    host: str | None = None) -> bool:
        line = " ".join(str(error).split()) or "failed"
        return self._finish(run_id, pid, host, status="failed", error=line[:2000], seconds=seconds)

    def requeue_failed(self, ids: Iterable[str] | None = None) -> int:
        """'failed' -> 'pending' (for ``ids``, or all): the start of a new attempt at a study."""
        cond = [runs.c.status == "failed"]
        if ids is not None:
            ids = list(ids)
        with self.engine.begin() as c:
            if ids is None:
                return c.execute(update(runs).where(*cond).values(status="pending")).rowcount
            n = 0
            for i in range(0, len(ids), 500):
                n += c.execute(update(runs).where(*cond, runs.c.id.in_(ids[i:i + 500]))
                               .values(status="pending")).rowcount
            return n

    def reset_stale(self, host: str | None = None) -> list[str]:
        """'running' rows of ``host`` (default: this one) whose process is gone -> 'failed', error "interrupted".
        Rows of other hosts are left alone: their liveness cannot be checked from here."""
        host = host or this_host()
        with self.engine.connect() as c:
            rows = c.execute(select(runs.c.id, runs.c.pid).where(runs.c.status == "running",
                                                                   runs.c.host == host)).all()
        reset = []
        for rid, pid in rows:
            if pid_alive(pid):
                continue
            with self.engine.begin() as c:  # conditional: only if it is still that dead process's run
                n = c.execute(update(runs).where(runs.c.id == rid, runs.c.status == "running", runs.c.pid == pid,
                                                 runs.c.host == host)
                              .values(status="failed", error="interrupted", finished=_now())).rowcount
            if n:
                reset.append(rid)
        return reset

    # ---- reading -------------------------------------------------------------------------------------------
    def counts(self, ids: Iterable[str] | None = None) -> dict[str, int]:
        """{"total", "done", "failed", "running", "pending"} over all rows (or ``ids``)."""
        out = dict.fromkeys(("total", *STATUSES), 0)
        q = select(runs.c.status, func.count()).group_by(runs.c.status)
        ids = None if ids is None else list(ids)
        chunks = [None] if ids is None else [ids[i:i + 500] for i in range(0, len(ids), 500)]
        with self.engine.connect() as c:
            for chunk in chunks:
                qq = q if chunk is None else q.where(runs.c.id.in_(chunk))
                for status, n in c.execute(qq):
                    out[status] = out.get(status, 0) + n
        out["total"] = sum(out[s] for s in out if s != "total")
        return {"total": out["total"], "done": out["done"], "failed": out["failed"], "running": out["running"],
                "pending": out["pending"]}

    def rows(self, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (all, or ``ids`` in the given order; ids missing from the table are left out)."""
        with self.engine.connect() as c:
            if ids is None:
                return [dict(r._mapping) for r in c.execute(select(runs).order_by(runs.c.id))]
            ids = list(ids)
            found: dict[str, dict] = {}
            for i in range(0, len(ids), 500):
                for r in c.execute(select(runs).where(runs.c.id.in_(ids[i:i + 500]))):
                    found[r.id] = dict(r._mapping)
        return [found[i] for i in ids if i in found]

    def get(self, run_id: str) -> dict[str, Any] | None:
        rows = self.rows([run_id])
        return rows[0] if rows else None
