"""Parsing securetrain's DAGs beside parsing a trivial DAG: what our DAG files cost the dag-processor.

Each parse runs in a fresh process with Airflow already imported (every DAG parser has it), timing only
``DagBag`` over the folder. Baseline: a folder with one DAG of one ``EmptyOperator``. Figures are the
median of ``--repeats`` runs of each; the target is well under a second for all of ``dags/``.

Usage: ``python -m benchmarks.dag_parsing [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Run in the child: parse a folder, report the time, the DAG ids, import errors and heavy modules loaded.
PARSE = """
import json, sys, time
import airflow.sdk
from airflow.dag_processing.dagbag import DagBag
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "dags": sorted(bag.dag_ids),
                  "errors": {k: str(v) for k, v in bag.import_errors.items()},
                  "heavy": [m for m in ("torch", "great_expectations") if m in sys.modules]}))
"""

_TRIVIAL = """
import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="trivial", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):
    EmptyOperator(task_id="nothing")
"""


def parse(folder: Path, airflow_home: Path) -> dict:
    env = {"AIRFLOW_HOME": str(airflow_home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", PARSE, str(folder)], capture_output=True, text=True, env=env,
                            timeout=300, check=True)  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="securetrain-bench-") as tmp:
        home, trivial = Path(tmp) / "airflow", Path(tmp) / "dags"
        trivial.mkdir()
        (trivial / "trivial.py").write_text(_TRIVIAL)
        ours, baseline = [], []
        for _ in range(args.repeats):
            ours.append(parse(REPO / "dags", home)["seconds"])
            baseline.append(parse(trivial, home)["seconds"])
    ours_s, baseline_s = statistics.median(ours), statistics.median(baseline)
    print(f"securetrain's DAGs: {ours_s:.3f} s; one trivial DAG: {baseline_s:.3f} s; ratio {ours_s / baseline_s:.1f} "
          "(target: ours well under 1 s)")  # fmt: skip
    print(json.dumps({"benchmark": "dag_parsing", "dags_seconds": round(ours_s, 3),
                      "trivial_dag_seconds": round(baseline_s, 3), "ratio": round(ours_s / baseline_s, 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
