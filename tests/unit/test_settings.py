import pytest

from ganpool.errors import ConfigError
from ganpool.settings import RunConfig, load_run_config


def test_presets_and_round_trip():
    small = load_run_config(preset="small")
    assert (small.image_size, small.channels, small.dataset) == (32, 1, "faces")
    paper = load_run_config(preset="dcgan64")
    assert (paper.image_size, paper.channels, paper.nz, paper.lr_g, paper.beta1) == (
        64,
        3,
        100,
        2e-4,
        0.5,
    )
    assert RunConfig.from_dict(small.to_dict()) == small


def test_toml_file_and_overrides(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text("[run]\nunit_size = 10\nresults_per_step = 4\nlr_d = 0.001\n")
    cfg = load_run_config(f, overrides={"seed": 9})
    assert (cfg.unit_size, cfg.results_per_step, cfg.lr_d, cfg.seed) == (10, 4, 0.001, 9)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"image_size": 48}, "'image_size' = 48 is invalid: must be 32 or 64"),
        ({"unit_size": 0}, "'unit_size' = 0 is invalid"),
        ({"lr_g": "fast"}, "'lr_g' must be float, got str"),
        ({"units_per_step": 1, "results_per_step": 2}, "'units_per_step' = 1 is invalid"),
        ({"staleness": "accept"}, "'staleness'"),
        ({"transport": "int8"}, "'transport' = 'int8' is invalid: one of"),
        ({"warp": 9}, "unknown setting 'warp'"),
        ({"max_steps": True}, "'max_steps' must be int"),
    ],
)
def test_bad_values_get_one_clear_line(values, message):
    with pytest.raises(ConfigError) as e:
        load_run_config(overrides=values)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(bad)


def test_an_old_runs_config_naming_the_retired_staleness_setting_still_loads(tmp_path):
    """`staleness` had one legal value and nothing read it: it is gone, but a run stored
    before (its config JSON says "staleness": "reject") and an old TOML file still load."""
    stored = {**RunConfig().to_dict(), "staleness": "reject"}
    assert RunConfig.from_dict(stored) == RunConfig()
    assert "staleness" not in RunConfig().to_dict()
    f = tmp_path / "old.toml"
    f.write_text('[run]\nstaleness = "reject"\nseed = 3\n')
    assert load_run_config(f).seed == 3
    with pytest.raises(ConfigError, match="'staleness' = 'accept' is no longer supported"):
        RunConfig.from_dict({"staleness": "accept"})
