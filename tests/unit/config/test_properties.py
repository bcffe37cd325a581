"""Property-based: whatever overrides a user types, the loader returns a config or a ConfigError."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmkit.config.load import load_config
from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError

# Real key paths (so many overrides reach real validators) mixed with junk ones.
_REAL_KEYS = []
for section, field in RunConfig.model_fields.items():
    sub = field.annotation
    if isinstance(sub, type) and hasattr(sub, "model_fields"):
        _REAL_KEYS += [f"{section}.{name}" for name in sub.model_fields]
    else:
        _REAL_KEYS.append(section)

keys = st.one_of(
    st.sampled_from(_REAL_KEYS),
    st.text(alphabet=string.ascii_letters + "._-0", min_size=0, max_size=20),
)
values = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "null", "auto", "[1, 2]", "{a: 1}", "'x'", "[", "&a 1", "*a", ".inf", "~"]),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_overrides_give_config_or_config_error(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config(None, overrides, environ={}, base={"name": "prop"})
    except ConfigError as exc:
        assert exc.summary and exc.exit_code == 2
    else:
        assert isinstance(cfg, RunConfig)
