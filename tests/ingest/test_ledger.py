"""The ledger on SQLite (the default) and on PostgreSQL (by URL)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa

from libra_node.ledger import Ledger, RecordOutcome, StudyState
from libra_node.listener import ParsedInstance, instance_record
from libra_node.selection import ImageFacts
from libra_node.synthetic import SyntheticPatient, SyntheticStudy, make_chest_study

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
        yield ledger
        ledger.close()
        return
    # A database of its own per test, on the PostgreSQL server of the machine.
    name = f"libra_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    ledger = Ledger(f"{POSTGRES_SERVER}/{name}")
    yield ledger
    ledger.close()
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


def record_for(ds, size: int = 10):
    facts = ImageFacts.from_dataset(ds)
    return instance_record(
        ParsedInstance(ds, facts), "1.2.840.10008.1.2.1", f"{facts.sop_instance_uid}.dcm", size
    )


def test_new_then_replaced(ledger):
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    assert ledger.record_instance(record_for(ds), now=1.0) is RecordOutcome.NEW
    assert ledger.get_study(str(ds.StudyInstanceUID)).version == 1

    assert ledger.record_instance(record_for(ds, size=20), now=3.0) is RecordOutcome.REPLACED
    assert ledger.get_instance(str(ds.SOPInstanceUID)).size == 20
    assert len(ledger.instances_of(str(ds.StudyInstanceUID))) == 1
    study = ledger.get_study(str(ds.StudyInstanceUID))
    assert (study.version, study.last_instance_at) == (2, 3.0)


def test_study_row_has_what_later_stages_need(ledger):
    synthetic = SyntheticStudy(
        patient=SyntheticPatient(patient_id="P-77", issuer="HOSP_A"), views=("PA",)
    )
    ds = make_chest_study(synthetic)[0]
    ledger.record_instance(record_for(ds), now=5.0)

    study = ledger.get_study(str(ds.StudyInstanceUID))
    assert (study.patient_id, study.issuer_of_patient_id) == ("P-77", "HOSP_A")
    assert (study.study_date, study.study_time) == ("20261201", "101500")
    assert study.accession_number == "ACC0001"
    assert study.state is StudyState.RECEIVING
    instance = ledger.get_instance(str(ds.SOPInstanceUID))
    assert instance.facts.view_position == "PA"
    assert instance.facts.body_part == "CHEST"
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert instance.size == 10


def test_transition_is_compare_and_set(ledger):
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    uid = str(ds.StudyInstanceUID)
    ledger.record_instance(record_for(ds), now=1.0)
    assert ledger.complete(uid, 1.0, StudyState.COMPLETE, "chest", "quiet", now=3.0)

    assert not ledger.transition(uid, StudyState.QUEUED, from_states=[StudyState.COMPLETE], version=2)
    assert not ledger.transition(uid, StudyState.DELIVERED, from_states=[StudyState.REPORTED])
    assert ledger.transition(uid, StudyState.QUEUED, "queued", from_states=[StudyState.COMPLETE],
                             version=1)
    assert ledger.get_study(uid).state is StudyState.QUEUED


def test_completion_refuses_when_an_instance_arrived_since(ledger):
    pa, lateral = make_chest_study(SyntheticStudy())
    uid = str(pa.StudyInstanceUID)
    ledger.record_instance(record_for(pa), now=1.0)
    ledger.record_instance(record_for(lateral), now=2.0)

    assert not ledger.complete(uid, 1.0, StudyState.COMPLETE, "chest", "quiet")
    assert ledger.complete(uid, 2.0, StudyState.COMPLETE, "chest", "quiet")


def test_counts_cover_every_state(ledger):
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    ledger.record_instance(record_for(ds))
    counts = ledger.count_by_state()
    assert set(counts) == {state.value for state in StudyState}
    assert counts["RECEIVING"] == 1 and sum(counts.values()) == 1


def test_retrieved_prior_is_kept_but_not_reported(ledger):
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    uid = str(ds.StudyInstanceUID)
    ledger.expect_retrieval(uid, 60, now=10.0)

    ledger.record_instance(record_for(ds), now=11.0)

    study = ledger.get_study(uid)
    assert study.state is StudyState.SKIPPED
    assert "prior" in study.state_reason
    assert ledger.get_instance(str(ds.SOPInstanceUID)) is not None


def test_retrieval_of_a_known_study_does_not_reopen_it(ledger):
    pa, lateral = make_chest_study(SyntheticStudy())
    uid = str(pa.StudyInstanceUID)
    ledger.record_instance(record_for(pa), now=1.0)
    ledger.complete(uid, 1.0, StudyState.COMPLETE, "chest", "quiet")
    ledger.expect_retrieval(uid, 60, now=5.0)

    ledger.record_instance(record_for(lateral), now=6.0)

    study = ledger.get_study(uid)
    assert (study.state, study.version) == (StudyState.COMPLETE, 1)


def test_expired_retrieval_is_an_ordinary_study(ledger):
    ds = make_chest_study(SyntheticStudy(views=("PA",)))[0]
    ledger.expect_retrieval(str(ds.StudyInstanceUID), 60, now=0.0)
    ledger.record_instance(record_for(ds), now=61.0)
    assert ledger.get_study(str(ds.StudyInstanceUID)).state is StudyState.RECEIVING


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    with ledger.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    ledger.close()


def test_a_patients_studies_are_found_by_index(ledger):
    assert "ix_studies_patient_id" in {
        index["name"] for index in sa.inspect(ledger.engine).get_indexes("studies")
    }
    if ledger.engine.dialect.name == "sqlite":
        with ledger.engine.connect() as connection:
            plan = " ".join(
                str(row[-1]) for row in connection.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT * FROM studies WHERE patient_id = 'P1'"
                )
            )
        assert "USING INDEX ix_studies_patient_id" in plan


def test_a_ledger_from_before_the_index_gets_it_when_opened(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    Ledger(url).close()
    old = sa.create_engine(url)
    with old.begin() as connection:
        connection.exec_driver_sql("DROP INDEX ix_studies_patient_id")
    old.dispose()

    ledger = Ledger(url)

    assert "ix_studies_patient_id" in {
        index["name"] for index in sa.inspect(ledger.engine).get_indexes("studies")
    }
    ledger.close()
