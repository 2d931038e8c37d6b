"""Run settings: one frozen, validated object, stored whole in the database with the run.

A run is configured from a TOML file (`[run]` table), a preset and command-line overrides.
Every value is checked here, once, with a message that names the setting and the fix.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganpool.errors import ConfigError
from ganpool.models.dcgan import ModelConfig

DATASETS = ("faces", "folder")
STALENESS_POLICIES = ("reject",)
AGGREGATIONS = ("mean", "clip", "trimmed_mean", "median")
TRANSPORTS = ("float32", "bfloat16", "float16")
UPDATE_RULES = ("alternating", "simultaneous", "local")
DELTA_DTYPES = ("float32", "bfloat16", "int8")


@dataclass(frozen=True)
class RunConfig:
    # model
    image_size: int = 64  # 64 (the paper) or 32 (the CPU variant)
    channels: int = 3  # 3 = RGB, 1 = grayscale
    nz: int = 100  # noise length
    ngf: int = 64  # generator width
    ndf: int = 64  # discriminator width
    # data
    dataset: str = "folder"  # "faces" (built in, offline) or "folder" (CelebA layout or any images)
    data_source: str = "local"  # "local": each worker's copy; "database": `ganpool data load`
    # work units and synchronisation
    unit_size: int = 64  # images per work unit
    results_per_step: int = 2  # N: results that form one step (partial synchronisation)
    units_per_step: int = 0  # units issued per version; 0 means = results_per_step
    step_deadline_s: float = 0.0  # step with >= 1 result after this long; 0 = wait for N
    lease_s: float = 60.0  # a claim lasts this long unless the worker heartbeats
    staleness: str = "reject"  # what happens to a result computed on an older version
    # Stragglers (MapReduce's backup tasks): a unit held longer than this many times the
    # run's recent time per unit gets a copy for an idle worker of another student; the
    # first valid result is applied. 0 = off.
    backup_after: float = 3.0
    max_units_per_student: int = 4  # units one student login holds at once, all workers
    # A heartbeat extends a lease up to this many times the worker's own recent time per
    # unit (never below lease_s): a claimed-and-never-computed unit is not kept forever.
    hold_factor: float = 10.0
    quarantine_after: int = 2  # set a unit aside when this many students cannot compute it
    # "alternating" (the paper's loop, in distributed form: a D phase, then a G phase through
    # the new D), "simultaneous" (both gradients on one version: half the round trips) or
    # "local" (each unit runs local_steps steps of the paper's loop on the worker and sends
    # its weight change: ~local_steps times fewer bytes per image; docs/protocol.md).
    # The default is the rule that trained better at equal images (docs/quality.md).
    update_rule: str = "alternating"
    # The local rule (DiLoCo): a unit is local_steps batches of unit_size images, trained with
    # a fresh Adam (lr_g/lr_d, betas) from the unit's base version; the coordinator averages
    # the weight changes by images and takes an outer SGD step on them.
    local_steps: int = 32  # H: batches (and steps of the paper's loop) per unit
    outer_lr: float = 0.7  # DiLoCo's; 1.0 with outer_momentum 0 = plain averaging
    outer_momentum: float = 0.9
    outer_nesterov: bool = True
    delta_dtype: str = "bfloat16"  # "float32", "bfloat16" or "int8" (blockwise, scale per block)
    # 1: a round's units are computed on the newest published version while the previous
    # round's changes upload and are applied (the outer step delayed one round: workers
    # never wait on a round trip); 0: on the version their own round starts from.
    outer_delay: int = 0
    # The dtype gradients travel in: "bfloat16" or "float16" halve every upload (the
    # coordinator still sums and steps in full precision). docs/performance.md has the study.
    transport: str = "float32"
    # optimiser (the paper's Adam)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    seed: int = 0  # weights, epoch permutations and unit noise all derive from it
    # stopping: the first limit reached ends the run; 0 = no limit
    max_steps: int = 0
    max_epochs: float = 0.0
    max_seconds: float = 0.0
    # defences against careless or malicious workers
    max_payload_bytes: int = 0  # refuse bigger results; 0 = twice the model's fp32 gradients
    # Refuse a result whose log gradient norm has a robust z-score above this: at 12, a norm
    # ~20x (or more) away from the cohort's median. Honest GAN gradients spike 10-15x.
    norm_z_max: float = 12.0
    aggregation: str = "mean"  # "mean", "clip", "trimmed_mean" or "median"
    trim_fraction: float = 0.25  # trimmed_mean: share dropped at each end, per coordinate
    clip_factor: float = 2.0  # clip: cap each result's norm at this many times the median's
    spot_check_rate: float = 0.0  # share of units also issued to a second worker
    spot_check_cosine: float = 0.99  # twins agree when cosine >= this ...
    spot_check_rel_norm: float = 0.05  # ... and their norms differ by at most this share
    disable_below_trust: float = 0.0  # auto-disable a student whose trust falls below; 0 = never
    # outputs and storage
    quality_every: int = (
        0  # measure KID/FID every this many steps (needs ganpool[metrics]); 0 = off
    )
    quality_samples: int = 200  # generated images per measurement
    sample_every: int = 10  # store a sample grid every this many steps
    keep_versions: int = 3  # weight versions kept besides milestones
    milestone_every: int = 0  # also keep every this many versions; 0 = none

    def __post_init__(self) -> None:
        validate(self)

    @property
    def model(self) -> ModelConfig:
        return ModelConfig(self.image_size, self.channels, self.nz, self.ngf, self.ndf)

    @property
    def versions_per_step(self) -> int:
        """Published versions per training step: the alternating rule publishes two."""
        return 2 if self.update_rule == "alternating" else 1

    def steps_of(self, version: int) -> int:
        """The paper's steps completed once `version` is published: what a person reads as
        "step" everywhere (a D phase alone has not finished its step)."""
        return max(0, version) // self.versions_per_step

    def phase_of(self, version: int) -> str:
        """What the units of a version compute: "both", or "D" then "G" alternately."""
        if self.update_rule != "alternating":
            return "both"
        return "D" if version % 2 == 0 else "G"

    @property
    def unit_images(self) -> int:
        """Images per issued unit: local_steps batches under the local rule, else one."""
        return self.unit_size * (self.local_steps if self.update_rule == "local" else 1)

    def base_version(self, version: int) -> int:
        """The version whose weights a unit of `version` is computed on: the same, except
        under the local rule's delayed outer step (the newest version when it was issued)."""
        if self.update_rule != "local":
            return version
        return max(0, version - self.outer_delay)

    @property
    def transport_dtype(self) -> torch.dtype:
        return getattr(torch, self.transport)

    @property
    def units_issued_per_step(self) -> int:
        return self.units_per_step or self.results_per_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        known = _defaults()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
            )
        return cls(**{k: _coerce(k, v, type(known[k])) for k, v in values.items()})

    def replace(self, **changes: Any) -> RunConfig:
        return self.from_dict({**self.to_dict(), **changes})


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(RunConfig)}


