"""Session fixtures for the deploy tests: the chart rendered with default and all-on values,
and every kustomize overlay rendered (helpers in deploy_helpers.py)."""

from __future__ import annotations

import pytest

from deploy_helpers import ALL_ON_VALUES, KUSTOMIZE, OVERLAYS, Objects, load_values, render_chart, render_kustomize


@pytest.fixture(scope="session")
def default_objects() -> Objects:
    return render_chart()


@pytest.fixture(scope="session")
def all_on_objects() -> Objects:
    return render_chart(load_values(ALL_ON_VALUES))


@pytest.fixture(scope="session")
def overlays() -> dict[str, Objects]:
    return {name: render_kustomize(KUSTOMIZE / "overlays" / name) for name in OVERLAYS}
