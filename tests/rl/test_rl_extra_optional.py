"""The rl extra stays optional: the core never imports gymnasium, MuJoCo or Meta-World, and
building one of their environments without them is a one-line ConfigError (runs in CI)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from mnemeta.errors import ConfigError


def test_import_mnemeta_and_mnemeta_rl_import_no_simulator() -> None:
    code = textwrap.dedent(
        """
        import sys
        EXTRA = ("gymnasium", "mujoco", "metaworld")
        import mnemeta, mnemeta.rl, mnemeta.data.datasets, mnemeta.config
        import mnemeta.rl.locomotion, mnemeta.rl.metaworld_ml1  # the modules alone: no import
        from mnemeta.registry import DATASETS
        assert {"halfcheetah_vel", "halfcheetah_dir", "metaworld_ml1"} <= set(DATASETS.names())
        print(sorted(m for m in sys.modules if m.split(".")[0] in EXTRA))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("gymnasium") is not None, reason="gymnasium is installed here"
)
def test_without_the_extra_building_an_environment_names_it() -> None:
    from mnemeta.config import RLConfig
    from mnemeta.registry import DATASETS

    for name in ("halfcheetah_vel", "halfcheetah_dir", "metaworld_ml1"):
        build = DATASETS.get(name).environment
        assert build is not None
        with pytest.raises(ConfigError, match=r"needs the rl extra .*pip install 'mnemeta\[rl\]'"):
            build(RLConfig(), "cpu")
