"""Build rmlx's embedding-model fixtures with sentence-transformers.

    python3 scripts/make_embedding_fixtures.py --out test/fixtures/embeddings

Needs torch, transformers, sentence-transformers, tokenizers, numpy. Every model is a
tiny random sentence-transformers model saved with SentenceTransformer.save (so its
modules.json, 1_Pooling/config.json, N_Dense/ and config_sentence_transformers.json
are the library's own), float32 weights; each directory gets reference.json with the
texts, sentence-transformers' input ids for each text (one at a time, no padding) and
its float32 embeddings (computed on the CPU, one batch of all texts, padded as the
library pads). Seeded: a rerun with the same versions gives the same files.

  bert_mean      BertModel, WordPiece tokenizer, mean pooling, Normalize
  roberta_cls    RobertaModel (positions from padding_idx + 1), CLS pooling, no Normalize
  bert_max       the bert_mean encoder with max pooling, no Normalize
  qwen3_last     Qwen3Model (causal), last-token pooling, Normalize, left padding, the
                 tokenizer appends <|endoftext|>; prompts "query" / "document"
  gemma3_dense   Gemma3TextModel with use_bidirectional_attention (sliding layers use
                 transformers' bidirectional window), mean pooling, Dense 32->128->32
                 without bias, Normalize; prompts as EmbeddingGemma's
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import CORPUS  # noqa: E402

HIDDEN = 32
HEADS = 4
INTERMEDIATE = 64
LAYERS = 2
MAX_SEQ = 128
WEIGHT_STD = 0.15
EMBED_STD = 0.4
NORM_STD = 0.1
BIAS_STD = 0.05

TEXTS = [
    "The little robot lived in a house by the sea.",
    "What is the capital of France?",
    "rain",
    "A tokenizer turns text into tokens and tokens back into text, and the server answers many requests at the same time.",
    "Numbers are useful: one, two, three, four, five, six, seven, eight, nine, ten.",
    "In the evening the robot walked along the beach and listened to the waves on the stones.",
]

QWEN3_PROMPTS = {
    "query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "document": "",
}
GEMMA_PROMPTS = {
    "query": "task: search result | query: ",
    "document": "title: none | text: ",
    "Clustering": "task: clustering | query: ",
}


def torch_setup():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(0)
    return torch


def init_weights(model, seed, zero_centred_norms=False):
    """Seeded values wider than the default init, so that every layer moves the result."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            norm = "norm" in name.lower() and name.endswith("weight")
            if norm:
                value = (0.0 if zero_centred_norms else 1.0) + NORM_STD * noise
            elif name.endswith(".bias"):
                value = BIAS_STD * noise
            elif "embed" in name:
                value = EMBED_STD * noise
            else:
                value = WEIGHT_STD * noise
            p.copy_(value.to(p.dtype))


def config_entries(specials):
    return {
        str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        for s, i in specials.items()
    }


