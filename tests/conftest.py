"""Shared test setup: offline hub, deterministic torch, tiny models built in code."""

import os

# Set before transformers is imported anywhere: the hub is unreachable on the project's machines.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT (128 positions) saved with the real MiniLM WordPiece tokenizer (a local dir)."""
    from lsg.assets import minilm_dir

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory):
    """A random 1+1-layer BART (256 positions) with the real MiniLM tokenizer ([CLS]/[SEP] as BOS/EOS)."""
    from lsg.assets import minilm_dir

    path = tmp_path_factory.mktemp("tiny-bart")
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    config = transformers.BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        decoder_start_token_id=tokenizer.sep_token_id, forced_eos_token_id=tokenizer.sep_token_id)
    transformers.BartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config_kwargs(**overrides):
    """A BERT/RoBERTa-shaped config small enough for CPU tests (hidden 32, 2 layers, 4 heads)."""
    kwargs = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    kwargs.update(overrides)
    return kwargs


def _seq2seq_kwargs(**overrides):
    kwargs = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
                  dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
                  eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
    kwargs.update(overrides)
    return kwargs


_ROBERTA_IDS = dict(max_position_embeddings=66, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)

# One tiny config per supported family (model_type -> config), built in code: no downloads.
TINY_CONFIGS = {
    "bert": lambda: transformers.BertConfig(**tiny_config_kwargs()),
    "roberta": lambda: transformers.RobertaConfig(**tiny_config_kwargs(**_ROBERTA_IDS)),
    "xlm-roberta": lambda: transformers.XLMRobertaConfig(**tiny_config_kwargs(**_ROBERTA_IDS)),
    "camembert": lambda: transformers.CamembertConfig(**tiny_config_kwargs(**_ROBERTA_IDS)),
    "electra": lambda: transformers.ElectraConfig(embedding_size=16, **tiny_config_kwargs()),
    "albert": lambda: transformers.AlbertConfig(embedding_size=16, **tiny_config_kwargs()),
    "distilbert": lambda: transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                                        max_position_embeddings=64, dropout=0.0,
                                                        attention_dropout=0.0, pad_token_id=0),
    # local_attention=64: the sliding layers see +-32 tokens, so inputs of <= 32 tokens are dense everywhere.
    "modernbert": lambda: transformers.ModernBertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, local_attention=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        cls_token_id=1, sep_token_id=2, embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0),
    # Decoder-only: GPT-2 (learned positions) and Llama (rotary, grouped-query attention with 2 key heads).
    "gpt2": lambda: transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0,
                                            eos_token_id=2, pad_token_id=1),
    "llama": lambda: transformers.LlamaConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, intermediate_size=37, max_position_embeddings=64,
                                              bos_token_id=0, eos_token_id=2, pad_token_id=1),
    "bart": lambda: transformers.BartConfig(**_seq2seq_kwargs()),
    "mbart": lambda: transformers.MBartConfig(**_seq2seq_kwargs(scale_embedding=True)),
    "pegasus": lambda: transformers.PegasusConfig(**_seq2seq_kwargs(scale_embedding=True, pad_token_id=0,
                                                                    eos_token_id=1, decoder_start_token_id=0)),
}


def tiny_model(model_type: str, suffix: str | None = None, **config_overrides):
    """A random tiny model of a supported family, in eval mode; `suffix` defaults to the family's default head."""
    from lsg.families import FAMILIES

    family = FAMILIES[model_type]
    config = TINY_CONFIGS[model_type]()
    for key, value in config_overrides.items():
        setattr(config, key, value)
    return getattr(transformers, family.name + (suffix or family.default_head))(config).eval()


def tiny_inputs(model_type: str, suffix: str, length: int, batch: int = 2, pad: int = 3) -> dict:
    """Random ids with `pad` padding tokens in the last row; seq2seq rows end with EOS (the classifier pools it)."""
    config = TINY_CONFIGS[model_type]()
    ids = torch.randint(5, 99, (batch, length))
    mask = torch.ones_like(ids)
    mask[-1, length - pad:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if config.is_encoder_decoder:
        ids[:, -1] = config.eos_token_id
        if suffix in ("Model", "ForConditionalGeneration"):  # the other heads decode the input ids themselves
            inputs["decoder_input_ids"] = torch.randint(5, 99, (batch, 7))
    if suffix == "ForMultipleChoice":
        inputs = {k: v[:, None].repeat(1, 2, 1) for k, v in inputs.items()}
    return inputs


def main_output(output):
    """The tensor a head is for (logits, start logits or the last hidden state)."""
    for name in ("logits", "prediction_logits", "start_logits", "last_hidden_state"):
        if getattr(output, name, None) is not None:
            return getattr(output, name)
    raise AssertionError(f"no output in {type(output)}")
