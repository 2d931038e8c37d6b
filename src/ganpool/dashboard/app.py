"""`ganpool dashboard`: a live page for the class, over a JSON API (OpenAPI at /docs).

Reads go through `db` (a viewer login is enough). The instructor's controls (pause, resume,
stop, disable a student) need a login on the page (the `instructor_password`) and a
connection with instructor rights (`control_db`, default `db`); everyone else gets a
read-only view. The page polls the API every two seconds; long series are downsampled in
SQL, so it stays light with 100 workers and 10,000 steps.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import psycopg
from fastapi import Cookie, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field

from ganpool.settings import RunConfig
from ganpool.store.queries import named_queries

RunName = Annotated[str, Path(min_length=1, max_length=200)]
COOKIE = "ganpool_instructor"


class Progress(BaseModel):
    run: str
    status: str
    step: int
    epochs: float
    epoch_progress: float = Field(description="share of the current epoch done, 0..1")
    images_applied: int
    images_per_s: float
    workers_online: int
    target_steps: int | None
    eta_s: float | None


class LeaderRow(BaseModel):
    name: str
    images: int
    units: int
    rejected: int
    reasons: list[str]
    share: float
    online: bool
    trust: float


class MetricPoint(BaseModel):
    step: int
    g_loss: float | None
    d_loss: float | None
    d_real: float | None
    d_fake: float | None


class QualityPoint(BaseModel):
    step: int
    kid: float
    kid_std: float
    fid: float
    n_fake: int


class WorkerRow(BaseModel):
    name: str
    device: str
    last_heartbeat_s: float
    current_unit: int | None
    images_per_s: float
    present: bool


class QuarantinedUnit(BaseModel):
    unit: int
    version: int
    images: list[int]
    bad_images: list[int]  # the images workers named, when they could tell
    reason: str
    reported_by: int  # different students (or workers) that could not compute it


class RunRow(BaseModel):
    name: str
    status: str
    step: int


class Login(BaseModel):
    password: str = Field(max_length=200)


class Done(BaseModel):
    ok: bool
    message: str


def create_app(
    db: str,
    control_db: str | None = None,
    instructor_password: str | None = None,
    max_points: int = 400,
) -> FastAPI:
    queries = named_queries()
    secret = secrets.token_bytes(32)
    token = hmac.new(secret, b"instructor", hashlib.sha256).hexdigest()
    pools: dict[str, ConnectionPool] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        kw = {"autocommit": True, "row_factory": dict_row}
        pools["read"] = ConnectionPool(db, min_size=1, max_size=4, kwargs=kw, open=True)
        if instructor_password:
            pools["control"] = ConnectionPool(
                control_db or db, min_size=0, max_size=1, kwargs=kw, open=True
            )
        yield
        for pool in pools.values():
            pool.close()

    app = FastAPI(title="ganpool dashboard", version="1", lifespan=lifespan)
    package = resources.files("ganpool.dashboard")
    app.mount("/static", StaticFiles(directory=str(package / "static")), name="static")
    templates = Jinja2Templates(directory=str(package / "templates"))  # autoescapes HTML

    def fetch(query: str, /, binary: bool = False, pool: str = "read", **params: Any) -> list[dict]:
        with pools[pool].connection() as conn, conn.cursor(binary=binary) as cur:
            cur.execute(queries[query], params)
            return cur.fetchall() if cur.description else []

    def run_row(run: str) -> dict:
        rows = fetch("run_by_name", name=run)
        if not rows:
            raise HTTPException(404, f"no run named {run!r}")
        return rows[0]

    def instructor(ganpool_instructor: Annotated[str | None, Cookie()] = None) -> None:
        if not instructor_password:
            raise HTTPException(403, "controls are off: start the dashboard with a password")
        if not ganpool_instructor or not hmac.compare_digest(ganpool_instructor, token):
            raise HTTPException(401, "log in as the instructor first")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request, run: Annotated[str | None, Query(max_length=200)] = None):
        return templates.TemplateResponse(
            request, "index.html", {"run": run or "", "controls": bool(instructor_password)}
        )

    @app.get("/api/runs", response_model=list[RunRow])
    def runs() -> list[RunRow]:
        return [
            RunRow(name=r["name"], status=r["status"], step=max(0, r["current_version"]))
            for r in fetch("list_runs")
        ]

    @app.get("/api/runs/{run}/progress", response_model=Progress)
    def progress(run: RunName) -> Progress:
        rows = fetch("dashboard_progress", run=run)
        if not rows:
            raise HTTPException(404, f"no run named {run!r}")
        p = rows[0]
        p["step"] //= RunConfig.from_dict(p["config"]).versions_per_step
        window = min(60.0, float(p["running_s"] or 0))  # the last minute, or since the start
        rate = float(p["images_last_minute"]) / window if window > 0 else 0.0
        cfg = p["config"]
        target = cfg.get("max_steps") or None
        eta = None
        if p["status"] == "running" and rate > 0:
            per_step = cfg["unit_size"] * cfg["results_per_step"]
            if target:
                eta = (target - p["step"]) * per_step / rate
            elif cfg.get("max_epochs"):
                eta = (cfg["max_epochs"] - p["epochs"]) * p["dataset_size"] / rate
        return Progress(
            run=p["name"],
            status=p["status"],
            step=p["step"],
            epochs=float(p["epochs"]),
            epoch_progress=float(p["epochs"]) - math.floor(float(p["epochs"])),
            images_applied=p["images_applied"],
            images_per_s=rate,
            workers_online=p["workers_online"],
            target_steps=target,
            eta_s=max(0.0, eta) if eta is not None else None,
        )

    @app.get("/api/runs/{run}/leaderboard", response_model=list[LeaderRow])
    def leaderboard(
        run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> list[LeaderRow]:
        r = run_row(run)
        return [
            LeaderRow(**row) for row in fetch("dashboard_leaderboard", run_id=r["id"], limit=limit)
        ]

    @app.get("/api/runs/{run}/metrics", response_model=list[MetricPoint])
    def metrics(
        run: RunName, points: Annotated[int, Query(ge=2, le=2000)] = max_points
    ) -> list[MetricPoint]:
        r = run_row(run)
        return [
            MetricPoint(**row)
            for row in fetch("dashboard_metrics", run_id=r["id"], max_points=points)
        ]

    @app.get("/api/runs/{run}/quality", response_model=list[QualityPoint])
    def quality(run: RunName) -> list[QualityPoint]:
        r = run_row(run)
        return [QualityPoint(**row) for row in fetch("dashboard_quality", run_id=r["id"])]

    @app.get("/api/runs/{run}/samples", response_model=list[int])
    def samples(run: RunName) -> list[int]:
        r = run_row(run)
        return [row["version"] for row in fetch("dashboard_sample_versions", run_id=r["id"])]

    @app.get(
        "/api/runs/{run}/samples/{version}.png",
        responses={200: {"content": {"image/png": {}}}},
        response_class=Response,
    )
    def sample(run: RunName, version: Annotated[int, Path(ge=0, le=2**31 - 1)]) -> Response:
        r = run_row(run)
        rows = fetch("dashboard_sample", binary=True, run_id=r["id"], version=version)
        if not rows:
            raise HTTPException(404, f"no sample grid at version {version}")
        return Response(
            bytes(rows[0]["png"]),
            media_type="image/png",
            headers={"Cache-Control": "max-age=86400"},
        )

    @app.get("/api/runs/{run}/workers", response_model=list[WorkerRow])
    def workers(run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[WorkerRow]:
        r = run_row(run)
        return [
            WorkerRow(
                name=w["name"],
                device=w["device"],
                last_heartbeat_s=float(w["seconds_since_heartbeat"]),
                current_unit=w["current_unit"],
                images_per_s=float(w["images_per_s"]),
                present=w["present"],
            )
            for w in fetch("dashboard_workers", run_id=r["id"], limit=limit)
        ]

    @app.get("/api/runs/{run}/quarantined", response_model=list[QuarantinedUnit])
    def quarantined(
        run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[QuarantinedUnit]:
        """Units set aside because several workers could not compute them (poison units)."""
        r = run_row(run)
        return [
            QuarantinedUnit(
                unit=u["id"],
                version=u["version"],
                images=u["indices"],
                bad_images=u["bad_images"] or [],
                reason=u["reason"] or "",
                reported_by=u["reported_by"],
            )
            for u in fetch("quarantined_units", run_id=r["id"], limit=limit)
        ]

    @app.post("/api/login", response_model=Done)
    def login(body: Login, response: Response) -> Done:
        if not instructor_password:
            raise HTTPException(403, "controls are off: start the dashboard with a password")
        if not hmac.compare_digest(body.password.encode(), instructor_password.encode()):
            raise HTTPException(401, "wrong password")
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return Done(ok=True, message="logged in")

    @app.post("/api/runs/{run}/{action}", response_model=Done, dependencies=[Depends(instructor)])
    def control(
        run: RunName, action: Annotated[str, Path(pattern="^(pause|resume|stop)$")]
    ) -> Done:
        r = run_row(run)
        status = {"pause": "paused", "resume": "running", "stop": "stopped"}[action]
        with pools["control"].connection() as conn, conn.transaction():
            conn.execute(queries["set_run_status"], {"run_id": r["id"], "status": status})
            conn.execute(queries["notify_run_status"], {"run_id": r["id"]})
        return Done(ok=True, message=f"run {run} is now {status}")

    @app.post(
        "/api/students/{name}/disable", response_model=Done, dependencies=[Depends(instructor)]
    )
    def disable(name: Annotated[str, Path(min_length=1, max_length=40)]) -> Done:
        try:
            with pools["control"].connection() as conn, conn.transaction():
                conn.execute(queries["disable_student"], {"name": name})
        except psycopg.errors.NoDataFound:
            raise HTTPException(404, f"no student named {name!r}") from None
        return Done(ok=True, message=f"student {name} disabled")

    return app
