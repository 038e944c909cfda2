"""Accelerate launch configurations shipped with trl-robust (see README.md in this folder)."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped configurations, without the `.yaml` suffix."""
    return sorted(path.stem for path in _HERE.glob("*.yaml"))


def config_path(name: str) -> str:
    """
    Path of a shipped accelerate config, for `accelerate launch --config_file`. `name` is e.g. `"zero3"` or
    `"zero3.yaml"`; an unknown name raises a `ValueError` listing the available ones.
    """
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = _HERE / f"{stem}.yaml"
    if not path.is_file():
        raise ValueError(f"Unknown accelerate config {name!r}; available: {', '.join(available())}.")
    return str(path)


__all__ = ["available", "config_path"]
