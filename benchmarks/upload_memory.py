"""How much server memory does an oversized upload cost before it is refused? A student sends
a 300 MB payload three ways, each from a fresh session of an embedded PostgreSQL; the
figure is the growth of that server process's peak resident memory (VmHWM) during the call.

    .venv/bin/python benchmarks/upload_memory.py [--mb 300] [--honest-mb 25]

It also times an honest upload of --honest-mb (the worker's way) and the coordinator's read
of it back, so that bounding uploads is seen not to slow the normal path.

Runs on any version of ganpool's schema (a tree without chunked payloads says so for the
third way), so the same command measures before and after a change.
"""

from __future__ import annotations

import argparse
import time

import psycopg

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import builtin_faces
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate
from ganpool.store.submission import upload_result

CHUNK = 1 << 20


def peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def fields(worker_id: int, unit: dict) -> dict:
    return {
        "worker_id": worker_id,
        "unit_id": unit["unit_id"],
        "attempt": unit["attempt"],
        "g_loss": 0.0,
        "d_loss": 0.0,
        "d_real": 0.5,
        "d_fake": 0.5,
        "compute_seconds": 0.0,
    }


def as_parameter(store: Store, f: dict, payload: bytes) -> str:
    verdict = store.execute_binary("submit_result", **f, payload=payload)
    return f"refused: {verdict['reason']}" if not verdict["accepted"] else "accepted"


def copy_rows(store: Store, f: dict, payload: bytes, row_bytes: int) -> str:
    with store.tx():
        verdict = store.one("submit_begin", **f)
        view = memoryview(payload)
        with store.conn.cursor() as cur, cur.copy(store._sql("copy_payload")) as copy:
            copy.set_types(["int8", "bytea"])
            for i in range(0, len(view), row_bytes):
                copy.write_row((verdict["result_id"], view[i : i + row_bytes]))
    return "accepted"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--honest-mb", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    payload = b"\x01" * (args.mb * 1_000_000)
    with EmbeddedPostgres() as pg:
        dsn = pg.url()
        with connect(dsn) as conn:
            migrate(conn)
        limit = 2 * args.honest_mb * 1_000_000
        overrides = {"results_per_step": 8 + args.repeats, "max_payload_bytes": limit}
        cfg = load_run_config(preset="small", overrides=overrides)
        admin = Store(connect(dsn))
        run = create_run(admin, "upload", cfg, builtin_faces(cfg.image_size, cfg.channels))
        coordinator = Coordinator(dsn, run)
        coordinator.start()
        limit = run.config.max_payload_bytes
        print(f"run limit: {limit / 1e6:.1f} MB; attempts of {args.mb} MB")
        ways = {
            "one call, as a parameter": lambda s, f: as_parameter(s, f, payload),
            "COPY, one row": lambda s, f: copy_rows(s, f, payload, len(payload)),
            "COPY, rows of 1 MiB": lambda s, f: copy_rows(s, f, payload, CHUNK),
        }
        for name, attempt in ways.items():
            store = Store(connect(dsn))
            wid = store.one("register_worker", run_id=run.id, name="s", hostname="h", device="c")
            unit = store.one("claim_unit", worker_id=wid["worker_id"])
            pid = store.conn.info.backend_pid
            before = peak_kib(pid)
            t0 = time.perf_counter()
            try:
                outcome = attempt(store, fields(wid["worker_id"], unit))
            except psycopg.Error as e:
                outcome = f"refused: {str(e).strip().splitlines()[0]}"
            seconds = time.perf_counter() - t0
            grew = (peak_kib(pid) - before) / 1024
            print(f"{name:<26} server peak +{grew:7.0f} MiB  {seconds:5.2f} s  {outcome[:90]}")
            store.close()
        honest = b"\x02" * (args.honest_mb * 1_000_000)
        store = Store(connect(dsn))
        wid = store.one("register_worker", run_id=run.id, name="h", hostname="h", device="c")
        up, down = [], []
        for _ in range(args.repeats):
            unit = store.one("claim_unit", worker_id=wid["worker_id"])
            t0 = time.perf_counter()
            verdict = upload_result(store, fields(wid["worker_id"], unit), honest)
            up.append(time.perf_counter() - t0)
            assert verdict["accepted"], verdict
            rid = verdict["result_id"]  # (a payload this size goes by COPY)
            t0 = time.perf_counter()
            back = admin.copy_out_blob("copy_result_payload", result_id=rid)
            assert back == honest, (len(back or b""), len(honest))
            down.append(time.perf_counter() - t0)
            admin.execute("delete_payload", result_id=rid)
            admin.execute("reject_result", run_id=run.id, result_id=rid, reason="measured")
        store.close()
        up.sort(), down.sort()
        print(
            f"honest {args.honest_mb} MB upload (worker's way): median {up[len(up) // 2]:.3f} s; "
            f"read back (coordinator's way): median {down[len(down) // 2]:.3f} s"
        )
        coordinator.close()
        admin.close()


if __name__ == "__main__":
    main()
