"""Build rmlx's Gemma 4 reference fixtures with Hugging Face transformers.

    python3 scripts/make_gemma4_fixtures.py --out test/fixtures

Needs torch and a transformers release that has Gemma 4 (Gemma4ForCausalLM). Reuses the tiny tokenizer, prompts
and helpers of make_fixtures.py, adds a prompt of several hundred tokens (it crosses KV blocks, prefill chunks and
the tiny sliding windows), and writes under models/:

  gemma4_e          Gemma4ForCausalLM: per-layer embeddings (PLE), KV shared by the last layers, double-wide MLP
                    on those, proportional partial rope on the global layers, final logit soft-cap
  gemma4_kv         K=V global layers with their own kv-head count, no PLE; layer_types and rope_parameters left
                    out of config.json (transformers' defaults: 5 sliding : 1 full, and with 5 layers the last one
                    forced to full)
  gemma4_moe        the MoE block beside the dense MLP (router scale, per-expert scale, top-k renormalised), K=V
  gemma4_cg         Gemma4ForConditionalGeneration as Google ships it: model.language_model.*, vision and audio
                    towers present, unused k/v weights stored for the KV-shared layers
  gemma4_e_mxfp8    gemma4_e as an MLX snapshot (model.*), mxfp8 g32: embeddings, PLE table and Linears quantized
  gemma4_moe_q4     gemma4_moe as an mlx-vlm snapshot (model_type gemma4, language_model.model.*, split
                    switch_glu experts), affine 4-bit g64 with the routers at 8 bits

and models/GEMMA4_INDEX.json with their INDEX.json entries. References are float32 from the saved checkpoint
(quantized variants: from the exactly dequantized weights), eager attention, TF32 off.
"""

import argparse
import copy
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import mlx_quant_ref as mq  # noqa: E402

LONG_PROMPT_TOKENS = 320
S, F = "sliding_attention", "full_attention"

ROPE = {
    S: {"rope_type": "default", "rope_theta": 10000.0},
    F: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}

BASE = dict(hidden_size=64, max_position_embeddings=1024, rms_norm_eps=1e-6, num_attention_heads=4, head_dim=16)

SPECS = [
    {
        "name": "gemma4_e",
        "kwargs": dict(
            intermediate_size=96,
            num_hidden_layers=6,
            num_key_value_heads=2,
            global_head_dim=32,
            layer_types=[S, S, F, S, S, F],
            rope_parameters=ROPE,
            sliding_window=24,
            hidden_size_per_layer_input=16,
            num_kv_shared_layers=3,
            use_double_wide_mlp=True,
            final_logit_softcapping=10.0,
        ),
        "features": [
            "per_layer_embeddings",
            "kv_shared_layers",
            "double_wide_mlp",
            "proportional_rope",
            "global_head_dim",
            "sliding_window",
            "final_softcap",
            "layer_scalar",
            "tied_embeddings",
        ],
        "seed": 41,
    },
    {
        "name": "gemma4_kv",
        "kwargs": dict(
            intermediate_size=128,
            num_hidden_layers=5,
            num_key_value_heads=2,
            global_head_dim=32,
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            hidden_size_per_layer_input=0,
            sliding_window=20,
            final_logit_softcapping=None,
        ),
        # Built with transformers' defaults for these, and written without them.
        "drop_keys": ["layer_types", "rope_parameters"],
        "features": ["attention_k_eq_v", "global_kv_heads", "default_layer_types", "default_rope", "no_softcap"],
        "seed": 42,
    },
    {
        "name": "gemma4_moe",
        "kwargs": dict(
            intermediate_size=64,
            num_hidden_layers=4,
            num_key_value_heads=2,
            global_head_dim=32,
            layer_types=[S, F, S, F],
            rope_parameters=ROPE,
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            hidden_size_per_layer_input=0,
            sliding_window=16,
            enable_moe_block=True,
            num_experts=8,
            top_k_experts=2,
            moe_intermediate_size=64,
            final_logit_softcapping=30.0,
        ),
        "features": ["moe_block", "router_scales", "fused_experts", "attention_k_eq_v", "final_softcap"],
        "seed": 43,
    },
    {
        "name": "gemma4_cg",
        "conditional": True,
        "kwargs": dict(
            intermediate_size=64,
            num_hidden_layers=5,
            num_key_value_heads=2,
            global_head_dim=32,
            layer_types=[S, F, S, S, F],
            rope_parameters=ROPE,
            attention_k_eq_v=True,
            num_global_key_value_heads=1,
            sliding_window=24,
            hidden_size_per_layer_input=8,
            num_kv_shared_layers=2,
            final_logit_softcapping=30.0,
        ),
        "features": [
            "conditional_generation_layout",
            "towers_present",
            "stored_kv_of_shared_layers",
            "per_layer_embeddings",
            "kv_shared_layers",
            "attention_k_eq_v",
        ],
        "seed": 44,
    },
]

