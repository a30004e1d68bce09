"""Training presets: validation, and bfloat16 only where the CPU runs it natively."""

from pathlib import Path

import pytest

from aisle.training.presets import PRESETS, TowerTraining, cpu_has_native_bf16, preset, use_bf16

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"


@pytest.mark.parametrize(("cpuinfo", "native"), [(AVX2_ONLY, False), (SAPPHIRE_RAPIDS, True)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path, cpuinfo: str, native: bool) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native


def test_a_machine_without_cpuinfo_trains_in_float32(tmp_path: Path) -> None:
    assert cpu_has_native_bf16(tmp_path / "missing") is False


def test_an_explicit_bf16_setting_wins_over_the_cpu() -> None:
    assert use_bf16(True) is True
    assert use_bf16(False) is False
    assert use_bf16(None) is cpu_has_native_bf16()


def test_presets_decide_bf16_by_the_cpu_and_apply_seed_and_tying() -> None:
    for config in PRESETS.values():
        assert config.towers.bf16 is None and config.head.bf16 is None
    fast = preset("fast", seed=7, tie_towers=True)
    assert (fast.seed, fast.tie_towers) == (7, True)


def test_an_unknown_preset_names_the_choices() -> None:
    with pytest.raises(KeyError, match="'fast'"):
        preset("medium")


def test_a_bad_tower_setting_names_the_field() -> None:
    with pytest.raises(ValueError, match="TowerTraining.click_share=1.5"):
        TowerTraining(steps=1, batch_size=1, learning_rate=1e-4, click_share=1.5)
