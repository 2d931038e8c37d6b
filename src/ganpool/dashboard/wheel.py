"""The wheel students install, served by the dashboard so a class needs no package index.

/wheel/<file name> is the file itself (pip reads the version from the name, so the command
`ganpool student add --install http://HOST:PORT` prints names it in full, with its SHA-256
for pip to check); /wheel/ is a page with that command, which is also a valid pip
`--find-links` page; /ganpool.whl redirects to the file, a stable address for a browser.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from ganpool.distribution import WHEEL_ROUTE, sha256_of


def add_wheel_routes(app: FastAPI, wheel: Path) -> None:
    """Serve `wheel` (already checked by `find_wheel`); other names under /wheel/ are 404."""
    name = wheel.name
    digest = sha256_of(wheel)

    @app.get(WHEEL_ROUTE + "{filename}", include_in_schema=False)
    def wheel_file(filename: str) -> FileResponse:
        if filename != name:
            raise HTTPException(404, f"this dashboard serves {name} only")
        return FileResponse(wheel, media_type="application/octet-stream", filename=name)

    @app.get(WHEEL_ROUTE, response_class=HTMLResponse, include_in_schema=False)
    def wheel_page(request: Request) -> str:
        url = f"{str(request.base_url).rstrip('/')}{WHEEL_ROUTE}{name}#sha256={digest}"
        return (
            f"<!doctype html><title>ganpool for students</title>"
            f"<p>Install: <code>pip install {escape(url)}</code></p>"
            f'<p><a href="{escape(name)}#sha256={digest}">{escape(name)}</a></p>'
        )

    @app.get("/ganpool.whl", include_in_schema=False)
    def wheel_alias() -> RedirectResponse:
        return RedirectResponse(WHEEL_ROUTE + name, status_code=307)
