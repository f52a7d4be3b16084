"""docs/configuration.md is generated from codistill/config.py and must not drift from it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from tests.helpers import REPO

SCRIPT = REPO / "scripts" / "gen_config_docs.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_equals_the_generated_one() -> None:
    gen = load_generator()
    assert gen.DOC.read_text() == gen.generate(), "stale docs/configuration.md: run python scripts/gen_config_docs.py"


def test_every_option_is_documented() -> None:
    import dataclasses

    from codistill.config import Config

    text = (REPO / "docs" / "configuration.md").read_text()
    for section in dataclasses.fields(Config):
        default = section.default_factory() if section.default is dataclasses.MISSING else section.default
        names = [f"{section.name}.{f.name}" for f in dataclasses.fields(default)] if dataclasses.is_dataclass(default) \
            else [section.name]
        assert all(f"`{n}`" in text for n in names)


def test_check_mode_exits_cleanly() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
