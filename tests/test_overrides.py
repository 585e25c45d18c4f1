"""Override text split into the setting it names and its value, whatever its prefix."""

from __future__ import annotations

import pytest

from diffusion_lab.overrides import override_key, split_override


@pytest.mark.parametrize(
    "text,key,value",
    [
        ("a.b=1", "a.b", "1"),
        ("+a.b=1", "a.b", "1"),
        ("++a.b=1", "a.b", "1"),
        ("~a.b", "a.b", None),
        ("~a.b=1", "a.b", "1"),
        ("a=", "a", ""),
        ("hydra/launcher=gpu_pool", "hydra/launcher", "gpu_pool"),
        # Only the first '=' splits: values hold '=' (paths named by override_dirname) and sweeps hold ','.
        ("ckpt='/runs/0_x=1,y=2/last.ckpt'", "ckpt", "'/runs/0_x=1,y=2/last.ckpt'"),
        ("schedule.num_timesteps=20,0,30", "schedule.num_timesteps", "20,0,30"),
    ],
)
def test_split_override(text, key, value):
    assert split_override(text) == (key, value)
    assert override_key(text) == key


def test_a_key_is_one_setting_whatever_its_prefix():
    assert {override_key(o) for o in ("x=1", "+x=2", "++x=3", "~x")} == {"x"}
