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
        # the local rule
        ({"update_rule": "localsgd"}, "'update_rule' = 'localsgd' is invalid: one of"),
        ({"local_steps": 0}, "'local_steps' = 0 is invalid: must be 1 to 10000"),
        ({"outer_lr": 0}, "'outer_lr' = 0.0 is invalid: must be in (0, 10]"),
        ({"outer_momentum": 1}, "'outer_momentum' = 1.0 is invalid: must be in [0, 1)"),
        ({"outer_nesterov": "yes"}, "'outer_nesterov' must be bool, got str"),
        ({"delta_dtype": "int4"}, "'delta_dtype' = 'int4' is invalid: one of"),
        ({"outer_delay": 2}, "'outer_delay' = 2 is invalid: must be 0 or 1"),
        (
            {"update_rule": "local", "transport": "bfloat16"},
            "'transport' = 'bfloat16' is invalid: the local rule sends weight changes in "
            "delta_dtype",
        ),
        (
            {"update_rule": "local", "outer_delay": 1, "keep_versions": 1},
            "'keep_versions' = 1 is invalid: must be >= 2 with outer_delay 1",
        ),
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


def test_local_rule_settings_from_a_file(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text(
        '[run]\nupdate_rule = "local"\nlocal_steps = 8\nunit_size = 10\nouter_lr = 1\n'
        'outer_momentum = 0\nouter_nesterov = false\ndelta_dtype = "int8"\nouter_delay = 1\n'
    )
    cfg = load_run_config(f)
    assert (cfg.local_steps, cfg.outer_lr, cfg.outer_nesterov, cfg.delta_dtype) == (
        8,
        1.0,
        False,
        "int8",
    )
    assert cfg.unit_images == 80  # a unit is local_steps batches
    assert [cfg.base_version(v) for v in (0, 1, 5)] == [0, 0, 4]  # delayed one round
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    synchronous = cfg.replace(update_rule="simultaneous")
    assert synchronous.unit_images == 10 and synchronous.base_version(5) == 5
