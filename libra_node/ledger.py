"""The ledger: durable per-study state, the source of truth for the pipeline.

SQLite in WAL mode with synchronous=FULL by default (every commit is on disk
before the call returns); any SQLAlchemy URL works, PostgreSQL included.
Study rows carry the state machine; series and instance rows carry the
attributes later stages need, so that no stage has to re-read the spool to
find out what a study holds.

Every state change is a compare-and-set on (state, version): a late answer
about an old version of a study can never overwrite what a newer version did.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from libra_node.selection import ImageFacts


class StudyState(str, enum.Enum):
    RECEIVING = "RECEIVING"  # instances arriving; not yet complete
    COMPLETE = "COMPLETE"  # complete and a chest radiograph, waiting to be queued
    SKIPPED = "SKIPPED"  # complete but not for the model (reason says why)
    QUEUED = "QUEUED"  # handed to the pipeline
    REPORTED = "REPORTED"  # draft written, not yet in the PACS
    DELIVERED = "DELIVERED"  # draft stored in the PACS (or the output folder)
    FAILED = "FAILED"  # gave up; reason says why


# States in which the pipeline still owes the study something.
IN_FLIGHT_STATES = (StudyState.COMPLETE, StudyState.QUEUED, StudyState.REPORTED)

metadata = sa.MetaData()

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("study_uid", sa.String(64), primary_key=True),
    sa.Column("patient_id", sa.Text, nullable=False, default="", index=True),
    sa.Column("issuer_of_patient_id", sa.Text, nullable=False, default=""),
    sa.Column("study_date", sa.Text, nullable=False, default=""),
    sa.Column("study_time", sa.Text, nullable=False, default=""),
    sa.Column("accession_number", sa.Text, nullable=False, default=""),
    sa.Column("study_description", sa.Text, nullable=False, default=""),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("state_reason", sa.Text, nullable=False, default=""),
    sa.Column("version", sa.Integer, nullable=False, default=1),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("state_changed_at", sa.Float, nullable=False),
    sa.Column("first_instance_at", sa.Float, nullable=False),
    sa.Column("last_instance_at", sa.Float, nullable=False),
    sa.Column("completed_at", sa.Float),
    sa.Column("completion_rule", sa.String(16), nullable=False, default=""),
    # Selection: which image the draft is made from, and why.
    sa.Column("frontal_sop_uid", sa.String(64), nullable=False, default=""),
    sa.Column("frontal_rule", sa.Text, nullable=False, default=""),
    # Prior: which earlier study was compared, and why (or why none).
    sa.Column("prior_study_uid", sa.String(64), nullable=False, default=""),
    sa.Column("prior_sop_uid", sa.String(64), nullable=False, default=""),
    sa.Column("prior_study_date", sa.Text, nullable=False, default=""),
    sa.Column("prior_reason", sa.Text, nullable=False, default=""),
    # Result: the SR of the latest version, and when it reached the PACS.
    sa.Column("sr_sop_uid", sa.String(64), nullable=False, default=""),
    sa.Column("sr_series_uid", sa.String(64), nullable=False, default=""),
    sa.Column("sr_sop_class_uid", sa.String(64), nullable=False, default=""),
    sa.Column("sr_version", sa.Integer, nullable=False, default=0),
    sa.Column("delivered_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("series_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("modality", sa.Text, nullable=False, default=""),
    sa.Column("series_number", sa.Integer),
    sa.Column("body_part", sa.Text, nullable=False, default=""),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("sop_uid", sa.String(64), primary_key=True),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("sop_class_uid", sa.String(64), nullable=False),
    sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
    sa.Column("modality", sa.Text, nullable=False, default=""),
    sa.Column("body_part", sa.Text, nullable=False, default=""),
    sa.Column("anatomic_region", sa.Text, nullable=False, default=""),
    sa.Column("view_position", sa.Text, nullable=False, default=""),
    sa.Column("view_code", sa.Text, nullable=False, default=""),
    sa.Column("patient_orientation", sa.Text, nullable=False, default=""),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("series_number", sa.Integer),
    sa.Column("instance_number", sa.Integer),
    sa.Column("file_path", sa.Text, nullable=False),  # relative to the spool
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

study_events = sa.Table(
    "study_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("at", sa.Float, nullable=False, index=True),
)

# Studies the node itself asked a PACS to send (C-MOVE of a prior to the
# node's own listener): their instances are kept, but never reopen or
# report a study.
retrievals = sa.Table(
    "retrievals",
    metadata,
    sa.Column("study_uid", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
)

RETRIEVED_REASON = "retrieved from the PACS as a prior, not reported"


@dataclass(frozen=True)
class InstanceRecord:
    """One received instance, as the listener records it."""

    facts: ImageFacts
    patient_id: str
    issuer_of_patient_id: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    transfer_syntax_uid: str
    file_path: str
    size: int


class RecordOutcome(str, enum.Enum):
    NEW = "new"  # first time this SOP Instance UID is seen
    DUPLICATE = "duplicate"  # same UID, same bytes as stored: nothing to record
    REPLACED = "replaced"  # same UID, different content: the newer copy wins


@dataclass(frozen=True)
class Study:
    """A study row as read from the ledger."""

    study_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    state: StudyState
    state_reason: str
    version: int
    created_at: float
    state_changed_at: float
    first_instance_at: float
    last_instance_at: float
    completed_at: float | None
    completion_rule: str
    frontal_sop_uid: str
    frontal_rule: str
    prior_study_uid: str
    prior_sop_uid: str
    prior_study_date: str
    prior_reason: str
    sr_sop_uid: str
    sr_series_uid: str
    sr_sop_class_uid: str
    sr_version: int
    delivered_at: float | None
    attempts: int

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> "Study":
        data = dict(row._mapping)
        data["state"] = StudyState(data["state"])
        return cls(**data)


@dataclass(frozen=True)
class Instance:
    """An instance row: its facts plus where its file is."""

    facts: ImageFacts
    transfer_syntax_uid: str
    file_path: str
    size: int
    received_at: float


class LedgerError(RuntimeError):
    """The ledger could not record something; the caller must not acknowledge it."""


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level so that SQLAlchemy's "begin" event can
    # issue BEGIN IMMEDIATE: writers queue on the lock instead of failing
    # with "database is locked" when two threads upgrade at once.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_ledger_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _configure_sqlite)
        sa.event.listen(engine, "begin", _begin_immediate)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _add_missing_indexes(engine: Engine) -> None:
    """Indexes added in a later release, for ledgers created before it.

    ``create_all`` creates a table's indexes only with the table itself.
    """
    for table in metadata.sorted_tables:
        for index in table.indexes:
            try:
                index.create(engine, checkfirst=True)
            except sa.exc.DBAPIError:
                # Another of the node's processes, opening the ledger at the same time, won.
                existing = {found["name"] for found in sa.inspect(engine).get_indexes(table.name)}
                if index.name not in existing:
                    raise


class Ledger:
    """Study, series and instance rows plus each study's state machine."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_ledger_engine(url)
        metadata.create_all(self.engine)
        _add_missing_indexes(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"ledger read failed: {type(exc).__name__}") from exc

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as connection:
                yield connection
        except sa.exc.SQLAlchemyError as exc:
            raise LedgerError(f"ledger write failed: {type(exc).__name__}") from exc

    # --- recording instances ---------------------------------------------------

    def record_instance(self, record: InstanceRecord, now: float | None = None) -> RecordOutcome:
        """Add an instance, or replace one whose content changed, and mark its study.

        The caller has already decided that the content is new (an identical
        copy is acknowledged without coming here). A study that had already
        completed goes back to RECEIVING with its version raised, so it
        completes (and is reported) again later; so does a study in which an
        instance's content changed.
        """
        now = time.time() if now is None else now
        facts = record.facts
        with self.transaction() as connection:
            previous = connection.execute(
                sa.select(instances.c.study_uid).where(instances.c.sop_uid == facts.sop_instance_uid)
            ).first()
            outcome = RecordOutcome.NEW if previous is None else RecordOutcome.REPLACED
            if self._is_expected_retrieval(connection, facts.study_instance_uid, now):
                self._upsert_retrieved_study(connection, record, now)
            else:
                self._upsert_study(connection, record, now, content_changed=previous is not None)
            self._upsert_series(connection, facts)
            self._upsert_instance(connection, record, now, replace=previous is not None)
            return outcome

    def _upsert_study(
        self, connection: Connection, record: InstanceRecord, now: float, content_changed: bool
    ) -> None:
        uid = record.facts.study_instance_uid
        row = connection.execute(
            sa.select(studies.c.state, studies.c.version).where(studies.c.study_uid == uid)
        ).first()
        if row is None:
            self._insert_study(connection, record, now, StudyState.RECEIVING, "first instance")
            return
        reopened = row.state != StudyState.RECEIVING.value
        values: dict[str, Any] = {"last_instance_at": now}
        if reopened or content_changed:
            values["version"] = row.version + 1
        if reopened:
            reason = "instance changed" if content_changed else "late instance"
            values.update(
                state=StudyState.RECEIVING.value,
                state_reason=reason,
                state_changed_at=now,
                completed_at=None,
            )
            self._event(connection, uid, values["version"], StudyState.RECEIVING, reason, now)
        connection.execute(studies.update().where(studies.c.study_uid == uid).values(**values))

    def _insert_study(
        self,
        connection: Connection,
        record: InstanceRecord,
        now: float,
        state: StudyState,
        reason: str,
        **columns: Any,
    ) -> None:
        uid = record.facts.study_instance_uid
        connection.execute(
            studies.insert().values(
                study_uid=uid,
                patient_id=record.patient_id,
                issuer_of_patient_id=record.issuer_of_patient_id,
                study_date=record.study_date,
                study_time=record.study_time,
                accession_number=record.accession_number,
                study_description=record.study_description,
                state=state.value,
                state_reason="" if state is StudyState.RECEIVING else reason,
                version=1,
                created_at=now,
                state_changed_at=now,
                first_instance_at=now,
                last_instance_at=now,
                **columns,
            )
        )
        self._event(connection, uid, 1, state, reason, now)

    def _is_expected_retrieval(self, connection: Connection, study_uid: str, now: float) -> bool:
        return (
            connection.execute(
                sa.select(retrievals.c.study_uid).where(
                    retrievals.c.study_uid == study_uid, retrievals.c.expires_at >= now
                )
            ).first()
            is not None
        )

    def _upsert_retrieved_study(
        self, connection: Connection, record: InstanceRecord, now: float
    ) -> None:
        """A prior arriving by C-MOVE: keep it, report nothing, reopen nothing."""
        uid = record.facts.study_instance_uid
        if connection.execute(sa.select(studies.c.study_uid).where(studies.c.study_uid == uid)).first():
            return
        self._insert_study(
            connection, record, now, StudyState.SKIPPED, RETRIEVED_REASON,
            completed_at=now, completion_rule="retrieved",
        )

    def expect_retrieval(self, study_uid: str, seconds: float, now: float | None = None) -> None:
        """Announce that a PACS will send this study because the node asked for it."""
        now = time.time() if now is None else now
        with self.transaction() as connection:
            connection.execute(retrievals.delete().where(retrievals.c.study_uid == study_uid))
            connection.execute(retrievals.insert().values(study_uid=study_uid, expires_at=now + seconds))

    def end_retrieval(self, study_uid: str) -> None:
        with self.transaction() as connection:
            connection.execute(retrievals.delete().where(retrievals.c.study_uid == study_uid))

    def _upsert_series(self, connection: Connection, facts: ImageFacts) -> None:
        exists = connection.execute(
            sa.select(series.c.series_uid).where(series.c.series_uid == facts.series_instance_uid)
        ).first()
        if exists is None:
            connection.execute(
                series.insert().values(
                    series_uid=facts.series_instance_uid,
                    study_uid=facts.study_instance_uid,
                    modality=facts.modality,
                    series_number=facts.series_number,
                    body_part=facts.body_part,
                )
            )

    def _upsert_instance(
        self, connection: Connection, record: InstanceRecord, now: float, replace: bool
    ) -> None:
        facts = record.facts
        values = dict(
            series_uid=facts.series_instance_uid,
            study_uid=facts.study_instance_uid,
            sop_class_uid=facts.sop_class_uid,
            transfer_syntax_uid=record.transfer_syntax_uid,
            modality=facts.modality,
            body_part=facts.body_part,
            anatomic_region=facts.anatomic_region,
            view_position=facts.view_position,
            view_code=facts.view_code,
            patient_orientation=facts.patient_orientation,
            description=facts.description,
            series_number=facts.series_number,
            instance_number=facts.instance_number,
            file_path=record.file_path,
            size=record.size,
            received_at=now,
        )
        if replace:
            connection.execute(
                instances.update().where(instances.c.sop_uid == facts.sop_instance_uid).values(**values)
            )
        else:
            connection.execute(instances.insert().values(sop_uid=facts.sop_instance_uid, **values))

    # --- reading -----------------------------------------------------------------

    def get_study(self, study_uid: str) -> Study | None:
        with self.reading() as connection:
            row = connection.execute(
                sa.select(studies).where(studies.c.study_uid == study_uid)
            ).first()
        return Study.from_row(row) if row is not None else None

    def _studies(self, query: sa.Select[Any]) -> list[Study]:
        with self.reading() as connection:
            return [Study.from_row(row) for row in connection.execute(query).all()]

    def studies_in(self, *states: StudyState) -> list[Study]:
        return self._studies(
            sa.select(studies)
            .where(studies.c.state.in_([s.value for s in states]))
            .order_by(studies.c.state_changed_at)
        )

    def studies_of_patient(self, patient_id: str) -> list[Study]:
        """Every study on record for a patient ID (the local archive's C-FIND)."""
        return self._studies(
            sa.select(studies)
            .where(studies.c.patient_id == patient_id)
            .order_by(studies.c.study_date, studies.c.study_time)
        )

    def instances_of(self, study_uid: str) -> list[Instance]:
        with self.reading() as connection:
            rows = connection.execute(
                sa.select(instances)
                .where(instances.c.study_uid == study_uid)
                .order_by(instances.c.series_number, instances.c.instance_number)
            ).all()
        return [_instance_from_row(row) for row in rows]

    def get_instance(self, sop_uid: str) -> Instance | None:
        with self.reading() as connection:
            row = connection.execute(
                sa.select(instances).where(instances.c.sop_uid == sop_uid)
            ).first()
        return _instance_from_row(row) if row is not None else None

    def all_instance_paths(self) -> set[str]:
        with self.reading() as connection:
            return set(connection.execute(sa.select(instances.c.file_path)).scalars())

    def count_by_state(self) -> dict[str, int]:
        with self.reading() as connection:
            rows = connection.execute(
                sa.select(studies.c.state, sa.func.count()).group_by(studies.c.state)
            ).all()
        counts = {state.value: 0 for state in StudyState}
        counts.update({state: count for state, count in rows})
        return counts

    def oldest_by_state(self) -> dict[str, float]:
        """For each state, when its longest-waiting study entered it."""
        with self.reading() as connection:
            rows = connection.execute(
                sa.select(studies.c.state, sa.func.min(studies.c.state_changed_at)).group_by(
                    studies.c.state
                )
            ).all()
        return {state: at for state, at in rows}

    def recent_failures(self, limit: int = 10) -> list[Study]:
        return self._studies(
            sa.select(studies)
            .where(studies.c.state == StudyState.FAILED.value)
            .order_by(studies.c.state_changed_at.desc())
            .limit(limit)
        )

    def stuck_studies(self, states: Sequence[StudyState], older_than: float) -> list[Study]:
        """Studies that entered one of ``states`` before ``older_than`` and are still there."""
        return self._studies(
            sa.select(studies).where(
                studies.c.state.in_([s.value for s in states]),
                studies.c.state_changed_at < older_than,
            )
        )

    def touch(
        self, study_uid: str, version: int, state: StudyState, reason: str, attempt: bool = False
    ) -> bool:
        """Note progress on a study without changing its state (resets its stuck clock).

        ``attempt`` counts one more try at the study (the reconciler's re-queues).
        """
        values: dict[str, Any] = {"state_changed_at": time.time(), "state_reason": reason}
        if attempt:
            values["attempts"] = studies.c.attempts + 1
        with self.transaction() as connection:
            result = connection.execute(
                studies.update()
                .where(
                    studies.c.study_uid == study_uid,
                    studies.c.version == version,
                    studies.c.state == state.value,
                )
                .values(**values)
            )
        return result.rowcount == 1

    def events_of(self, study_uid: str) -> list[tuple[int, str, str, float]]:
        """(version, state, reason, at) for every state change, oldest first."""
        with self.reading() as connection:
            rows = connection.execute(
                sa.select(
                    study_events.c.version,
                    study_events.c.state,
                    study_events.c.reason,
                    study_events.c.at,
                )
                .where(study_events.c.study_uid == study_uid)
                .order_by(study_events.c.id)
            ).all()
        return [tuple(row) for row in rows]  # type: ignore[misc]

    # --- state changes -------------------------------------------------------------

    def transition(
        self,
        study_uid: str,
        to_state: StudyState,
        reason: str = "",
        *,
        from_states: Sequence[StudyState],
        version: int | None = None,
        now: float | None = None,
        **columns: Any,
    ) -> bool:
        """Move a study to a new state if it is still where the caller saw it.

        Returns False (and changes nothing) when the study has moved on in the
        meantime: another state, or a newer version.
        """
        now = time.time() if now is None else now
        condition = sa.and_(
            studies.c.study_uid == study_uid,
            studies.c.state.in_([s.value for s in from_states]),
        )
        if version is not None:
            condition = sa.and_(condition, studies.c.version == version)
        with self.transaction() as connection:
            current = connection.execute(sa.select(studies.c.version).where(condition)).first()
            if current is None:
                return False
            connection.execute(
                studies.update()
                .where(condition)
                .values(
                    state=to_state.value, state_reason=reason, state_changed_at=now, **columns
                )
            )
            self._event(connection, study_uid, current.version, to_state, reason, now)
        return True

    def complete(
        self,
        study_uid: str,
        seen_last_instance_at: float,
        to_state: StudyState,
        reason: str,
        rule: str,
        now: float | None = None,
        **columns: Any,
    ) -> bool:
        """RECEIVING -> COMPLETE or SKIPPED, unless an instance arrived since."""
        now = time.time() if now is None else now
        condition = sa.and_(
            studies.c.study_uid == study_uid,
            studies.c.state == StudyState.RECEIVING.value,
            studies.c.last_instance_at == seen_last_instance_at,
        )
        with self.transaction() as connection:
            current = connection.execute(sa.select(studies.c.version).where(condition)).first()
            if current is None:
                return False
            connection.execute(
                studies.update()
                .where(condition)
                .values(
                    state=to_state.value,
                    state_reason=reason,
                    state_changed_at=now,
                    completed_at=now,
                    completion_rule=rule,
                    **columns,
                )
            )
            self._event(connection, study_uid, current.version, to_state, reason, now)
        return True

    def update_study(self, study_uid: str, version: int, **columns: Any) -> bool:
        """Record facts about a study version without changing its state."""
        with self.transaction() as connection:
            result = connection.execute(
                studies.update()
                .where(studies.c.study_uid == study_uid, studies.c.version == version)
                .values(**columns)
            )
        return result.rowcount == 1

    @staticmethod
    def _event(
        connection: Connection,
        study_uid: str,
        version: int,
        state: StudyState,
        reason: str,
        now: float,
    ) -> None:
        connection.execute(
            study_events.insert().values(
                study_uid=study_uid, version=version, state=state.value, reason=reason, at=now
            )
        )


def _instance_from_row(row: sa.Row[Any]) -> Instance:
    data = row._mapping
    facts = ImageFacts(
        study_instance_uid=data["study_uid"],
        series_instance_uid=data["series_uid"],
        sop_instance_uid=data["sop_uid"],
        sop_class_uid=data["sop_class_uid"],
        modality=data["modality"],
        body_part=data["body_part"],
        anatomic_region=data["anatomic_region"],
        view_position=data["view_position"],
        view_code=data["view_code"],
        patient_orientation=data["patient_orientation"],
        description=data["description"],
        series_number=data["series_number"],
        instance_number=data["instance_number"],
    )
    return Instance(
        facts=facts,
        transfer_syntax_uid=data["transfer_syntax_uid"],
        file_path=data["file_path"],
        size=data["size"],
        received_at=data["received_at"],
    )
