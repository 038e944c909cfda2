"""Old name of [`trl_robust.aggregation`], kept so that `from trl_robust import rewards` and
`trl_robust.rewards.aggregate(...)` in existing scripts keep working. New code imports `trl_robust.aggregation`."""

from .aggregation import (  # noqa: F401
    AGGREGATIONS,
    PARAMETER_OF,
    Aggregation,
    aggregate,
    check_heads,
    kl_dro,
    mean,
    nominal,
    robust,
    uwo,
    worst,
)
