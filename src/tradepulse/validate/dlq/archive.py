"""Dead letters that used up their redrives, kept as Parquet in the cold store.

    <cold root>/dlq-archive/date=YYYY-MM-DD/part-<digest>.parquet

The cold root is `<data_dir>/cold` on the embedded backend and `<bucket>/<prefix>` on S3; the
date is the trading day of `first_seen` (the cold store's `partition_groups`), and the name is
a digest of the `dlq_id`s inside, so archiving the same set again rewrites the same object. An
archive written just before a crash and before its entries left the queue may be written once
more with a different set: rows then repeat, and `dlq_id` is the key to keep one of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tradepulse.config import Settings
from tradepulse.store.cold.parquet import ColdTable, arrow_type, column_arrays, partition_groups
from tradepulse.validate.dlq.entry import DlqEntry

__all__ = ["ARCHIVE", "DlqArchive"]

ARCHIVE = ColdTable(
    "dlq-archive",
    {
        "dlq_id": "TEXT",
        "reason": "TEXT",
        "raw": "TEXT",
        "source": "TEXT",
        "first_seen": "INTEGER",
        "attempts": "INTEGER",
        "retries": "INTEGER",
        "ticker": "TEXT",
        "last_attempt": "INTEGER",
        "archived_at": "INTEGER",
    },
    rid="dlq_id",
    key=("dlq_id",),
    time_column="first_seen",
    by_ticker=False,  # a dead letter's ticker may be the malformed value itself
)


class DlqArchive:
    """Writes and reads `dlq-archive/` on a pyarrow filesystem (local or S3)."""

    def __init__(self, filesystem: pafs.FileSystem, cold_root: str) -> None:
        self.fs = filesystem
        self.root = f"{cold_root.rstrip('/')}/{ARCHIVE.name}"
        self._local = isinstance(filesystem, pafs.LocalFileSystem)

    @classmethod
    def for_settings(cls, settings: Settings) -> DlqArchive:
        if settings.backend == "cluster":
            from tradepulse.store.cold.s3 import cold_root, s3_filesystem

            return cls(s3_filesystem(settings), cold_root(settings))
        return cls(pafs.LocalFileSystem(), str((settings.data_dir / "cold").resolve()))

    @property
    def location(self) -> str:
        return self.root if self._local else f"s3://{self.root}"

    def write(self, entries: Sequence[DlqEntry], archived_at: int) -> list[str]:
        """Archive `entries`; return the paths written (one per date)."""
        if not entries:
            return []
        data: dict[str, list[Any]] = {
            c: [getattr(e, c) for e in entries] for c in ARCHIVE.columns if c != "archived_at"
        }
        data["archived_at"] = [archived_at] * len(entries)
        arrays = column_arrays(ARCHIVE, data)
        table = pa.table({c: arrays[c] for c in ARCHIVE.file_columns})
        paths = []
        for rel, idx in partition_groups(ARCHIVE, data):
            part = table.take(pa.array(idx))
            ids = sorted(part.column("dlq_id").to_pylist())
            digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]
            path = f"{self.root}/{rel}/part-{digest}.parquet"
            self._write(part, path)
            paths.append(path)
        return paths

    def _write(self, table: pa.Table, path: str) -> None:
        if not self._local:
            pq.write_table(table, path, filesystem=self.fs, compression="snappy")  # atomic PUT
            return
        # Locally, a crash mid-write must not leave a torn file for readers: write, then rename.
        directory, name = path.rsplit("/", 1)
        self.fs.create_dir(directory, recursive=True)
        tmp = f"{directory}/.{name}.tmp"
        pq.write_table(table, tmp, filesystem=self.fs, compression="snappy")
        self.fs.move(tmp, path)

    def read(self) -> pa.Table:
        """Every archived row (with `date` from the path); empty when nothing is archived."""
        infos = self.fs.get_file_info(
            pafs.FileSelector(self.root, recursive=True, allow_not_found=True)
        )
        files = sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet"))
        parts = pa.schema([pa.field("date", pa.date32())])
        if not files:
            stored = [pa.field(c, arrow_type(t)) for c, t in ARCHIVE.columns.items()]
            return pa.schema([*stored, *parts]).empty_table()
        dataset = ds.dataset(
            files,
            format="parquet",
            filesystem=self.fs,
            partitioning=ds.partitioning(parts, flavor="hive"),
            partition_base_dir=self.root,
        )
        return dataset.to_table()