def _coerce(name: str, value: Any, want: type) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (isinstance(value, bool) and want is not bool):
        raise ConfigError(
            f"setting {name!r} must be {want.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _check(ok: bool, name: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"setting {name!r} = {value!r} is invalid: {rule}")


def validate(c: RunConfig) -> None:
    _check(c.image_size in (32, 64), "image_size", c.image_size, "must be 32 or 64")
    _check(c.channels in (1, 3), "channels", c.channels, "must be 1 or 3")
    for name in ("nz", "ngf", "ndf", "unit_size", "results_per_step"):
        v = getattr(c, name)
        _check(1 <= v <= 4096, name, v, "must be between 1 and 4096")
    _check(c.dataset in DATASETS, "dataset", c.dataset, f"must be one of {DATASETS}")
    _check(
        c.data_source in ("local", "database"),
        "data_source",
        c.data_source,
        "must be 'local' or 'database'",
    )
    _check(
        c.units_per_step == 0 or c.units_per_step >= c.results_per_step,
        "units_per_step",
        c.units_per_step,
        "must be 0 or at least results_per_step",
    )
    _check(c.step_deadline_s >= 0, "step_deadline_s", c.step_deadline_s, "must be >= 0")
    _check(c.lease_s >= 1, "lease_s", c.lease_s, "must be at least 1 second")
    _check(c.backup_after >= 0, "backup_after", c.backup_after, "must be >= 0 (0 = no backups)")
    _check(
        1 <= c.max_units_per_student <= 1000,
        "max_units_per_student",
        c.max_units_per_student,
        "must be between 1 and 1000",
    )
    _check(c.hold_factor >= 1, "hold_factor", c.hold_factor, "must be >= 1")
    _check(c.quarantine_after >= 1, "quarantine_after", c.quarantine_after, "must be >= 1")
    _check(c.update_rule in UPDATE_RULES, "update_rule", c.update_rule, f"one of {UPDATE_RULES}")
    _validate_local(c)
    _check(
        c.staleness in STALENESS_POLICIES, "staleness", c.staleness, f"one of {STALENESS_POLICIES}"
    )
    for name in ("lr_g", "lr_d"):
        v = getattr(c, name)
        _check(0 < v < 1, name, v, "must be between 0 and 1")
    for name in ("beta1", "beta2"):
        v = getattr(c, name)
        _check(0 <= v < 1, name, v, "must be in [0, 1)")
    _check(0 <= c.seed < 2**62, "seed", c.seed, "must be a non-negative integer")
    for name in ("max_steps", "max_epochs", "max_seconds", "milestone_every"):
        v = getattr(c, name)
        _check(v >= 0, name, v, "must be >= 0 (0 means no limit)")
    _check(c.max_payload_bytes >= 0, "max_payload_bytes", c.max_payload_bytes, "must be >= 0")
    _check(c.norm_z_max >= 0, "norm_z_max", c.norm_z_max, "must be >= 0 (0 turns the check off)")
    _check(c.transport in TRANSPORTS, "transport", c.transport, f"one of {TRANSPORTS}")
    _check(c.aggregation in AGGREGATIONS, "aggregation", c.aggregation, f"one of {AGGREGATIONS}")
    # With fewer than three results a step has no majority: the median, a trimmed mean and
    # a clip at a multiple of the median norm all come down to the plain mean.
    _check(
        c.aggregation == "mean" or c.results_per_step >= 3,
        "aggregation",
        c.aggregation,
        f"needs results_per_step >= 3 (it is {c.results_per_step}): with fewer results the "
        "robust rules reduce to the mean and stop nothing",
    )
    _check(0 <= c.trim_fraction < 0.5, "trim_fraction", c.trim_fraction, "must be in [0, 0.5)")
    _check(c.clip_factor > 0, "clip_factor", c.clip_factor, "must be > 0")
    for name in (
        "spot_check_rate",
        "spot_check_cosine",
        "spot_check_rel_norm",
        "disable_below_trust",
    ):
        v = getattr(c, name)
        _check(0 <= v <= 1, name, v, "must be between 0 and 1")
    _check(c.quality_every >= 0, "quality_every", c.quality_every, "must be >= 0 (0 = off)")
    _check(2 <= c.quality_samples <= 50000, "quality_samples", c.quality_samples, "2 to 50000")
    _check(c.sample_every >= 1, "sample_every", c.sample_every, "must be >= 1")
    _check(c.keep_versions >= 1, "keep_versions", c.keep_versions, "must be >= 1")


def _validate_local(c: RunConfig) -> None:
    """The local rule's settings (checked whatever the rule, so a file stays valid when only
    its update_rule changes)."""
    _check(1 <= c.local_steps <= 10000, "local_steps", c.local_steps, "must be 1 to 10000")
    _check(0 < c.outer_lr <= 10, "outer_lr", c.outer_lr, "must be in (0, 10]")
    _check(0 <= c.outer_momentum < 1, "outer_momentum", c.outer_momentum, "must be in [0, 1)")
    _check(c.delta_dtype in DELTA_DTYPES, "delta_dtype", c.delta_dtype, f"one of {DELTA_DTYPES}")
    _check(c.outer_delay in (0, 1), "outer_delay", c.outer_delay, "must be 0 or 1")
    if c.update_rule != "local":
        return
    _check(
        c.transport == "float32",
        "transport",
        c.transport,
        "the local rule sends weight changes in delta_dtype; leave transport at 'float32'",
    )
    _check(
        c.outer_delay == 0 or c.keep_versions >= 2,
        "keep_versions",
        c.keep_versions,
        "must be >= 2 with outer_delay 1 (two rounds compute on two versions)",
    )


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's model on CelebA-style 64x64 RGB images.
    "dcgan64": {"dataset": "folder"},
    # The CPU variant on the built-in faces: trains visibly in minutes on two cores.
    "small": {
        "dataset": "faces",
        "image_size": 32,
        "channels": 1,
        "nz": 64,
        "ngf": 32,
        "ndf": 32,
        "unit_size": 25,
        "results_per_step": 2,
        "sample_every": 25,
    },
}


def load_run_config(
    path: Path | None = None, preset: str = "small", overrides: dict | None = None
) -> RunConfig:
    """Preset, then the TOML file's `[run]` table, then explicit overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        table = doc.get("run", doc)
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [run] must be a table")
        values.update(table)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return RunConfig.from_dict(values)
