"""Every TOML block in the documentation (README.md, docs/**/*.md) is a configuration tollgate
accepts as written: `tollgate config` reads it with the same checks `serve` makes at startup. A
renamed setting, a typo in an example or an example that needs a section it does not show fails
here, not in a reader's first `serve`."""

from __future__ import annotations

import re
import subprocess

import pytest

from processes import REPO, tollgate_binary, tollgate_cli_env

TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)


def toml_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        text = page.read_text()
        for m in TOML_BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            blocks.append((f"{page.relative_to(REPO)}:{line}", m.group(1)))
    return blocks


BLOCKS = toml_blocks()


def test_the_docs_show_configurations():
    assert len(BLOCKS) >= 8, [where for where, _ in BLOCKS]


@pytest.mark.parametrize("where,toml", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_a_documented_configuration_is_accepted(tmp_path, where, toml):
    binary = tollgate_binary()
    if binary is None:
        pytest.fail("tollgate binary not found: cargo build, or set TOLLGATE_BIN", pytrace=False)
    path = tmp_path / "tollgate.toml"
    path.write_text(toml)
    # Secrets are named by the examples, never written in them: give the ones they name a value.
    env = tollgate_cli_env(TOLLGATE_ALERT_SECRET="example-secret")
    r = subprocess.run([str(binary), "config", "--config", str(path)], capture_output=True, text=True,
                       timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, f"{where}: tollgate refuses the documented configuration:\n{r.stderr}"


def test_a_broken_configuration_is_refused(tmp_path):
    """The check above can fail: a misspelt key in a block is an error."""
    binary = tollgate_binary()
    assert binary is not None
    path = tmp_path / "tollgate.toml"
    path.write_text('[[teams]]\nid = "x"\ntier = "standard"\nbudget_uds = 5\n')
    r = subprocess.run([str(binary), "config", "--config", str(path)], capture_output=True, text=True,
                       timeout=60, env=tollgate_cli_env(), cwd=tmp_path)
    assert r.returncode != 0 and "budget_uds" in r.stderr, r.stderr
