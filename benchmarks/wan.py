"""`make bench-wan`: a class of simulated GPU students on home broadband, against one of them.

PostgreSQL (embedded, listening on 127.0.0.1) and the coordinator sit on one side; each
worker sits behind its own shaped link (benchmarks/wan_links.py: a loopback proxy that limits
each direction to a rate and delays it by half the round trip; default profile: home
broadband, 20 Mbit/s up, 50 Mbit/s down, 30 ms round trip). Workers are real `Worker`s
whose unit computation is a stand-in for a GPU (benchmarks/wan_workers.py): a unit takes
images / R seconds while real-sized, valid payloads cross the link. COMPUTE IS SIMULATED.

For each training mode (a dict of run settings) and each class size it reports the
cluster's images/s, the scaling efficiency (images/s / (n x the same mode with one worker
over the same link)), the share of the simulated GPUs kept busy (images/s / (n x R)), the
bytes moved per trained image (counted at the links, up and down) and where each worker's
time went (computing / uploading / downloading / waiting, from the stand-in's compute spans
and the links' busy intervals).

    .venv/bin/python benchmarks/wan.py [--quick] [--sizes 1,4,16] [--modes NAME,...|JSON]
        [--up-mbit 20 --down-mbit 50 --rtt-ms 30] [--rate 2000] [--out PATH]

Writes bench/results/wan.json (the fixed keys first) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path

import psycopg
import torch

from ganpool.coordinator import Coordinator
from ganpool.data.datasets import ZipImages, builtin_faces
from ganpool.local_demo.embedded import EmbeddedPostgres
from ganpool.runs import create_run
from ganpool.settings import load_run_config
from ganpool.store import Store, connect, migrate

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = ROOT / "bench" / "results" / "wan.json"
QUALITY = ROOT / "bench" / "results" / "quality.json"

# The training modes: run settings over the 64x64 DCGAN's defaults. "sync-alternating" is
# today's default (the alternating rule, fp32 transport): the baseline of the fixed keys.
LOCAL = {"update_rule": "local", "outer_delay": 1}
MODES: dict[str, dict] = {
    "sync-alternating": {"update_rule": "alternating"},
    "sync-simultaneous": {"update_rule": "simultaneous"},
    "sync-simultaneous-bf16": {"update_rule": "simultaneous", "transport": "bfloat16"},
    # The local rule (DiLoCo-style): H local steps per unit, the weight change sent in 16 or
    # 8 bits, the outer step delayed one round so uploads overlap the next round's compute.
    "local-h32-bf16": {**LOCAL, "local_steps": 32, "delta_dtype": "bfloat16"},
    "local-h32-int8": {**LOCAL, "local_steps": 32, "delta_dtype": "int8"},
    "local-h128-bf16": {**LOCAL, "local_steps": 128, "delta_dtype": "bfloat16"},
    "local-h128-int8": {**LOCAL, "local_steps": 128, "delta_dtype": "int8"},
    # The outer step not delayed (better per image, docs/quality.md): workers wait for it.
    "local-h32-int8-nodelay": {**LOCAL, "local_steps": 32, "delta_dtype": "int8", "outer_delay": 0},
    "local-h128-int8-nodelay": {
        **LOCAL,
        "local_steps": 128,
        "delta_dtype": "int8",
        "outer_delay": 0,
    },
}
BASELINE = "sync-alternating"
SPLIT = ("compute", "upload", "download", "waiting")  # where a worker's time goes
# Four modes x three class sizes fit in ~15 minutes here; the others run with --modes.
DEFAULT_MODES = ["sync-alternating", "sync-simultaneous", "local-h32-bf16", "local-h128-int8"]
QUICK_MODES = [BASELINE, "local-h32-int8"]


# -- the pieces: links, database, workers ---------------------------------------------


class LinkProcess:
    """The shaped links (wan_links.py in its own process), driven over its stdin/stdout."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "wan_links.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ports: list[int] = []

    def ask(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def add(self, port: int, up_mbit: float, down_mbit: float, rtt_ms: float) -> tuple[int, int]:
        """A new link to 127.0.0.1:port; returns (link id, the port to connect to)."""
        a = self.ask(
            cmd="add",
            target=["127.0.0.1", port],
            up_mbit=up_mbit,
            down_mbit=down_mbit,
            rtt_ms=rtt_ms,
        )
        self.ports.append(a["port"])
        return a["link"], a["port"]

    def bytes(self) -> dict[int, dict[str, int]]:
        return {int(k): v for k, v in self.ask(cmd="stats")["bytes"].items()}

    def close(self) -> None:
        self.proc.stdin.close()  # it exits on EOF
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class WorkerHosts:
    """The simulated students of one run: processes of up to `per_host` Worker threads."""

    def __init__(
        self,
        rate: float,
        run_name: str,
        dbname: str,
        data: Path,
        out: Path,
        ports: list[int],
        per_host: int,
    ):
        self.out = out
        self.names = [f"w{i}" for i in range(len(ports))]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.procs = []
        for first in range(0, len(ports), per_host):
            group = range(first, min(first + per_host, len(ports)))
            specs = [f"{self.names[i]}={ports[i]}" for i in group]
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(HERE / "wan_workers.py"),
                        str(rate),
                        run_name,
                        dbname,
                        str(data),
                        str(out),
                        *specs,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )

    def failed(self) -> str | None:
        for p in self.procs:
            if p.poll() is not None:
                return f"a worker process exited with status {p.returncode}"
        return None

    def dump(self) -> dict[str, dict]:
        """Each worker's compute spans and timeline, asked of the live processes."""
        for p in self.procs:
            if p.poll() is None:
                p.stdin.write("dump\n")
                p.stdin.flush()
        for p in self.procs:
            if p.poll() is None:
                p.stdout.readline()
        found = {}
        for name in self.names:
            path = self.out / f"{name}.json"
            if path.exists():
                found[name] = json.loads(path.read_text())
        return found

    def close(self) -> None:
        for p in self.procs:
            if p.stdin and not p.stdin.closed:
                p.stdin.close()  # it exits on EOF, mid-upload or not
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def class_dataset(folder: Path, images: int, cfg) -> Path:
    """A zip of `images` image files (the 100 built-in faces, cycled): the class's dataset.
    The built-in faces alone are 100 images, and a unit never spans two epochs, so a local
    unit of H x 64 images needs an epoch at least that long."""
    import io
    import zipfile

    from PIL import Image

    faces = builtin_faces(cfg.image_size, cfg.channels).originals
    encoded = []
    for face in faces:
        buffer = io.BytesIO()
        Image.fromarray(face).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    path = folder / "class-images.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(images):
            z.writestr(f"img_{i:06d}.png", encoded[i % len(encoded)])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(mode: dict, workers: int, args):
    """The 64x64 DCGAN on the class's images; a step takes `units_per_worker` units per
    worker (the class's global batch grows with it: weak scaling)."""
    settings = {k: v for k, v in mode.items() if k != "name"}
    units = workers * args.units_per_worker
    base = {
        "dataset": "folder",
        "unit_size": args.unit_size,
        "results_per_step": units,
        "sample_every": 1_000_000,
        "lease_s": 120.0,
    }
    return load_run_config(preset=args.preset, overrides={**base, **settings})


