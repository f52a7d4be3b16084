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

    def options(cls: type, prefix: str) -> list[str]:  # nested sections (distill.outer_optim) by their leaves
        out = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out += options(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else [prefix + f.name]
        return out

    text = (REPO / "docs" / "configuration.md").read_text()
    missing = [n for n in options(Config, "") if f"`{n}`" not in text]
    assert not missing


def test_check_mode_exits_cleanly() -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
