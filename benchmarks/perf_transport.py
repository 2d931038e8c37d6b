"""The transport section of `make bench`: a 25 MB result up and down, fp32 and 16-bit."""

from __future__ import annotations

import statistics
import time

from perf_common import UNIT, config, new_run

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.serialization.tensors import Packer
from ganpool.store import Store, connect
from ganpool.store.submission import submission, upload_result
from ganpool.training.gradients import result_manifest, unit_gradients


def bench_transport(dsn: str, reps: int = 8) -> dict:
    """Upload = pack into the reused buffer + the worker's submission (one transaction: the
    claim checked, the payload by COPY); download = the coordinator's read (COPY out) with
    the manifest and finite checks."""
    from ganpool.coordinator.screening import Screening

    out = {}
    for transport in ("float32", "bfloat16", "float16"):
        cfg = config("dcgan64", transport=transport, results_per_step=reps, units_per_step=reps)
        run = new_run(dsn, f"transport-{transport}", cfg)
        coordinator = Coordinator(dsn, run)
        coordinator.start()
        store = Store(connect(dsn))
        worker_id = store.one(
            "register_worker", run_id=run.id, name="bench", hostname="bench", device="cpu"
        )["worker_id"]
        g, d = coordinator.state.g, coordinator.state.d
        faces = builtin_faces(64, 3)
        result = unit_gradients(g, d, faces.batch(list(range(UNIT))), 1, cfg.nz)
        packer = Packer(result_manifest(g, d, "both", cfg.transport_dtype))
        screening = Screening(run.id, cfg, g, d)
        up, down, size = [], [], 0
        for _ in range(reps):
            unit = store.one("claim_unit", worker_id=worker_id)
            t0 = time.perf_counter()
            payload = packer.pack(result.tensors)
            verdict = upload_result(
                store, submission(worker_id, unit), payload
            )  # the worker's own upload
            up.append(time.perf_counter() - t0)
            assert verdict["accepted"], verdict
            size = len(payload)
            rid = store.all("arrived_results", run_id=run.id, version=0)[-1]["id"]  # just sent
            t0 = time.perf_counter()
            screening.check(store.copy_out_blob("copy_result_payload", result_id=rid), "both")
            down.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        store.copy_out_blob("copy_weights_at", run_id=run.id, version=0)  # as a worker does
        weights_ms = (time.perf_counter() - t0) * 1e3
        store.close()
        coordinator.close()
        out[transport] = {
            "bytes": size,
            "upload_ms": statistics.median(up) * 1e3,
            "download_ms": statistics.median(down) * 1e3,
            "roundtrip_ms": (statistics.median(up) + statistics.median(down)) * 1e3,
            "weights_download_ms": weights_ms,
        }
    return out
