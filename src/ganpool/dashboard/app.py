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
import pathlib
import secrets
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from os import PathLike
from typing import Annotated

from fastapi import Cookie, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from ganpool.dashboard.wheel import add_wheel_routes
from ganpool.errors import DatabaseUnavailable, GanpoolError, NotAllowed, NotFound
from ganpool.protocol.vocabulary import RunStatus
from ganpool.runs import CONTROLS, Run, control_run
from ganpool.settings import RunConfig
from ganpool.store.instructor import RunRecord
from ganpool.store.pool import StorePool
from ganpool.throughput import images_per_s

RunName = Annotated[str, Path(min_length=1, max_length=200)]
COOKIE = "ganpool_instructor"


class Progress(BaseModel):
    run: str
    status: str
    step: int = Field(description="the paper's steps completed (a D and a G phase are one)")
    epochs: float
    epoch_progress: float = Field(description="share of the current epoch done, 0..1")
    images_applied: int
    images_per_s: float
    workers_online: int
    coordinator_alive: bool = Field(description="a coordinator holds the run now")
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
    wheel: PathLike | None = None,
) -> FastAPI:
    secret = secrets.token_bytes(32)
    token = hmac.new(secret, b"instructor", hashlib.sha256).hexdigest()
    pools: dict[str, StorePool] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pools["read"] = StorePool(db, min_size=1, max_size=4)
        if instructor_password:
            pools["control"] = StorePool(control_db or db, min_size=0, max_size=1)
        yield
        for pool in pools.values():
            pool.close()

    app = FastAPI(title="ganpool dashboard", version="1", lifespan=lifespan)

    @app.exception_handler(NotAllowed)
    def refused(request: Request, e: NotAllowed) -> JSONResponse:
        # A login that may not read this (a student's): say so, rather than a bare 500.
        first = str(e).strip().splitlines()[0] if str(e).strip() else "permission denied"
        return JSONResponse(
            {"detail": f"this dashboard's login may not read the run ({first}): start it with "
             "a viewer's or the instructor's login"},
            status_code=403,
        )  # fmt: skip

    @app.exception_handler(DatabaseUnavailable)
    def unavailable(request: Request, e: DatabaseUnavailable) -> JSONResponse:
        return JSONResponse(
            {"detail": "the database is unreachable for now; the page retries on its own"},
            status_code=503,
        )

    package = resources.files("ganpool.dashboard")
    app.mount("/static", StaticFiles(directory=str(package / "static")), name="static")
    templates = Jinja2Templates(directory=str(package / "templates"))  # autoescapes HTML

    def reading():
        """A connection of the read pool, as the instructor's store."""
        return pools["read"].store()

    def run_row(run: str) -> RunRecord:
        with reading() as store:
            record = store.run_by_name(run)
        if record is None:
            raise HTTPException(404, f"no run named {run!r}")
        return record

    def per_step(record: RunRecord) -> int:
        """Published versions per paper step of a run (two under the alternating rule)."""
        return RunConfig.from_dict(record.config).versions_per_step

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
        with reading() as store:
            listing = store.list_runs()
        return [
            RunRow(
                name=r.name,
                status=r.status,
                step=RunConfig.from_dict(r.config).steps_of(r.current_version),
            )
            for r in listing
        ]

    @app.get("/api/runs/{run}/progress", response_model=Progress)
    def progress(run: RunName) -> Progress:
        with reading() as store:
            p = store.run_progress(run)
            if p is None:
                raise HTTPException(404, f"no run named {run!r}")
            speed = store.run_throughput(p.id)
            alive = store.coordinator_alive(p.id)
        step = RunConfig.from_dict(p.config).steps_of(p.current_version)
        rate = images_per_s(speed.images, speed.seconds)
        cfg = p.config
        target = cfg.get("max_steps") or None
        eta = None
        if p.status == RunStatus.RUNNING and rate > 0:
            images_per_step = cfg["unit_size"] * cfg["results_per_step"]
            if target:
                eta = (target - step) * images_per_step / rate
            elif cfg.get("max_epochs"):
                eta = (cfg["max_epochs"] - p.epochs) * p.dataset_size / rate
        return Progress(
            run=p.name,
            status=p.status,
            step=step,
            epochs=float(p.epochs),
            epoch_progress=float(p.epochs) - math.floor(float(p.epochs)),
            images_applied=p.images_applied,
            images_per_s=rate,
            workers_online=p.workers_online,
            coordinator_alive=alive,
            target_steps=target,
            eta_s=max(0.0, eta) if eta is not None else None,
        )

    @app.get("/api/runs/{run}/leaderboard", response_model=list[LeaderRow])
    def leaderboard(
        run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 200
    ) -> list[LeaderRow]:
        r = run_row(run)
        with reading() as store:
            rows = store.contributors(r.id, limit)
        return [LeaderRow(**asdict(row)) for row in rows]

    @app.get("/api/runs/{run}/metrics", response_model=list[MetricPoint])
    def metrics(
        run: RunName, points: Annotated[int, Query(ge=2, le=2000)] = max_points
    ) -> list[MetricPoint]:
        r = run_row(run)
        with reading() as store:
            rows = store.loss_curves(r.id, per_step(r), max_points=points)
        return [MetricPoint(**asdict(row)) for row in rows]

    @app.get("/api/runs/{run}/quality", response_model=list[QualityPoint])
    def quality(run: RunName) -> list[QualityPoint]:
        r = run_row(run)
        with reading() as store:
            rows = store.quality(r.id, per_step(r))
        return [QualityPoint(**asdict(row)) for row in rows]

    @app.get("/api/runs/{run}/samples", response_model=list[int])
    def samples(run: RunName) -> list[int]:
        """The steps that have a sample grid."""
        r = run_row(run)
        with reading() as store:
            return store.sample_steps(r.id, per_step(r))

    @app.get(
        "/api/runs/{run}/samples/{step}.png",
        responses={200: {"content": {"image/png": {}}}},
        response_class=Response,
    )
    def sample(run: RunName, step: Annotated[int, Path(ge=0, le=2**31 - 1)]) -> Response:
        r = run_row(run)
        with reading() as store:
            png = store.sample_png(r.id, step, per_step(r))
        if png is None:
            raise HTTPException(404, f"no sample grid at step {step}")
        return Response(
            bytes(png),
            media_type="image/png",
            headers={"Cache-Control": "max-age=86400"},
        )

    @app.get("/api/runs/{run}/workers", response_model=list[WorkerRow])
    def workers(run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[WorkerRow]:
        r = run_row(run)
        with reading() as store:
            rows = store.worker_activity(r.id, limit)
        return [
            WorkerRow(
                name=w.name,
                device=w.device,
                last_heartbeat_s=float(w.seconds_since_heartbeat),
                current_unit=w.current_unit,
                images_per_s=images_per_s(w.images_last_minute, w.seconds),
                present=w.present,
            )
            for w in rows
        ]

    @app.get("/api/runs/{run}/quarantined", response_model=list[QuarantinedUnit])
    def quarantined(
        run: RunName, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[QuarantinedUnit]:
        """Units set aside because several workers could not compute them (poison units)."""
        r = run_row(run)
        with reading() as store:
            rows = store.quarantined_units(r.id, limit)
        return [
            QuarantinedUnit(
                unit=u.id,
                version=u.version,
                images=u.indices,
                bad_images=u.bad_images or [],
                reason=u.reason or "",
                reported_by=u.reported_by,
            )
            for u in rows
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
        run: RunName, action: Annotated[str, Path(pattern="^(" + "|".join(CONTROLS) + ")$")]
    ) -> Done:
        r = run_row(run)
        try:
            with pools["control"].store() as store:
                status = control_run(store, Run.from_record(r), action)
        except (NotAllowed, DatabaseUnavailable):
            raise  # answered by the handlers above, as any request's
        except GanpoolError as e:  # e.g. resuming a finished run
            raise HTTPException(409, str(e)) from None
        return Done(ok=True, message=f"run {run} is now {status}")

    @app.post(
        "/api/students/{name}/disable", response_model=Done, dependencies=[Depends(instructor)]
    )
    def disable(name: Annotated[str, Path(min_length=1, max_length=40)]) -> Done:
        try:
            with pools["control"].store() as store:
                ended = store.disable_student(name)  # ... and their open sessions end
        except NotFound:
            raise HTTPException(404, f"no student named {name!r}") from None
        return Done(ok=True, message=f"student {name} disabled ({ended} sessions ended)")

    if wheel is not None:  # what students install (ganpool.dashboard.wheel)
        add_wheel_routes(app, pathlib.Path(wheel))
    return app
