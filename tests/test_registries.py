"""Every registry refuses a name that is taken: a plug-in never silently shadows another."""

from __future__ import annotations

import pytest


def _registries():
    import tunepilot.data  # noqa: F401  (registration of formats, readers, checks, templates)
    import tunepilot.health.diagnose  # noqa: F401  (registration of the health rules)
    import tunepilot.logs  # noqa: F401
    from tunepilot.data.checks.registry import CODES
    from tunepilot.data.formats import FORMATS
    from tunepilot.data.readers import READERS as DATA_READERS
    from tunepilot.data.templates import TEMPLATES
    from tunepilot.evaluate.metrics._base import _REGISTRY as METRICS
    from tunepilot.health.registry import RULES
    from tunepilot.logs.base import READERS as LOG_READERS

    return {
        "data check": CODES,
        "data format": FORMATS,
        "data reader": DATA_READERS,
        "template": TEMPLATES,
        "metric": METRICS,
        "health rule": RULES,
        "log reader": LOG_READERS,
    }


@pytest.mark.parametrize("what", list(_registries()))
def test_a_taken_name_is_refused(what):
    from tunepilot.registry import register_once

    table = _registries()[what]
    assert table, f"the {what} registry is empty"
    name = next(iter(table))
    before = table[name]
    with pytest.raises(ValueError, match=f"duplicate {what} name"):
        register_once(table, name, object(), what)
    assert table[name] is before


def test_the_real_registration_functions_refuse_duplicates():
    from tunepilot.data.templates import TEMPLATES, register_template
    from tunepilot.health.registry import RULES, rule
    from tunepilot.logs.base import READERS, register_log_reader

    with pytest.raises(ValueError):
        rule(next(iter(RULES)))(lambda view: [])
    with pytest.raises(ValueError):
        register_template(next(iter(TEMPLATES.values())))
    with pytest.raises(ValueError):
        register_log_reader(next(iter(READERS)), lambda p: None, lambda p: None)
