"""Reference fixtures of the Gated DeltaNet hybrids (Qwen3.5 dense and MoE, Qwen3-Next), built with transformers.

    python3 scripts/make_hybrid_fixtures.py --out test/fixtures

Writes models/hybrid/<name>/ (tiny random bf16 checkpoints in transformers' layouts, with the tiny ChatML
tokenizer of make_fixtures.py) and models/hybrid/INDEX.json. References are float32, as make_fixtures.py computes
them, for three prompts: the chat and plain prompts of make_fixtures.py and a long one (several hundred tokens,
crossing the 64-token chunks of transformers' chunked delta rule and many KV blocks).
"""

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import mlx_quant_ref as mq  # noqa: E402

LONG_TOKENS = 320

HYBRID_TEXT = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    linear_conv_kernel_dim=4,
    linear_num_key_heads=2,
    linear_key_head_dim=16,
    linear_num_value_heads=4,
    linear_value_head_dim=16,
    layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
)
QWEN35_ROPE = {
    "rope_type": "default",
    "rope_theta": 10000000.0,
    "partial_rotary_factor": 0.25,
    "mrope_section": [2, 1, 1],
    "mrope_interleaved": True,
}
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)
TINY_VISION = dict(
    depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
    spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16,
)

SPECS = [
    {
        "name": "qwen3_5_dense",
        "config": "Qwen3_5TextConfig",
        "model": "Qwen3_5ForCausalLM",
        "kwargs": dict(HYBRID_TEXT, intermediate_size=128, tie_word_embeddings=True, rope_parameters=QWEN35_ROPE),
        "features": ["gated_delta_net", "gated_attention", "partial_rotary", "norm_plus_one", "tied_embeddings"],
        "seed": 11,
    },
    {
        "name": "qwen3_next",
        "config": "Qwen3NextConfig",
        "model": "Qwen3NextForCausalLM",
        "kwargs": dict(
            HYBRID_TEXT, **MOE, intermediate_size=128, decoder_sparse_step=1, mlp_only_layers=[2],
            norm_topk_prob=True, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
        ),
        "features": ["gated_delta_net_fused_qkvz", "moe_shared_expert", "dense_layer_in_moe", "untied_lm_head"],
        "seed": 12,
    },
    {
        "name": "qwen3_5_moe",
        "config": "Qwen3_5MoeTextConfig",
        "model": "Qwen3_5MoeForCausalLM",
        "kwargs": dict(HYBRID_TEXT, **MOE, tie_word_embeddings=False, rope_parameters=QWEN35_ROPE),
        "features": ["gated_delta_net", "moe_shared_expert", "untied_lm_head"],
        "seed": 13,
    },
    {
        "name": "qwen3_5_vl",
        "config": "Qwen3_5Config",
        "text_config": "Qwen3_5TextConfig",
        "vision_config": "Qwen3_5VisionConfig",
        "model": "Qwen3_5ForConditionalGeneration",
        "kwargs": dict(HYBRID_TEXT, intermediate_size=128, tie_word_embeddings=False, rope_parameters=QWEN35_ROPE),
        "features": ["conditional_generation_layout", "vision_tower_unused", "mtp_weights", "untied_lm_head"],
        "mtp": True,
        "seed": 14,
    },
    {
        "name": "qwen3_5_moe_vl",
        "config": "Qwen3_5MoeConfig",
        "text_config": "Qwen3_5MoeTextConfig",
        "vision_config": "Qwen3_5MoeVisionConfig",
        "model": "Qwen3_5MoeForConditionalGeneration",
        "kwargs": dict(HYBRID_TEXT, **MOE, tie_word_embeddings=False, rope_parameters=QWEN35_ROPE),
        "features": ["conditional_generation_layout", "moe_shared_expert", "mtp_weights"],
        "mtp": True,
        "seed": 15,
    },
]


