"""`benchmarks/wan.py --refresh-kid` carries the quality protocol's newest verdict into an
existing result file and leaves the measured figures as they were."""

import json

from benchmarks import wan


def test_refresh_takes_the_newest_verdict_and_keeps_the_figures(tmp_path, monkeypatch):
    quality = tmp_path / "quality.json"
    monkeypatch.setattr(wan, "QUALITY", quality)
    out = tmp_path / "wan.json"
    measured = {
        "scaling_efficiency_16": 0.9,
        "bytes_per_image_ratio": 306.0,
        "kid_within_ci": False,
        "kid_note": "no file",
        "notes": ["compute is simulated", "kid_within_ci: no file"],
    }
    out.write_text(json.dumps(measured))

    quality.write_text(json.dumps({"kid_within_ci": True}))
    wan.refresh_kid(out)
    doc = json.loads(out.read_text())
    assert doc["kid_within_ci"] is True
    assert doc["scaling_efficiency_16"] == 0.9 and doc["bytes_per_image_ratio"] == 306.0
    assert doc["notes"] == ["compute is simulated", f"kid_within_ci: read from {quality}"]

    quality.write_text(json.dumps({"kid_within_ci": "yes"}))  # not a boolean: no verdict
    wan.refresh_kid(out)
    assert json.loads(out.read_text())["kid_within_ci"] is False
