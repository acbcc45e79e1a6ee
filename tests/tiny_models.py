"""Tiny, randomly initialised checkpoints in the real models' on-disk formats (no downloads)."""

from pathlib import Path

PAIRRM_SPECIALS = ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]
WORDS = ("what is the capital of france paris london a city on seine i do not know maybe berlin "
         "hard to say tell me about cats dogs they are pets good bad answer question yes no").split()


def build_tiny_pairrm(path: Path, head_scale: float = 1.0) -> Path:
    """PairRM-hf layout: DeBERTa-v2 config plus PairRM's fields, `pretrained_model.*` and
    `head_layer.*` weights, a fast tokenizer with the prefix tokens as special tokens. Seeded. Its
    random head gives gaps of about 0.01; `head_scale` 100 spreads them to about 1, so that a recipe
    at PairRM's paper threshold (0.20) keeps some pairs and drops others (about 40% kept)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import DebertaV2Config, PreTrainedTokenizerFast

    from raysynth.score.pairrm import PairRMModel

    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(base + PAIRRM_SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        additional_special_tokens=PAIRRM_SPECIALS)
    config = DebertaV2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, pad_token_id=0, n_tasks=1, drop_out=0.05,
        sep_token_id=vocab["[SEP]"], source_prefix_id=vocab["<|source|>"], cand_prefix_id=vocab["<|candidate|>"],
        cand1_prefix_id=vocab["<|candidate1|>"], cand2_prefix_id=vocab["<|candidate2|>"])
    torch.manual_seed(0)
    model = PairRMModel(config)
    with torch.no_grad():
        model.head_layer[-1].weight.mul_(head_scale)
        model.head_layer[-1].bias.mul_(head_scale)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_reward_model(path: Path, tokenizer_dir: str) -> Path:
    """A sequence-classification Llama (num_labels=1) with the embedded model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_causal_lm(path: Path, tokenizer_dir: str) -> Path:
    """A 2-layer Llama with the embedded model's tokenizer and chat template: a second, different model
    (a student to train beside the synthesizer)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_shifted_head_copy(base: Path, path: Path) -> Path:
    """The model at `base` with other weights: an untied output layer whose rows are the input
    embeddings moved by one token, so wherever `base` would emit token t this copy emits t + 1. Its
    greedy answers differ from the base model's from the first token on, with the same margins, so a
    server that only relabels the base model cannot pass for serving this one."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    path.mkdir(parents=True)
    for item in base.iterdir():
        if item.name not in ("model.safetensors", "config.json"):
            shutil.copy(item, path / item.name)
    config = json.loads((base / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (path / "config.json").write_text(json.dumps(config, indent=2))
    weights = load_file(base / "model.safetensors")
    weights["lm_head.weight"] = torch.roll(weights["model.embed_tokens.weight"], shifts=1, dims=0).contiguous()
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def without_chat_template(base: Path, path: Path) -> Path:
    """The model at `base` as a base model without a chat template (I-SHEEP's Llama-3 70B base):
    the same weights (linked), a tokenizer config with no template."""
    import json

    path.mkdir(parents=True)
    for item in Path(base).iterdir():
        if item.name == "tokenizer_config.json":
            config = json.loads(item.read_text())
            config.pop("chat_template", None)
            (path / item.name).write_text(json.dumps(config))
        elif item.name != "chat_template.jinja":
            (path / item.name).symlink_to(item)
    return path