def init_weights(model, seed):
    """Seeded values as make_fixtures.py sets them; the zero-centred norms near 0, the gated GDN norm near 1,
    A_log and dt_bias small."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("linear_attn.norm.weight"):
                value = 1.0 + mf.NORM_STD * noise
            elif name.endswith("norm.weight") and "visual" not in name:
                value = mf.NORM_STD * noise
            elif name.endswith("A_log") or name.endswith("dt_bias"):
                value = 0.3 * noise
            elif name.endswith(".bias"):
                value = mf.BIAS_STD * noise
            elif "embed_tokens" in name or "lm_head" in name:
                value = mf.EMBED_STD * noise
            elif name.endswith("mlp.gate.weight"):
                value = mf.ROUTER_STD * noise
            elif "conv1d" in name:
                value = 0.4 * noise
            else:
                value = mf.WEIGHT_STD * noise
            p.copy_(value.to(p.dtype))


def build(spec, out_dir, tok_dir, vocab, special_ids):
    import transformers

    torch, _ = mf.torch_setup()
    text_kwargs = dict(spec["kwargs"])
    text_kwargs.update(
        vocab_size=vocab, bos_token_id=None, eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )
    if "text_config" in spec:
        tc = getattr(transformers, spec["text_config"])(**text_kwargs)
        vc = getattr(transformers, spec["vision_config"])(**TINY_VISION)
        config = getattr(transformers, spec["config"])(
            text_config=tc.to_dict(), vision_config=vc.to_dict(), tie_word_embeddings=False,
            image_token_id=vocab - 1, video_token_id=vocab - 2, vision_start_token_id=vocab - 3,
            vision_end_token_id=vocab - 4,
        )
    else:
        config = getattr(transformers, spec["config"])(**text_kwargs)
    torch.manual_seed(spec["seed"])
    model = getattr(transformers, spec["model"])(config).float()
    init_weights(model, spec["seed"])
    model = model.to(torch.bfloat16)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, out_dir / f)
    names = sorted(mq.read_safetensors(out_dir / "model.safetensors")[0])
    print(f"[{spec['name']}] saved {len(names)} tensors: {names}", flush=True)
    print(f"[{spec['name']}] config.json: {(out_dir / 'config.json').read_text()}", flush=True)


def add_mtp(out_dir, seed):
    """Appends an MTP head's tensors (mtp.*, as Qwen's checkpoints store it) after the reference is computed:
    transformers ignores them, rmlx must recognise and keep them."""
    import numpy as np

    tensors, meta = mq.read_safetensors(out_dir / "model.safetensors")
    rng = np.random.default_rng(seed)
    H = 64
    extra = {
        "mtp.fc.weight": (H, 2 * H),
        "mtp.pre_fc_norm_embedding.weight": (H,),
        "mtp.pre_fc_norm_hidden.weight": (H,),
        "mtp.norm.weight": (H,),
        "mtp.layers.0.input_layernorm.weight": (H,),
        "mtp.layers.0.self_attn.q_proj.weight": (2 * 4 * 32, H),
    }
    out = {n: mq.bf16_tensor(np.asarray(a, dtype=np.float32)) for n, a in tensors.items()}
    for n, shape in extra.items():
        out[n] = mq.bf16_tensor((0.1 * rng.standard_normal(shape)).astype(np.float32))
    mq.write_safetensors(out_dir / "model.safetensors", out, {"format": "pt"})
    idx = out_dir / "model.safetensors.index.json"
    if idx.exists():
        idx.unlink()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="test/fixtures")
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    import torch
    import transformers

    print(f"transformers {transformers.__version__} torch {torch.__version__} cuda {torch.cuda.is_available()}")
    for cls in ("Qwen3_5ForCausalLM", "Qwen3NextForCausalLM", "Qwen3_5MoeForCausalLM",
                "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"):
        print(f"  {cls}: {hasattr(transformers, cls)}", flush=True)
    try:
        import fla  # noqa: F401

        print("  flash-linear-attention present", flush=True)
    except Exception:
        print("  flash-linear-attention absent (torch fallbacks)", flush=True)

    def load_reference_model(model_dir):
        torch_, dev = mf.torch_setup()
        arch = json.loads((Path(model_dir) / "config.json").read_text())["architectures"][0]
        model = getattr(transformers, arch).from_pretrained(
            str(model_dir), dtype=torch_.float32, attn_implementation="eager"
        )
        cfg = model.config
        text = getattr(cfg, "text_config", None)
        if text is not None:
            # compute_references reads these from the top-level config, where the multimodal configs lack them
            for key in ("vocab_size", "eos_token_id"):
                try:
                    getattr(cfg, key)
                except AttributeError:
                    setattr(cfg, key, getattr(text, key))
        return model.to(dev).eval(), torch_, dev

    mf.load_reference_model = load_reference_model

    root = Path(args.out) / "models" / "hybrid"
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tempfile.mkdtemp(prefix="tiny_tok_"))
    n_tok, special_ids = mf.build_tokenizer(tok_dir)
    vocab = (n_tok + 63) // 64 * 64
    prompts = mf.make_prompts(tok_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    long_ids = list(tok.encode(mf.CORPUS.strip(), add_special_tokens=False))[:LONG_TOKENS]
    prompts.append({"kind": "long", "text": tok.decode(long_ids), "ids": long_ids})
    print(f"long prompt: {len(long_ids)} tokens", flush=True)

    only = set(filter(None, args.only.split(",")))
    entries = []
    for spec in SPECS:
        if only and spec["name"] not in only:
            continue
        out_dir = root / spec["name"]
        try:
            build(spec, out_dir, tok_dir, vocab, special_ids)
            mf.compute_references(out_dir, prompts, spec["name"])
            if spec.get("mtp"):
                add_mtp(out_dir, spec["seed"])
        except Exception as e:
            import traceback

            traceback.print_exc()
            print(f"[{spec['name']}] FAILED: {e!r}", flush=True)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            continue
        cfg = json.loads((out_dir / "config.json").read_text())
        entries.append({
            "name": spec["name"], "family": cfg["model_type"], "architecture": cfg["architectures"][0],
            "layout": "huggingface", "dtype": "bfloat16", "quantization": None, "features": spec["features"],
        })
    index = {
        "prompts": [{"kind": p["kind"], "length": len(p["ids"])} for p in prompts],
        "greedy_steps": mf.GREEDY_STEPS,
        "transformers_version": transformers.__version__,
        "fixtures": entries,
    }
    (root / "INDEX.json").write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