def wordpiece_tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=320, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(CORPUS.split("\n"), trainer=trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": config_entries(ids),
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "mask_token": "[MASK]",
        "do_lower_case": True,
        "model_max_length": MAX_SEQ,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok.get_vocab_size(), ids


def bpe_tokenizer(out_dir, specials, single, extra_config):
    """Byte-level BPE on CORPUS; `single` is the post-processor's template for one text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n"), trainer=trainer)
    ids = {s: tok.token_to_id(s) for s in specials}
    used = [s for s in specials if s in single]
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(s, ids[s]) for s in used])
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": config_entries(ids),
        "model_max_length": MAX_SEQ,
        "clean_up_tokenization_spaces": False,
        **extra_config,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok.get_vocab_size(), ids


def hf_encoder(kind, tok_dir, hf_dir, seed):
    """A random transformers encoder saved with its tokenizer in hf_dir."""
    import transformers

    torch = torch_setup()
    if kind == "bert":
        n, ids = wordpiece_tokenizer(tok_dir)
        cfg = transformers.BertConfig(
            vocab_size=n,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_SEQ,
            type_vocab_size=2,
            pad_token_id=ids["[PAD]"],
            hidden_act="gelu",
            layer_norm_eps=1e-12,
        )
        model = transformers.BertModel(cfg, add_pooling_layer=False)
        zero = False
    elif kind == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        extra = {"bos_token": "<s>", "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
        n, ids = bpe_tokenizer(tok_dir, specials, "<s> $A </s>", extra)
        cfg = transformers.RobertaConfig(
            vocab_size=n,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_SEQ + 2,
            type_vocab_size=1,
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<s>"],
            eos_token_id=ids["</s>"],
            hidden_act="gelu",
            layer_norm_eps=1e-5,
        )
        model = transformers.RobertaModel(cfg, add_pooling_layer=False)
        zero = False
    elif kind == "qwen3":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        extra = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "padding_side": "left"}
        n, ids = bpe_tokenizer(tok_dir, specials, "$A <|endoftext|>", extra)
        cfg = transformers.Qwen3Config(
            vocab_size=n,
            hidden_size=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_SEQ * 4,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000,
            tie_word_embeddings=True,
            pad_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|endoftext|>"],
        )
        model = transformers.Qwen3Model(cfg)
        zero = False
    elif kind == "gemma3":
        specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
        extra = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>", "padding_side": "right"}
        n, ids = bpe_tokenizer(tok_dir, specials, "<bos> $A <eos>", extra)
        cfg = transformers.Gemma3TextConfig(
            vocab_size=n,
            hidden_size=HIDDEN,
            num_hidden_layers=3,
            num_attention_heads=HEADS,
            num_key_value_heads=1,
            head_dim=16,
            intermediate_size=INTERMEDIATE,
            max_position_embeddings=MAX_SEQ * 4,
            rms_norm_eps=1e-6,
            query_pre_attn_scalar=16,
            sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            use_bidirectional_attention=True,
            hidden_activation="gelu_pytorch_tanh",
            pad_token_id=ids["<pad>"],
            bos_token_id=ids["<bos>"],
            eos_token_id=ids["<eos>"],
        )
        model = transformers.Gemma3TextModel(cfg)
        zero = True
    else:
        raise SystemExit(f"unknown kind {kind}")
    init_weights(model, seed, zero_centred_norms=zero)
    model = model.to(torch.float32)
    model.save_pretrained(hf_dir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, hf_dir / f)
    if kind == "gemma3":
        # save_pretrained writes the halved window back; a published EmbeddingGemma config.json holds the
        # full width (512), which transformers halves on load, so write the full width as the checkpoint has it.
        cfg_path = hf_dir / "config.json"
        c = json.loads(cfg_path.read_text())
        c["sliding_window"] = 8
        cfg_path.write_text(json.dumps(c, indent=2) + "\n")


def build(name, kind, pooling, normalize, dense, prompts, seed, out_root, work):
    import torch
    from sentence_transformers import SentenceTransformer, models

    hf_dir = work / f"{name}_hf"
    hf_encoder(kind, work / f"{name}_tok", hf_dir, seed)
    word = models.Transformer(str(hf_dir), max_seq_length=MAX_SEQ)
    dim = word.get_word_embedding_dimension()
    modules = [word, models.Pooling(dim, pooling_mode=pooling)]
    gen = torch.Generator().manual_seed(seed + 1)
    for i, (fin, fout) in enumerate(dense):
        d = models.Dense(in_features=fin, out_features=fout, bias=False, activation_function=torch.nn.Identity())
        with torch.no_grad():
            d.linear.weight.copy_(torch.randn(d.linear.weight.shape, generator=gen) * (1.0 / fin**0.5))
        modules.append(d)
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts or None)
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    st.save(str(out))
    if kind == "gemma3":
        # SentenceTransformer.save writes the halved window too; restore the checkpoint's full width (see hf_encoder)
        c = json.loads((out / "config.json").read_text())
        c["sliding_window"] = 8
        (out / "config.json").write_text(json.dumps(c, indent=2) + "\n")

    st = SentenceTransformer(str(out), device="cpu")
    st.eval()
    cases = [{"prompt_name": None, "texts": TEXTS}]
    for p in prompts or {}:
        cases.append({"prompt_name": p, "texts": TEXTS[:3]})
    ref_cases = []
    for case in cases:
        pn = case["prompt_name"]
        prompt = st.prompts[pn] if pn else ""
        ids = [st.tokenize([prompt + t])["input_ids"][0].tolist() for t in case["texts"]]
        with torch.no_grad():
            emb = st.encode(case["texts"], prompt_name=pn, batch_size=len(case["texts"]), convert_to_numpy=True)
        ref_cases.append({"prompt_name": pn, "texts": case["texts"], "input_ids": ids, "embeddings": emb.astype("float32").tolist()})
    auto = st[0].auto_model
    info = {
        "kind": kind,
        "pooling": pooling,
        "normalize": normalize,
        "dense": [list(d) for d in dense],
        "dimension": st.get_sentence_embedding_dimension(),
        "max_seq_length": st.max_seq_length,
        "effective_sliding_window": getattr(auto.config, "sliding_window", None),
        "padding_side": st.tokenizer.padding_side,
        "cases": ref_cases,
    }
    (out / "reference.json").write_text(json.dumps(info) + "\n")
    print(f"{name}: dim {info['dimension']}, window {info['effective_sliding_window']}, ids {[len(i) for i in ref_cases[0]['input_ids']]}", flush=True)
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build("bert_mean", "bert", "mean", True, [], None, 11, out_root, work)
        build("roberta_cls", "roberta", "cls", False, [], None, 12, out_root, work)
        build("bert_max", "bert", "max", False, [], None, 11, out_root, work)
        build("qwen3_last", "qwen3", "lasttoken", True, [], QWEN3_PROMPTS, 13, out_root, work)
        build("gemma3_dense", "gemma3", "mean", True, [(HIDDEN, 4 * HIDDEN), (4 * HIDDEN, HIDDEN)], GEMMA_PROMPTS, 14, out_root, work)
    versions = {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
    }
    (out_root / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(versions)


if __name__ == "__main__":
    main()
