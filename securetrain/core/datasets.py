"""Demo datasets that ship inside scikit-learn (never downloaded at run time), as Arrow tables.

They stand in for a data owner's tabular data: ``breast-cancer`` (569 rows, 30 features, binary
label) and ``digits`` (1797 rows, 8x8 images flattened to 64 features, 10 classes).
"""

from __future__ import annotations

import io
import re

import pyarrow as pa
import pyarrow.parquet as pq

BUNDLED = ("breast-cancer", "digits")
LABEL_COLUMN = "label"


def bundled_table(name: str) -> pa.Table:
    """The bundled dataset ``name`` with one float column per feature and an integer ``label``."""
    from sklearn import datasets  # deferred: scikit-learn is slow to import and only demos need it

    loaders = {"breast-cancer": datasets.load_breast_cancer, "digits": datasets.load_digits}
    if name not in loaders:
        raise ValueError(f"unknown bundled dataset {name!r}; choose one of {', '.join(BUNDLED)}")
    bunch = loaders[name]()
    columns = {
        re.sub(r"\W+", "_", feature): bunch.data[:, i].astype("float32") for i, feature in enumerate(bunch.feature_names)
    }
    columns[LABEL_COLUMN] = bunch.target.astype("int64")
    return pa.table(columns)


def to_parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