QUANT_SPECS = [
    {
        "name": "gemma4_e_mxfp8",
        "base": "gemma4_e",
        "layout": "mlx_lm",
        "quantization": {"group_size": 32, "bits": 8, "mode": "mxfp8"},
        "features": ["mxfp8", "quantized_ple_table", "quantized_tied_embedding"],
    },
    {
        "name": "gemma4_moe_q4",
        "base": "gemma4_moe",
        "layout": "mlx_vlm",
        "quantization": {"group_size": 64, "bits": 4, "mode": "affine"},
        "router_override": {"group_size": 64, "bits": 8},
        "features": ["affine_4bit", "mlx_vlm_layout", "switch_glu_experts", "quantized_router_8bit"],
    },
]


# ---------------------------------------------------------------- prompts


def long_prompt(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ids = list(tok.encode(mf.CORPUS, add_special_tokens=False))
    while len(ids) < LONG_PROMPT_TOKENS:
        ids = ids + ids
    ids = ids[:LONG_PROMPT_TOKENS]
    return {"kind": "long", "text": tok.decode(ids), "ids": ids}


# ---------------------------------------------------------------- float models

TOWERS = ("vision_tower", "audio_tower", "embed_vision", "embed_audio")


def init_gemma4(model, seed):
    """Seeded values wider than the default init, so that logits are far from flat; norms are plain weights
    (no 1 + w), layer scalars differ from 1. The multimodal towers keep their own init."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if any(t in name for t in TOWERS):
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if re.search(r"norm(_\d)?\.weight$", name):
                value = 1.0 + mf.NORM_STD * noise
            elif name.endswith("router.scale"):
                value = 1.0 + 0.1 * noise
            elif name.endswith("router.per_expert_scale"):
                value = 1.0 + 0.2 * noise
            elif name.endswith("router.proj.weight"):
                value = mf.ROUTER_STD * noise
            elif "embed_tokens" in name:
                value = mf.EMBED_STD * noise
            else:
                value = mf.WEIGHT_STD * noise
            p.copy_(value.to(p.dtype))
        for name, b in sorted(model.named_buffers()):
            if name.endswith("layer_scalar"):
                u = torch.rand(b.shape, generator=gen, dtype=torch.float32)
                b.copy_((0.6 + 0.8 * u).to(b.dtype))


def tiny_towers():
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        patch_size=4,
        position_embedding_size=64,
        pooling_kernel_size=2,
    )
    audio = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        subsampling_conv_channels=[8, 4],
        output_proj_dims=32,
    )
    return vision, audio


def build_gemma4(spec, out_dir, tok_dir, vocab, special_ids):
    import transformers

    torch, _ = mf.torch_setup()
    kwargs = dict(BASE)
    kwargs.update(spec["kwargs"])
    kwargs.update(
        vocab_size=vocab,
        vocab_size_per_layer_input=vocab,
        bos_token_id=None,
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    text_config = transformers.Gemma4TextConfig(**kwargs)
    torch.manual_seed(spec["seed"])
    if spec.get("conditional"):
        vision, audio = tiny_towers()
        model = None
        for towers in ((vision, audio), (vision, None), (None, None)):
            try:
                config = transformers.Gemma4Config(
                    text_config=copy.deepcopy(text_config),
                    vision_config=towers[0],
                    audio_config=towers[1],
                    tie_word_embeddings=True,
                )
                model = transformers.Gemma4ForConditionalGeneration(config)
                print(f"[{spec['name']}] towers: vision {towers[0] is not None}, audio {towers[1] is not None}", flush=True)
                break
            except Exception as e:  # a tower config this release rejects must not stop the fixture
                print(f"[{spec['name']}] towers {[t is not None for t in towers]} failed: {e!r}", flush=True)
        if model is None:
            raise SystemExit(f"[{spec['name']}] cannot build Gemma4ForConditionalGeneration")
    else:
        model = transformers.Gemma4ForCausalLM(text_config)
    model = model.float()
    init_gemma4(model, spec["seed"])
    model = model.to(torch.bfloat16)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    cfg_path = out_dir / "config.json"
    if spec.get("drop_keys"):
        cfg = json.loads(cfg_path.read_text())
        for k in spec["drop_keys"]:
            cfg.pop(k, None)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if spec.get("conditional"):
        add_shared_kv_weights(out_dir, text_config, spec)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, out_dir / f)
    names = sorted(read_all(out_dir))
    print(f"[{spec['name']}] saved {len(names)} tensors: {names}", flush=True)
    print(f"[{spec['name']}] config.json: {cfg_path.read_text()}", flush=True)


def read_all(model_dir):
    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        if f.name.startswith("reference"):
            continue
        tensors, _ = mq.read_safetensors(f)
        out.update(tensors)
    return out


class RawTensor:
    """A stored tensor kept as it is (dtype tag, shape and bytes), for rewriting a file with tensors added."""

    def __init__(self, dtype, shape, data):
        self.dtype, self.shape, self.data = dtype, list(shape), data


def read_raw(path):
    import struct

    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        out[name] = RawTensor(info["dtype"], info["shape"], raw[8 + n + start : 8 + n + end])
    return out, meta


def add_shared_kv_weights(out_dir, text_config, spec):
    """Google's checkpoints store k_proj / v_proj / k_norm for the KV-shared layers, which every implementation
    ignores: write random ones (with the source layer's shapes) so that loaders are tested on that."""
    path = out_dir / "model.safetensors"
    if not path.exists():
        raise SystemExit(f"[{spec['name']}] expected one model.safetensors")
    tensors, meta = read_raw(path)
    L = text_config.num_hidden_layers
    first = L - spec["kwargs"]["num_kv_shared_layers"]
    rng = np.random.default_rng(spec["seed"])
    prefix = "model.language_model.layers"
    types = text_config.layer_types
    added = []
    for i in range(first, L):
        src = max(j for j in range(first) if types[j] == types[i])
        for leaf in ("k_proj.weight", "v_proj.weight", "k_norm.weight"):
            have = f"{prefix}.{src}.self_attn.{leaf}"
            if have in tensors:
                name = f"{prefix}.{i}.self_attn.{leaf}"
                tensors[name] = mq.bf16_tensor((rng.standard_normal(tensors[have].shape) * 5).astype(np.float32))
                added.append(name)
    mq.write_safetensors(path, tensors, meta or {"format": "pt"})
    print(f"[{spec['name']}] added stored weights for shared layers: {added}", flush=True)


# ---------------------------------------------------------------- references


def load_reference(model_dir, conditional):
    import transformers

    torch, dev = mf.torch_setup()
    cls = transformers.Gemma4ForConditionalGeneration if conditional else transformers.Gemma4ForCausalLM
    model = cls.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    return model.to(dev).eval(), torch, dev


def router_gap_hooks(model, top_k):
    gaps = []

    def hook(module, args, output):
        probs = output[0].float()
        top = probs.topk(top_k + 1, dim=-1).values
        gaps.append(float((top[:, top_k - 1] - top[:, top_k]).min()))

    handles = [m.register_forward_hook(hook) for _, m in model.named_modules() if type(m).__name__ == "Gemma4TextRouter"]
    return gaps, handles


def compute_references(model_dir, prompts, label, conditional=False, ref_dir=None):
    model, torch, dev = load_reference(ref_dir or model_dir, conditional)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    print(f"[{label}] reloaded: layer_types {cfg.layer_types}, rope {cfg.rope_parameters}", flush=True)
    top_k = getattr(cfg, "top_k_experts", None) if getattr(cfg, "enable_moe_block", False) else None
    gaps, handles = router_gap_hooks(model, top_k) if top_k else ([], [])
    fields = {"reference_class": type(model).__name__, "vocab_size": cfg.vocab_size}
    return mf.write_references(model_dir, model, torch, dev, prompts, label, fields, gaps, handles)


# ---------------------------------------------------------------- MLX quantized variants

def to_mlx(hf, layout):
    """Hugging Face Gemma4ForCausalLM tensors (model.*) -> an MLX snapshot's names: mlx-lm's text model keeps
    model.*, mlx-vlm's multimodal wrapper nests it as language_model.model.*; fused experts split into switch_glu."""
    out = {}
    prefix = "language_model." if layout == "mlx_vlm" else ""
    for name, arr in hf.items():
        if name.endswith(".experts.gate_up_proj"):
            out.update(mf.split_gate_up(arr, f"{prefix}{name[: -len('.gate_up_proj')]}.switch_glu"))
        elif name.endswith(".experts.down_proj"):
            out[f"{prefix}{name[: -len('.down_proj')]}.switch_glu.down_proj.weight"] = arr
        else:
            out[prefix + name] = arr
    return out


def from_mlx(mlx, hf_names, layout):
    prefix = "language_model." if layout == "mlx_vlm" else ""
    out = {}
    for name in hf_names:
        if name.endswith(".experts.gate_up_proj"):
            out[name] = mf.join_gate_up(mlx, f"{prefix}{name[: -len('.gate_up_proj')]}.switch_glu")
        elif name.endswith(".experts.down_proj"):
            out[name] = mlx[f"{prefix}{name[: -len('.down_proj')]}.switch_glu.down_proj.weight"]
        else:
            out[name] = mlx[prefix + name]
    return out


def mlx_config(base_cfg, layout):
    """The MLX snapshot's config.json: mlx-lm keeps the text model's; mlx-vlm nests it as text_config."""
    if layout != "mlx_vlm":
        return dict(base_cfg)
    text = {k: v for k, v in base_cfg.items() if k not in ("architectures", "transformers_version", "dtype", "torch_dtype")}
    return {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": text,
        "tie_word_embeddings": True,
        "eos_token_id": base_cfg.get("eos_token_id"),
        "vision_config": None,
        "audio_config": None,
    }


def build_quant_variant(spec, models_dir):
    layout = spec["layout"]
    return mf.build_quant_variant(
        spec,
        models_dir,
        to_mlx=lambda hf: to_mlx(hf, layout),
        to_hf=lambda mlx, hf_names: from_mlx(mlx, hf_names, layout),
        router_weight="router.proj.weight",
        mlx_config=lambda cfg: mlx_config(cfg, layout),
    )


def check_loaded(deq_dir, expected, label):
    model, torch, _ = load_reference(deq_dir, False)
    sd = {k: v.float().cpu().numpy() for k, v in model.state_dict().items()}
    worst, checked = 0.0, 0
    for name, want in expected.items():
        if name in sd and sd[name].shape == want.shape:
            worst = max(worst, float(np.abs(sd[name] - want).max()))
            checked += 1
    print(f"[{label}] loaded dequantized weights: {checked} tensors checked, max diff {worst}", flush=True)
    if worst != 0.0 or checked < len(expected) // 2:
        raise SystemExit(f"[{label}] transformers changed the dequantized weights")
    del model


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="test/fixtures", help="fixtures root (default test/fixtures)")
    args = ap.parse_args()
    import transformers

    print(f"transformers {transformers.__version__}", flush=True)
    if not hasattr(transformers, "Gemma4ForCausalLM"):
        raise SystemExit("this transformers has no Gemma4ForCausalLM")
    models_dir = Path(args.out) / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    tok_dir = Path(tempfile.mkdtemp(prefix="tiny_tok_"))
    n_tok, special_ids = mf.build_tokenizer(tok_dir)
    vocab = (n_tok + 63) // 64 * 64
    prompts = mf.make_prompts(tok_dir) + [long_prompt(tok_dir)]
    print(f"tiny tokenizer: {n_tok} tokens, vocab {vocab}; prompts {[len(p['ids']) for p in prompts]}", flush=True)
    entries = []
    for spec in SPECS:
        try:
            build_gemma4(spec, models_dir / spec["name"], tok_dir, vocab, special_ids)
            compute_references(models_dir / spec["name"], prompts, spec["name"], conditional=spec.get("conditional", False))
            layout = "huggingface_conditional_generation" if spec.get("conditional") else "huggingface"
            entries.append(mf.index_entry(models_dir, spec["name"], spec["features"], layout))
        except SystemExit:
            raise
        except Exception as e:
            import traceback

            traceback.print_exc()
            print(f"[{spec['name']}] FAILED: {e!r}", flush=True)
            shutil.rmtree(models_dir / spec["name"], ignore_errors=True)
    for q in QUANT_SPECS:
        if not (models_dir / q["base"] / "config.json").exists():
            continue
        try:
            out_dir, deq_dir, hf_deq = build_quant_variant(q, models_dir)
            check_loaded(deq_dir, hf_deq, q["name"])
            compute_references(out_dir, prompts, q["name"], ref_dir=deq_dir)
            shutil.rmtree(deq_dir)
            base = next(s for s in SPECS if s["name"] == q["base"])
            entries.append(mf.index_entry(models_dir, q["name"], base["features"] + q["features"], q["layout"], q["base"]))
        except Exception as e:
            import traceback

            traceback.print_exc()
            print(f"[{q['name']}] FAILED: {e!r}", flush=True)
            shutil.rmtree(models_dir / q["name"], ignore_errors=True)
    (models_dir / "GEMMA4_INDEX.json").write_text(json.dumps({"fixtures": entries}, indent=2) + "\n")
    print(f"done: {[e['name'] for e in entries]}", flush=True)


if __name__ == "__main__":
    main()