# -- one run: a mode, a class size ----------------------------------------------------


def intervals_partition(window, layers: list[list[tuple[float, float]]]) -> list[float]:
    """Split the window's time by the first layer active at each moment (the rest: idle).
    Returns one duration per layer, then the idle time."""
    a, b = window
    edges = {a, b}
    clipped = []
    for spans in layers:
        cut = [(max(s, a), min(e, b)) for s, e in spans if e > a and s < b]
        clipped.append(cut)
        for s, e in cut:
            edges.update((s, e))
    edges = sorted(edges)
    out = [0.0] * (len(layers) + 1)
    for lo, hi in itertools.pairwise(edges):
        mid = (lo + hi) / 2
        for i, spans in enumerate(clipped):
            if any(s <= mid < e for s, e in spans):
                out[i] += hi - lo
                break
        else:
            out[-1] += hi - lo
    return out


def measure_run(ctx, mode: dict, n: int) -> dict:
    """Train mode with n workers until the window is long enough; the run's figures."""
    args = ctx.args
    cfg = run_config(mode, n, args)
    name = f"{mode['name']}-{n}"
    with closing(Store(connect(ctx.dsn))) as store:
        run = create_run(store, name, cfg, ctx.dataset)
    torch.set_num_threads(1)
    coordinator = Coordinator(ctx.dsn, run, poll_s=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=coordinator.serve, args=(stop.is_set,), daemon=True)
    out = ctx.workdir / name
    out.mkdir()
    links = [link for link, _ in ctx.worker_links[:n]]
    ports = [port for _, port in ctx.worker_links[:n]]
    thread.start()
    hosts = WorkerHosts(args.rate, name, ctx.dbname, ctx.data_path, out, ports, args.per_host)
    marks = []  # (time, images applied, bytes per link) at every change of images applied
    started = time.time()
    failure = None
    try:
        with closing(Store(connect(ctx.dsn))) as probe:
            seen = 0
            while True:
                time.sleep(0.2)
                images = probe.one("run_by_name", name=name)["images_applied"]
                now = time.time()
                if images != seen:
                    seen = images
                    counters = ctx.links.bytes()
                    marks.append((now, images, [counters[i] for i in links]))
                if _enough(marks, now - started, args, cfg):
                    break
                failure = hosts.failed() or (None if thread.is_alive() else "coordinator ended")
                if failure:
                    break
        busy = ctx.links.ask(cmd="busy")["busy"]
        spans = hosts.dump()
    finally:
        hosts.close()
        stop.set()
        thread.join(30)
        ctx.links.ask(cmd="reset")
    return _figures(mode, n, cfg, marks, busy, spans, links, args, failure, started)


