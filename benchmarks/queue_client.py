"""One client of the queue benchmark (benchmarks/performance.py): claim and complete units
through the worker API until none is left, and record when each completed. It imports no
torch, so sixteen of them start in well under a second.

    python benchmarks/queue_client.py DSN RUN_ID NAME OUT.json START_AT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ganpool.store.worker import Submission, WorkerStore


def main(dsn: str, run_id: str, name: str, out: str, start_at: str) -> None:
    store = WorkerStore.open(dsn)
    worker_id = store.register(int(run_id), name, hostname="bench", device="cpu")
    time.sleep(max(0.0, float(start_at) - time.time()))  # all clients start together
    done = []
    while (unit := store.claim_unit(worker_id)) is not None:
        submission = Submission(worker_id, unit.unit_id, unit.attempt)
        if store.submit_result(submission, b"x" * 64).accepted:  # the worker's own submission
            done.append(time.time())
    store.close()
    Path(out).write_text(json.dumps(done))


if __name__ == "__main__":
    main(*sys.argv[1:])
