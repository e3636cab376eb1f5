from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from loraforge.cli import app, main
from loraforge.config import Config, load_config, validate_config
from loraforge.config_text import reference_markdown, reference_rows, render_yaml
from loraforge.errors import ConfigError
from loraforge.recipe import DEFAULT_ALPHA, DEFAULT_LR, DEFAULT_R, REASONS


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"text": "hi"}\n')
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_recipe(tmp_path: Path) -> None:
    config = validate_config({"data": {"train": "x.jsonl"}}, check_files=False)
    assert (config.lora.r, config.lora.alpha, config.lora.dropout) == (16, 32.0, 0.05)
    assert config.lora.targets == "all-linear"
    assert (config.train.lr, config.train.scheduler, config.train.warmup_ratio) == (2e-4, "cosine", 0.03)
    assert (config.train.weight_decay, config.train.epochs, config.train.eval_every) == (0.0, 2.0, 0.25)
    assert config.train.seed == 0
    assert (DEFAULT_R, DEFAULT_ALPHA, DEFAULT_LR) == (16, 32.0, 2e-4)


def test_unknown_key_suggests_the_close_name(tmp_path: Path) -> None:
    path = _write(tmp_path, f"data:\n  train: {tmp_path}/train.jsonl\nlora:\n  rank: 8\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "lora.rank: unknown key; did you mean 'lora.r'?" in str(info.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  train: nowhere.jsonl\nlora:\n  r: 0\ntrain:\n  lr: -1\n  epoch: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "lora.r" in text and "train.lr" in text and "train.epoch" in text and "data.train" in text
    assert len(info.value.problems) == 4


def test_missing_train_file_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  train: nowhere.jsonl\n")
    with pytest.raises(ConfigError, match="data.train: file not found: nowhere.jsonl"):
        load_config(path)


def test_missing_replay_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text("")
    path = _write(tmp_path, f"data:\n  train: {tmp_path}/train.jsonl\n  replay: gone.jsonl\n")
    with pytest.raises(ConfigError, match="data.replay: file not found: gone.jsonl"):
        load_config(path)


def test_overrides_are_typed_by_the_field(tmp_path: Path) -> None:
    path = _write(tmp_path, f"data:\n  train: {tmp_path}/train.jsonl\n")
    config = load_config(path, ["train.lr=1e-4", "lora.targets=[q_proj, v_proj]", "data.packing=false"])
    assert config.train.lr == 1e-4
    assert config.lora.targets == ["q_proj", "v_proj"]
    assert config.data.packing is False


def test_bad_override_value_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, f"data:\n  train: {tmp_path}/train.jsonl\n")
    with pytest.raises(ConfigError, match="lora.r"):
        load_config(path, ["lora.r=many"])


def test_rendered_yaml_round_trips_with_reasons(tmp_path: Path) -> None:
    config = validate_config({"data": {"train": "x.jsonl"}, "lora": {"r": 8}}, check_files=False)
    text = render_yaml(config)
    assert "# adapter rank" in text
    again = Config.model_validate(yaml.safe_load(text))
    assert again == config


def test_reference_lists_every_field() -> None:
    text = reference_markdown()
    for key in ("`lora.r`", "`train.eval_every`", "`data.golden`", "`eval.tolerance`"):
        assert key in text


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "data:\n  train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML line"):
        load_config(path)


def test_replay_kl_needs_replay_rows_and_a_positive_weight() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"train": "x.jsonl", "replay": None}, "train": {"replay_kl": 0.1}}, check_files=False)
    assert "train.replay_kl: anchors replay rows to the base, but data.replay is not set" in str(info.value)
    assert validate_config({"data": {"train": "x.jsonl"}, "train": {"replay_kl": 0.1}}, check_files=False)  # builtin
    with pytest.raises(ConfigError, match=r"train.replay_kl: Input should be greater than 0"):
        validate_config(
            {"data": {"train": "x.jsonl", "replay": "r.jsonl"}, "train": {"replay_kl": 0}}, check_files=False
        )
    pissa = {"data": {"train": "x.jsonl", "replay": "r.jsonl"}, "lora": {"variant": "pissa"}, "train": {"replay_kl": 1}}
    with pytest.raises(ConfigError, match=r"lora.variant=pissa"):
        validate_config(pissa, check_files=False)
    config = validate_config(
        {"data": {"train": "x.jsonl", "replay": "r.jsonl"}, "train": {"replay_kl": 0.1}}, check_files=False
    )
    assert config.train.replay_kl == 0.1
    assert validate_config({"data": {"train": "x.jsonl"}}, check_files=False).train.replay_kl is None
    with pytest.raises(ConfigError) as info:  # reported beside the other problems, in one pass
        validate_config({"data": {"train": "x.jsonl", "replay": None}, "lora": {"r": 0}, "train": {"replay_kl": 1}},
                        check_files=False)  # fmt: skip
    assert len(info.value.problems) == 2 and "data.replay is not set" in str(info.value)


def test_min_pass_rate_above_one_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"train": "x.jsonl"}, "eval": {"min_pass_rate": {"golden": 80}}}, check_files=False)
    assert "eval.min_pass_rate.golden" in str(info.value) and "less than or equal to 1" in str(info.value)


def test_min_pass_rate_below_zero_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"train": "x.jsonl"}, "eval": {"min_pass_rate": {"golden": -0.1}}}, check_files=False)
    assert "eval.min_pass_rate.golden" in str(info.value)


def test_loraplus_ratio_below_one_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"train": "x.jsonl"}, "lora": {"loraplus_lr_ratio": 0.5}}, check_files=False)
    assert "lora.loraplus_lr_ratio" in str(info.value) and "greater than or equal to 1" in str(info.value)


def test_each_recipe_reason_reaches_the_reference_the_init_yaml_and_explain(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text("")
    config = validate_config({"data": {"train": str(tmp_path / "t.jsonl")}}, check_files=False)
    yaml_text, reference = render_yaml(config), reference_markdown()
    keys = {row.key for row in reference_rows()}
    for key, reason in REASONS.items():
        assert key in keys, f"recipe.REASONS names {key}, which is not a config key"
        name = key.rpartition(".")[2]
        line = next(ln for ln in yaml_text.splitlines() if ln.strip().startswith(f"{name}:") and reason in ln)
        assert line.endswith(f"Why this default: {reason}")
        assert f"| `{key}` |" in reference and reason in reference
    result = CliRunner().invoke(app, ["config", "explain", "train.lr"])
    assert result.exit_code == 0
    assert " ".join(result.output.split()).startswith("train.lr (float, default 0.0002) peak learning rate (AdamW).")
    assert " ".join(REASONS["train.lr"].split()) in " ".join(result.output.split())


def test_explain_of_an_unknown_key_exits_2_and_lists_the_sections(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "explain", "trian.lr"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    sections = "data, eval, eval.few_shot, eval.judge, lora, ship, train"
    assert f"no config key or section 'trian.lr'; sections: {sections}" in err
    assert "Traceback" not in err
