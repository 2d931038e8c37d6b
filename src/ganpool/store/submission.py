"""A worker's submission of a result, the one write on its hot path (no torch needed here):
`WorkerStore.submit_result` sends it; tests and benchmarks may call `upload_result` direct."""

from __future__ import annotations

from ganpool.store.connection import Store

# Payloads from this size up stream in by COPY (25 MB: ~100 ms here, against ~170 ms as a
# bound parameter); smaller ones go in one call, as a parameter (fewer round trips).
COPY_FROM_BYTES = 1 << 20
# A payload is stored as rows of at most this many bytes (the database's
# ganpool_payload_chunk_bytes()): its trigger checks each one, and the running total, as it
# arrives, so an oversized upload is refused without the server buffering all of it.
PAYLOAD_CHUNK_BYTES = 1 << 20


def submission(
    worker_id: int,
    unit: dict,
    *,
    g_loss: float = 0.0,
    d_loss: float = 0.0,
    d_real: float = 0.5,
    d_fake: float = 0.5,
    compute_seconds: float = 0.0,
) -> dict:
    """The fields a submission sends besides its payload, for a claimed `unit` row (for
    tests and benchmarks that call the worker functions by name; a worker sends a
    `WorkerStore.submit_result`)."""
    return {
        "worker_id": worker_id,
        "unit_id": unit["unit_id"],
        "attempt": unit["attempt"],
        "g_loss": g_loss,
        "d_loss": d_loss,
        "d_real": d_real,
        "d_fake": d_fake,
        "compute_seconds": compute_seconds,
    }


def upload_result(store: Store, fields: dict, payload: memoryview | bytes) -> dict:
    """Submit a result: in one transaction, the claim is checked and the result recorded,
    then the payload streams in by COPY (a retry whose first try committed sends nothing).
    A small payload goes in one call instead, as a parameter: fewer round trips win there.
    Returns the database's verdict: accepted, and the reason when not."""
    if len(payload) < COPY_FROM_BYTES:
        return store.execute_binary("submit_result", **fields, payload=payload)
    with store.tx():
        verdict = store.one("submit_begin", **fields)
        if verdict["result_id"] is not None:
            view = memoryview(payload)
            rid = verdict["result_id"]
            chunks = (
                (rid, view[i : i + PAYLOAD_CHUNK_BYTES])
                for i in range(0, len(view), PAYLOAD_CHUNK_BYTES)
            )
            store.copy_in("copy_payload", ["int8", "bytea"], rows=chunks)
    return verdict