def _warm_up(cfg) -> int:
    """Steps to leave out of the window: under the local rule with the outer step delayed,
    the first two rounds are computed back to back (the pipeline filling), so the first
    interval is not a steady one."""
    return 1 if _paired(cfg) else 0


def _paired(cfg) -> bool:
    """With the outer step delayed, each worker has two rounds in flight and rounds land in
    pairs (a short interval, then a long one): the window then holds whole pairs."""
    return cfg.update_rule == "local" and cfg.outer_delay == 1


def _window(marks: list, cfg) -> list:
    """The marks the window spans: from the first steady step to the last one seen (to
    the last that closes a pair, when rounds come in pairs)."""
    steady = marks[_warm_up(cfg) :]
    if _paired(cfg) and len(steady) >= 3 and (len(steady) - 1) % 2:
        steady = steady[:-1]
    return steady


def _enough(marks: list, elapsed: float, args, cfg) -> bool:
    """Stop once the window holds two steps and is long enough; after max_run_s, once it
    holds the least that measures (one step, or one pair of rounds); after three times
    that, whatever it holds."""
    steady = _window(marks, cfg)
    window = steady[-1][0] - steady[0][0] if steady else 0.0
    if len(steady) >= 3 and window >= args.measure_s:
        return True
    if elapsed >= args.max_run_s and len(steady) >= (3 if _paired(cfg) else 2):
        return True
    return elapsed >= 3 * args.max_run_s


