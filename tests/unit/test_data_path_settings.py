"""The data path's bounds come from the TEE's own environment, and unset ones keep DataLimits' defaults."""

from __future__ import annotations

import pytest

from securetrain.core.errors import ConfigurationError
from securetrain.tee.settings import DataPathSettings
from securetrain.tee.training.data import DataLimits


def test_the_environment_sets_the_data_path_and_leaves_the_rest_to_the_defaults(monkeypatch) -> None:
    monkeypatch.setenv("SECURETRAIN_DATA_CACHE_BYTES", "1000")
    monkeypatch.setenv("SECURETRAIN_DATA_WINDOW_SHARDS", "3")
    monkeypatch.setenv("SECURETRAIN_DATA_LANES", "4")
    limits = DataLimits(**DataPathSettings.load().overrides())
    assert limits.cache_bytes == 1000 and limits.window_shards == 3 and limits.lanes == 4
    assert limits.stream_budget_bytes == DataLimits().stream_budget_bytes
    assert limits.shards_in_flight == DataLimits().shards_in_flight


def test_a_data_path_bound_that_is_not_a_positive_count_is_refused_naming_the_variable(monkeypatch) -> None:
    monkeypatch.setenv("SECURETRAIN_DATA_SHARDS_IN_FLIGHT", "0")
    with pytest.raises(ConfigurationError, match="(?i)data_shards_in_flight"):
        DataPathSettings.load()
