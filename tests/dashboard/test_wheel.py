"""The dashboard hands out the wheel students install (no package index needed)."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from ganpool import __version__
from ganpool.dashboard.app import create_app

pytestmark = pytest.mark.timeout(60)

WHEEL = f"ganpool-{__version__}-py3-none-any.whl"


def test_the_wheel_its_page_and_its_stable_alias(embedded_db, tmp_path):
    wheel = tmp_path / WHEEL
    wheel.write_bytes(b"PK\x03\x04 a wheel is a zip file")
    with TestClient(create_app(embedded_db, wheel=wheel)) as client:
        r = client.get(f"/wheel/{WHEEL}")
        assert r.status_code == 200 and r.content == wheel.read_bytes()
        page = client.get("/wheel/").text
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert f"pip install http://testserver/wheel/{WHEEL}#sha256={digest}" in page
        assert f'href="{WHEEL}#sha256={digest}"' in page  # a pip --find-links page too
        alias = client.get("/ganpool.whl", follow_redirects=False)
        assert alias.status_code == 307 and alias.headers["location"] == f"/wheel/{WHEEL}"
        assert client.get("/wheel/ganpool-9.9-py3-none-any.whl").status_code == 404
        assert client.get("/wheel/..%2f..%2fetc%2fpasswd").status_code == 404
        assert "/wheel/{filename}" not in client.get("/openapi.json").text  # not the JSON API


def test_no_wheel_no_route(embedded_db):
    with TestClient(create_app(embedded_db)) as client:
        assert client.get(f"/wheel/{WHEEL}").status_code == 404
        assert client.get("/ganpool.whl").status_code == 404
