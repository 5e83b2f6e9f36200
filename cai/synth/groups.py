"""Config groups only some synthesizers read: refuse a choice that would not take effect.

``daad`` (the anomaly bank), ``ablation`` (Table 3 switches) and ``scale`` (MAS quotas) are read by CAI
only, yet every run composes them and metrics.json records their choices. A synthesizer's YAML lists the
groups it reads in ``reads_groups`` (``conf/synthesizer/cai_n.yaml``; ``cai_m`` inherits it); one without
the key reads none. :func:`check_synthesizer_groups` refuses, before any work, a run that picks another
option of such a group than the primary config's default (``scale=large``) or overrides a value in it
(``scale.large=5``) with a synthesizer that does not read the group, so no table row claims an
ablation or quota that never happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cai.errors import ConfigError

SYNTHESIZER_GROUPS: tuple[str, ...] = ("daad", "ablation", "scale")  # groups a synthesizer may or may not read


def primary_defaults(config_file: Path, groups: tuple[str, ...] = SYNTHESIZER_GROUPS) -> dict[str, str]:
    """The default option of each of ``groups`` in a primary config's defaults list."""
    raw = OmegaConf.load(config_file)
    out: dict[str, str] = {}
    for entry in raw.get("defaults", []):
        if isinstance(entry, DictConfig):
            out.update({str(k): str(v) for k, v in entry.items_ex(resolve=False) if k in groups})
    return out


def declared_groups(synthesizer_dir: Path, name: str) -> set[str]:
    """``reads_groups`` of ``conf/synthesizer/<name>.yaml``, inherited through its defaults list when absent."""
    raw = OmegaConf.load(synthesizer_dir / f"{name}.yaml")
    if "reads_groups" in raw:
        return {str(g) for g in raw.reads_groups or []}
    for entry in raw.get("defaults", []):
        if isinstance(entry, str) and (synthesizer_dir / f"{entry}.yaml").is_file():
            return declared_groups(synthesizer_dir, entry)
    return set()


def _changed_values(actual: Any, default: Any, prefix: str) -> list[str]:
    """``key=value`` for each leaf of ``actual`` that differs from ``default`` (both plain containers)."""
    if isinstance(actual, dict) and isinstance(default, dict):
        out = []
        for key in sorted(set(actual) | set(default), key=str):
            out += _changed_values(actual.get(key), default.get(key), f"{prefix}.{key}")
        return out
    return [] if actual == default else [f"{prefix}={actual}"]


def _named_on_command_line(group: str, overrides: Sequence[str]) -> bool:
    """Whether a command-line override sets ``group`` or a key inside it (``scale=large``, ``+scale.x=1``)."""
    keys = (o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] for o in overrides)
    return any(k == group or k.startswith(f"{group}.") for k in keys)


def recorded_choices(cfg: DictConfig, choices: Mapping[str, str]) -> dict[str, str]:
    """The group choices metrics.json records: those of :data:`SYNTHESIZER_GROUPS` only where the
    synthesizer reads them (an experiment may set ``daad`` for its CAI rows and sweep CutPaste beside)."""
    reads = {str(g) for g in cfg.synthesizer.get("reads_groups") or []}
    return {k: v for k, v in choices.items() if k not in SYNTHESIZER_GROUPS or k in reads}


def check_synthesizer_groups(cfg: DictConfig, choices: Mapping[str, str], conf_dir: Path,
                             config_name: str = "config", overrides: Sequence[str] | None = None) -> None:
    """Raise ConfigError when a group the synthesizer does not read is changed from the primary default.

    ``choices`` are Hydra's runtime group choices (empty outside a Hydra job: then only values are
    compared); ``conf_dir`` holds ``<config_name>.yaml`` and the group folders. With ``overrides`` (the
    job's command-line overrides) only groups the user named there are checked: an experiment file may set
    a group for the synthesizers of its sweep that read it (``experiment=demo``: ``daad=demo_bank`` for
    CAI-N beside CutPaste); :func:`recorded_choices` then keeps it out of the other rows' metrics.json.
    """
    synth = cfg.synthesizer
    name = str(synth.get("name"))
    reads = {str(g) for g in synth.get("reads_groups") or []}
    unknown = sorted(reads - set(SYNTHESIZER_GROUPS))
    if unknown:
        raise ConfigError(f"synthesizer {name} declares unknown reads_groups {unknown}.",
                          where=conf_dir / "synthesizer" / f"{name}.yaml",
                          fix=f"List only groups among {list(SYNTHESIZER_GROUPS)}.")
    defaults = primary_defaults(conf_dir / f"{config_name}.yaml")
    for group, default in defaults.items():
        if group in reads or group not in cfg:
            continue
        if overrides is not None and not _named_on_command_line(group, overrides):
            continue
        choice = choices.get(group)
        if choice is not None and choice != default:
            changed = f"{group}={choice}"
        else:
            base = OmegaConf.to_container(OmegaConf.load(conf_dir / group / f"{default}.yaml"), resolve=False)
            diff = _changed_values(OmegaConf.to_container(cfg[group], resolve=False), base, group)
            if not diff:
                continue
            changed = ", ".join(diff)
        readers = sorted(p.stem for p in (conf_dir / "synthesizer").glob("*.yaml")
                         if group in declared_groups(conf_dir / "synthesizer", p.stem))
        raise ConfigError(
            f"{changed} has no effect with synthesizer={name}: {name} does not read the '{group}' config group, "
            f"so the run would be recorded as if it had taken effect.",
            where=f"conf/synthesizer/{name}.yaml (reads_groups: {sorted(reads)})",
            fix=f"Drop the {group} override (default {group}={default}), or use a synthesizer that reads it "
                f"({', '.join(readers) or 'none does'}).",
        )