def _figures(mode, n, cfg, marks, busy, spans, links, args, failure, started) -> dict:
    seconds = time.time() - started
    r: dict = {"mode": mode["name"], "workers": n, "settings": _settings(cfg), "seconds": seconds}
    if marks:
        r["first_step_s"] = marks[0][0] - started
    if failure:
        r["failure"] = failure
    r["steps_seen"] = [[round(t - started, 2), images] for t, images, _ in marks]
    span = _window(marks, cfg)
    if len(span) < 2:
        r["images_per_s"] = None
        r["note"] = f"too few steps in {seconds:.0f} s: nothing to measure"
        return r
    (t0, i0, b0), (t1, i1, b1) = span[0], span[-1]
    images, window = i1 - i0, t1 - t0
    up = sum(b["up"] for b in b1) - sum(b["up"] for b in b0)
    down = sum(b["down"] for b in b1) - sum(b["down"] for b in b0)
    r |= {
        "window_s": window,
        "steps_in_window": len(span) - 1,
        "images": images,
        "images_per_s": images / window,
        "gpu_fraction": images / window / (n * args.rate),
        "bytes_up_per_image": up / images,
        "bytes_down_per_image": down / images,
        "bytes_per_image": (up + down) / images,
    }
    shares = []
    for i, name in zip(links, [f"w{k}" for k in range(n)], strict=True):
        compute = [tuple(s) for s in spans.get(name, {}).get("compute", [])]
        link = busy[str(i)]
        parts = intervals_partition((t0, t1), [compute, link["up"], link["down"]])
        shares.append([p / window for p in parts])
    if shares:
        r["time_split"] = {k: statistics.mean(s[j] for s in shares) for j, k in enumerate(SPLIT)}
    return r


def _settings(cfg) -> dict:
    keys = ("update_rule", "transport", "unit_size", "results_per_step", "units_per_step")
    extra = ("local_steps", "outer_lr", "outer_momentum", "delta_dtype", "outer_delay")
    d = cfg.to_dict()
    return {k: d[k] for k in (*keys, *extra) if k in d}


# -- checks of the setup itself ---------------------------------------------------------


