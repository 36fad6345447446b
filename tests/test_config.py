import pytest

from gptlab.config import RunConfig, apply_overrides, build_config
from gptlab.errors import ConfigError


def test_overrides_are_parsed_against_field_types():
    cfg = apply_overrides(RunConfig(), ["model.n_layer=3", "train.lr=3e-4", "model.bias=false",
                                        "model.positions=rope", "train.dtype=bfloat16"])
    assert (cfg.model.n_layer, cfg.train.lr, cfg.model.bias) == (3, 3e-4, False)
    assert (cfg.model.positions, cfg.train.dtype) == ("rope", "bfloat16")


@pytest.mark.parametrize("override, fragment", [
    ("model.n_layers=3", "unknown config key 'model.n_layers'; valid keys: model.vocab_size"),
    ("modle.n_layer=3", "unknown config key 'modle.n_layer'"),
    ("model.n_layer=three", "model.n_layer: expected an integer, got 'three'"),
    ("model.n_layer=0", "model.n_layer: must be positive"),
    ("model.n_layer=-2", "model.n_layer: must be positive"),
    ("model.n_embd=100", "model.n_embd: 100 is not divisible by model.n_head=12"),
    ("model.positions=absolute", "model.positions: 'absolute' is not one of learned, sinusoidal, rope, alibi, none"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("model.bias=maybe", "model.bias: expected true or false"),
    ("model.dropout=1.5", "model.dropout: must be in [0, 1)"),
    ("model", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as e:
        apply_overrides(RunConfig(), [override])
    assert fragment in str(e.value)


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n_layer: 4\n  n_embd: 128\n  n_head: 4\ntrain:\n  lr: 1e-3\n")
    cfg = build_config(f, ["model.n_layer=5"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.train.lr) == (5, 128, 1e-3)


@pytest.mark.parametrize("text, fragment", [
    ("model:\n  n_heads: 4\n", "unknown config key 'model.n_heads'"),
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("- a\n- b\n", "must hold a mapping"),
    ("model: {n_layer: 4\n", "is not valid YAML"),
    ("train:\n  max_steps: 1.5\n", "train.max_steps: expected an integer"),
])
def test_bad_yaml_files(tmp_path, text, fragment):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        build_config(f)
    assert fragment in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "nope.yaml")
