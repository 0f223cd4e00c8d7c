import shutil

import pytest
import torch

from tunepilot.config import ModelSettings
from tunepilot.errors import UserError
from tunepilot.models import load_model, load_tokenizer, resolve_dtype


def hub_cache_with(model_dir, cache, repo="tunepilot-test/tiny", revision="0" * 40):
    """Lay out a local directory exactly as the HF hub cache does, so a hub id resolves offline."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, root / "snapshots" / revision)
    return repo


def test_hub_id_loads_through_the_hub_code_path(tiny_model, tmp_path):
    repo = hub_cache_with(tiny_model, tmp_path / "hub")
    settings = ModelSettings(name_or_path=repo, cache_dir=str(tmp_path / "hub"))
    model = load_model(settings, torch.device("cpu"))
    tokenizer = load_tokenizer(settings)
    assert model.config.num_hidden_layers == 2 and tokenizer.eos_token == "<|im_end|>"


def test_unknown_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="neither a local directory nor a reachable hub model"):
        load_model(
            ModelSettings(name_or_path="no-such-org/no-such-model", cache_dir=str(tmp_path)), torch.device("cpu")
        )


def _word_tokenizer(out):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, "red": 2, "green": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(out)
    return out


def test_model_tokenizer_loads_another_directory_than_the_model(tiny_model, tmp_path):
    words = _word_tokenizer(tmp_path / "words")
    own = load_tokenizer(ModelSettings(name_or_path=str(tiny_model)))
    other = load_tokenizer(ModelSettings(name_or_path=str(tiny_model), tokenizer=str(words)))
    assert other("green red", add_special_tokens=False)["input_ids"] == [3, 2]
    assert own("green red", add_special_tokens=False)["input_ids"] != [3, 2]
    assert other.pad_token == "<eos>"  # no pad token: the eos, as for the model's own tokenizer


def test_a_missing_tokenizer_names_the_key(tiny_model, tmp_path):
    with pytest.raises(UserError, match="^model.tokenizer: "):
        load_tokenizer(
            ModelSettings(
                name_or_path=str(tiny_model), tokenizer="no-such-org/no-such-tokenizer", cache_dir=str(tmp_path)
            )
        )


def test_qlora_without_gpu_is_a_clear_error(tiny_model):
    with pytest.raises(UserError, match="QLoRA needs a CUDA GPU"):
        load_model(ModelSettings(name_or_path=str(tiny_model), quantization_bit=4), torch.device("cpu"))


def test_dtype_auto_is_fp32_on_cpu():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.slow
def test_gguf_model_loads_via_cached_conversion(smollm2_gguf):
    settings = ModelSettings(name_or_path=str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    model = load_model(settings, torch.device("cpu"))
    tokenizer = load_tokenizer(settings)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) > 130_000_000
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert loss.item() < 6.0  # a pretrained model, not random weights (random: ~ln(49152) = 10.8)
