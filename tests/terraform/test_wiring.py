"""Every wiring check of wiring.py holds for terraform/ as committed."""

from __future__ import annotations

import pytest

from wiring import CHECKS


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_holds(stack, name):
    problems = CHECKS[name](stack)
    assert problems == [], f"{name}:\n" + "\n".join(problems)
