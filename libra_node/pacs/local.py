"""The node's own archive as a PACS: used when no PACS is configured (transport "none").

Priors are looked up among the studies the node has received (ledger rows,
spool files); stored objects land in the report folder, one folder per
study, written atomically like the spool.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from libra_node.ledger import Ledger, Study
from libra_node.logs import get_logger
from libra_node.pacs.base import PacsClient, PacsNotFound, PacsRejected
from libra_node.pacs.encoding import as_part10
from libra_node.selection import ImageFacts, StudyFacts
from libra_node.spool import Spool, is_valid_uid

log = get_logger(__name__)


class LocalArchive(PacsClient):
    """The ledger and spool as the archive; the report folder as the destination."""

    def __init__(
        self, ledger: Ledger, spool: Spool, output_dir: Path, *, owns_ledger: bool = False
    ) -> None:
        self.ledger = ledger
        self.owns_ledger = owns_ledger
        self.spool = spool
        self.output = Spool(output_dir)
        self.peer = "the node's own archive"

    def close(self) -> None:
        if self.owns_ledger:
            self.ledger.close()

    def echo(self) -> None:
        """Always reachable: it is this process."""

    def find_studies(
        self, patient_id: str, issuer: str = "", modalities: Sequence[str] = ()
    ) -> list[StudyFacts]:
        # Like a PACS that ignores ModalitiesInStudy matching: callers filter.
        found = []
        for study in self.ledger.studies_of_patient(patient_id):
            if issuer and study.issuer_of_patient_id != issuer:
                continue
            found.append(self._study_facts(study))
        return found

    def _study_facts(self, study: Study) -> StudyFacts:
        modalities = sorted(
            {
                i.facts.modality
                for i in self.ledger.instances_of(study.study_uid)
                if i.facts.modality
            }
        )
        return StudyFacts(
            study_instance_uid=study.study_uid,
            patient_id=study.patient_id,
            issuer_of_patient_id=study.issuer_of_patient_id,
            study_date=study.study_date,
            study_time=study.study_time,
            modalities=tuple(modalities),
            study_description=study.study_description,
        )

    def find_images(self, study_uid: str) -> list[ImageFacts]:
        return [instance.facts for instance in self.ledger.instances_of(study_uid)]

    def fetch_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        operation = "instance retrieval"
        instance = self.ledger.get_instance(sop_uid)
        if instance is None or (
            instance.facts.study_instance_uid,
            instance.facts.series_instance_uid,
        ) != (
            study_uid,
            series_uid,
        ):
            raise PacsNotFound(self.peer, operation, "the node has no such instance")
        path = self.spool.path(instance.file_path)
        if not path.is_file():
            raise PacsNotFound(self.peer, operation, "the instance's spool file is missing")
        return dcmread(path)

    def store(self, datasets: Sequence[Dataset]) -> None:
        operation = "store into the report folder"
        for ds in datasets:
            study_uid = str(ds.get("StudyInstanceUID", ""))
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            if not (is_valid_uid(study_uid) and is_valid_uid(sop_uid)):
                raise PacsRejected(
                    self.peer, operation, "object without valid study and SOP instance UIDs"
                )
            buffer = io.BytesIO()
            dcmwrite(buffer, as_part10(ds), enforce_file_format=True)
            self.output.store(f"{study_uid}/{sop_uid}.dcm", buffer.getvalue())
        log.info("pacs.stored", transport="none", count=len(datasets))

    def stored_path(self, study_uid: str, sop_uid: str) -> Path:
        """Where store() put an object."""
        return self.output.path(f"{study_uid}/{sop_uid}.dcm")