class SourceSink:
    """A loopback TCP server that sends `total` bytes to a client that asks ("d"), or
    swallows what a client sends until it closes ("u"): raw transfers, no database."""

    def __init__(self, total: int):
        self.total = total
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._one, args=(c,), daemon=True).start()

    def _one(self, c: socket.socket) -> None:
        with c:
            if c.recv(1) == b"d":
                block = b"x" * (1 << 16)
                for _ in range(self.total // len(block)):
                    c.sendall(block)
            else:
                while c.recv(1 << 20):
                    pass
                c.sendall(b"k")

    def rates_mbit(self, port: int) -> dict[str, float]:
        """Down and up through `port` (the server itself, or a link to it)."""
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"d")
            t, got = time.perf_counter(), 0
            while chunk := s.recv(1 << 20):
                got += len(chunk)
            down = got * 8 / (time.perf_counter() - t) / 1e6
        block = b"y" * (1 << 16)
        sent = self.total // len(block) * len(block)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"u")
            t = time.perf_counter()
            for _ in range(sent // len(block)):
                s.sendall(block)
            s.shutdown(socket.SHUT_WR)
            s.recv(1)
            up = sent * 8 / (time.perf_counter() - t) / 1e6
        return {"down": down, "up": up}

    def close(self) -> None:
        self.server.close()


def check_links(links: LinkProcess, pg_port: int, args) -> dict:
    """Is the setup what it claims? (1) The proxy is not a bottleneck: one unshaped link
    against a direct loopback connection. (2) The shaping matches the profile: a bulk
    transfer each way through a profile link. (3) Through PostgreSQL over a profile link:
    a small query's round trip, and a bulk value each way (the server's time included)."""
    fast = SourceSink(200_000_000 if not args.quick else 50_000_000)
    _, unshaped = links.add(fast.port, 0, 0, 0)
    proxy = {"direct_mbit": fast.rates_mbit(fast.port), "proxied_mbit": fast.rates_mbit(unshaped)}
    fast.close()
    seconds = args.check_s
    shaped = SourceSink(int(args.down_mbit * 1e6 / 8 * seconds))
    _, port = links.add(shaped.port, args.up_mbit, args.down_mbit, args.rtt_ms)
    raw = shaped.rates_mbit(port)
    shaped.close()
    _, port = links.add(pg_port, args.up_mbit, args.down_mbit, args.rtt_ms)
    up_bytes = int(args.up_mbit * 1e6 / 8 * seconds)
    down_bytes = int(args.down_mbit * 1e6 / 8 * seconds)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres") as conn:
        rtts = []
        for _ in range(10):
            t = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            rtts.append(time.perf_counter() - t)
        rtt = statistics.median(rtts)
        with conn.cursor(binary=True) as cur:
            t = time.perf_counter()
            cur.execute("SELECT length(%b)", [b"\0" * up_bytes], binary=True).fetchone()
            up_s = time.perf_counter() - t
            t = time.perf_counter()
            cur.execute("SELECT decode(repeat('00', %s), 'hex')", [down_bytes]).fetchone()
            down_s = time.perf_counter() - t
    return {
        "profile": {"up_mbit": args.up_mbit, "down_mbit": args.down_mbit, "rtt_ms": args.rtt_ms},
        "shaped_mbit": raw,
        "rtt_ms": rtt * 1e3,
        "postgres_mbit": {"up": up_bytes * 8 / up_s / 1e6, "down": down_bytes * 8 / down_s / 1e6},
        "proxy": proxy,
        "class_needs_mbit": max(args.sizes) * args.down_mbit,
    }


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def kid_within_ci() -> tuple[bool, str]:
    """The quality protocol's verdict, from its last result file."""
    if not QUALITY.exists():
        return (
            False,
            f"{_shown(QUALITY)} does not exist: the quality protocol has "
            "not run on this checkout, so no KID verdict (false)",
        )
    try:
        value = json.loads(QUALITY.read_text()).get("kid_within_ci")
    except (OSError, ValueError) as e:
        return False, f"{_shown(QUALITY)} unreadable ({e}): false"
    if not isinstance(value, bool):
        return False, f"{_shown(QUALITY)} has no boolean kid_within_ci: false"
    return value, f"read from {_shown(QUALITY)}"


# -- the report ---------------------------------------------------------------------------


def summarise(runs: list[dict], sizes: list[int], new_modes: list[str]) -> dict:
    """Efficiency against each mode's one-worker run, and the fixed keys."""
    alone = {r["mode"]: r.get("images_per_s") for r in runs if r["workers"] == 1}
    for r in runs:
        one = alone.get(r["mode"])
        ok = r.get("images_per_s") and one
        r["scaling_efficiency"] = r["images_per_s"] / (r["workers"] * one) if ok else None
    top = max(sizes)
    at_top = {r["mode"]: r for r in runs if r["workers"] == top}
    base = at_top.get(BASELINE, {})
    new = [at_top[m] for m in new_modes if at_top.get(m, {}).get("scaling_efficiency")]
    # The best new mode is the one a class would pick: the most images/s at this size (its
    # efficiency is the key; a mode slow everywhere can "scale" well).
    best = max(new, key=lambda r: r["images_per_s"], default=None)
    ratio = None
    if best and base.get("bytes_per_image"):
        ratio = base["bytes_per_image"] / best["bytes_per_image"]
    return {
        "scaling_efficiency_16": best["scaling_efficiency"] if best else None,
        "scaling_efficiency_16_sync": base.get("scaling_efficiency"),
        "bytes_per_image_ratio": ratio,
        "best_new_mode": best["mode"] if best else None,
        "best_new_mode_rule": "the new mode with the most images/s at the largest class size",
        "workers_for_keys": top,
    }


def table(runs: list[dict]) -> str:
    head = (
        "| mode | workers | images/s | scaling eff. | GPU busy | KB/image up | KB/image down "
        "| compute / upload / download / waiting |\n|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in runs:
        if not r.get("images_per_s"):
            rows.append(f"| {r['mode']} | {r['workers']} | n/a | | | | | {r.get('note', '')} |")
            continue
        split = r.get("time_split", {})
        eff = r.get("scaling_efficiency")
        rows.append(
            f"| {r['mode']} | {r['workers']} | {r['images_per_s']:.1f} | "
            f"{'n/a' if eff is None else f'{eff:.2f}'} | {r['gpu_fraction']:.3f} | "
            f"{r['bytes_up_per_image'] / 1e3:.1f} | {r['bytes_down_per_image'] / 1e3:.1f} | "
            + " / ".join(f"{split.get(k, 0):.2f}" for k in SPLIT)
            + " |"
        )
    return head + "\n".join(rows)


def parse_modes(text: str) -> list[dict]:
    """Names from MODES, or a JSON list of {"name": ..., setting: value, ...}."""
    if text.lstrip().startswith("["):
        modes = json.loads(text)
        for m in modes:
            if not isinstance(m, dict) or "name" not in m:
                raise SystemExit(f"--modes: each mode needs a name: {m!r}")
        return modes
    unknown = [m for m in text.split(",") if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")
    return [{"name": m, **MODES[m]} for m in text.split(",")]


def arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1-2 workers, short")
    ap.add_argument("--sizes", help="class sizes, e.g. 1,4,16 (the first must be 1)")
    ap.add_argument("--modes", help=f"mode names ({', '.join(MODES)}) or a JSON list")
    ap.add_argument("--up-mbit", type=float, default=20.0, help="each worker's uplink")
    ap.add_argument("--down-mbit", type=float, default=50.0, help="each worker's downlink")
    ap.add_argument("--rtt-ms", type=float, default=30.0, help="round trip time")
    ap.add_argument("--rate", type=float, default=2000.0, help="R: simulated images/s per GPU")
    ap.add_argument("--preset", help="model: dcgan64 (default) or small (--quick's default)")
    ap.add_argument("--dataset-images", type=int, default=8192, help="images in an epoch")
    ap.add_argument("--unit-size", type=int, default=64, help="images per unit")
    ap.add_argument("--units-per-worker", type=int, default=1, help="units per worker per step")
    ap.add_argument("--per-host", type=int, default=4, help="worker threads per process")
    ap.add_argument("--measure-s", type=float, help="least window (first to last step seen)")
    ap.add_argument("--max-run-s", type=float, help="a run stops with one step after this long")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--refresh-kid",
        action="store_true",
        help="measure nothing: take kid_within_ci again from the quality protocol's last "
        "result into an existing --out (after `make bench-quality`)",
    )
    args = ap.parse_args()
    quick = args.quick
    args.sizes = [int(s) for s in (args.sizes or ("1,2" if quick else "1,4,16")).split(",")]
    if args.sizes[0] != 1:
        raise SystemExit("--sizes must start with 1: efficiency is measured against one worker")
    default_modes = ",".join(QUICK_MODES if quick else DEFAULT_MODES)
    args.modes = parse_modes(args.modes or default_modes)
    args.preset = args.preset or ("small" if quick else "dcgan64")
    args.measure_s = args.measure_s or (1.5 if quick else 20.0)
    args.max_run_s = args.max_run_s or (15.0 if quick else 60.0)
    args.check_s = 0.5 if quick else 2.0  # seconds of each bulk transfer in the link check
    return args


class Context:
    """What every run shares: the database, the links, the dataset."""

    def __init__(self, args, dsn, dbname, links, worker_links, dataset, data_path, workdir):
        self.args, self.dsn, self.dbname, self.links = args, dsn, dbname, links
        self.worker_links, self.dataset, self.data_path = worker_links, dataset, data_path
        self.workdir = workdir


def _interrupted(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does: every `finally` runs


def refresh_kid(path: Path) -> None:
    """Carry the quality protocol's newest verdict into an existing result file: the link
    figures do not depend on it, so they are kept as measured (with their run's date)."""
    out = json.loads(path.read_text())
    kid, kid_note = kid_within_ci()
    out["kid_within_ci"], out["kid_note"] = kid, kid_note
    out["notes"] = [n for n in out["notes"] if not n.startswith("kid_within_ci:")]
    out["notes"].append(f"kid_within_ci: {kid_note}")
    out["kid_refreshed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"kid_within_ci: {kid} ({kid_note}); rewrote {path}")


def main() -> None:
    args = arguments()
    if args.refresh_kid:
        refresh_kid(args.out)
        return
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ganpool-wan-"))
    result: dict = {}
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        pg = stack.enter_context(EmbeddedPostgres(port=free_port()))
        links = LinkProcess()
        stack.callback(links.close)
        dsn = pg.url()
        with connect(dsn) as conn:
            migrate(conn)
        checks = check_links(links, pg.port, args)
        print(f"links: {json.dumps(checks)}", flush=True)
        print(
            f"shaped link (bulk, raw TCP): up {checks['shaped_mbit']['up']:.1f} Mbit/s, "
            f"down {checks['shaped_mbit']['down']:.1f} Mbit/s; round trip through PostgreSQL "
            f"{checks['rtt_ms']:.1f} ms (profile: {args.up_mbit:g} up, {args.down_mbit:g} down, "
            f"{args.rtt_ms:g} ms); proxy unshaped: {checks['proxy']['proxied_mbit']['down']:.0f}"
            f" Mbit/s down vs {checks['proxy']['direct_mbit']['down']:.0f} direct "
            f"(the class needs {checks['class_needs_mbit']:.0f} at most)",
            flush=True,
        )
        # One link per worker, reused by every run: (link id, port)
        worker_links = [
            links.add(pg.port, args.up_mbit, args.down_mbit, args.rtt_ms)
            for _ in range(max(args.sizes))
        ]
        cfg = run_config(args.modes[0], 1, args)
        data = class_dataset(workdir, args.dataset_images, cfg)
        dataset = ZipImages(data, cfg.image_size, cfg.channels)
        ctx = Context(args, dsn, "postgres", links, worker_links, dataset, data, workdir)
        runs = []
        for mode in args.modes:
            for n in args.sizes:
                r = measure_run(ctx, mode, n)
                runs.append(r)
                print(f"{mode['name']} x {n}: {json.dumps(r)}", flush=True)
        result["link_check"] = checks
        result["links_ports"] = links.ports
        result["postgres_data_dir"] = str(pg.data_dir)
        result["workdir"] = str(workdir)
    new_modes = [m["name"] for m in args.modes if not m["name"].startswith("sync-")]
    keys = summarise(runs, args.sizes, new_modes)
    kid, kid_note = kid_within_ci()
    out = {
        **{
            k: keys[k]
            for k in (
                "scaling_efficiency_16",
                "scaling_efficiency_16_sync",
                "bytes_per_image_ratio",
            )
        },
        "compute_simulated": True,
        "kid_within_ci": kid,
        "kid_note": kid_note,
        "best_new_mode": keys["best_new_mode"],
        "best_new_mode_rule": keys["best_new_mode_rule"],
        "workers_for_keys": keys["workers_for_keys"],
        "baseline_mode": BASELINE,
        "notes": _notes(keys, new_modes, args),
        "profile": {"up_mbit": args.up_mbit, "down_mbit": args.down_mbit, "rtt_ms": args.rtt_ms},
        "rate_images_per_s": args.rate,
        "unit_size": args.unit_size,
        "dataset_images": args.dataset_images,
        "preset": args.preset,
        "units_per_worker": args.units_per_worker,
        "quick": args.quick,
        "runs": runs,
        **result,
        "machine": {
            "cores": os.cpu_count(),
            "load_avg_1m_end": os.getloadavg()[0],
            "torch": torch.__version__,
        },
        "bench_seconds": time.monotonic() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print()
    print(
        "COMPUTE IS SIMULATED: each unit takes images / R seconds "
        f"(R = {args.rate:g} images/s), real-sized payloads cross the links."
    )
    print(table(runs))
    print()
    for k in (
        "scaling_efficiency_16",
        "scaling_efficiency_16_sync",
        "bytes_per_image_ratio",
        "compute_simulated",
        "kid_within_ci",
    ):
        print(f"{k}: {out[k]}")
    for note in out["notes"]:
        print(f"note: {note}")
    print(f"written to {args.out} in {out['bench_seconds']:.0f} s")


def _notes(keys: dict, new_modes: list[str], args) -> list[str]:
    notes = ["compute is simulated: a unit takes images / R seconds on a stand-in for a GPU"]
    if not new_modes:
        notes.append(
            "no communication-light mode was measured (none in --modes): "
            "scaling_efficiency_16 and bytes_per_image_ratio are null"
        )
    if keys["workers_for_keys"] != 16:
        notes.append(f"the *_16 keys were measured with {keys['workers_for_keys']} workers")
    _, kid_note = kid_within_ci()
    notes.append(f"kid_within_ci: {kid_note}")
    return notes


if __name__ == "__main__":
    main()
