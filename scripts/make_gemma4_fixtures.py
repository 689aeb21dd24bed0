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
    import transformers

    model, torch, dev = load_reference(ref_dir or model_dir, conditional)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    print(f"[{label}] reloaded: layer_types {cfg.layer_types}, rope {cfg.rope_parameters}", flush=True)
    top_k = getattr(cfg, "top_k_experts", None) if getattr(cfg, "enable_moe_block", False) else None
    gaps, handles = router_gap_hooks(model, top_k) if top_k else ([], [])
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
            for _ in range(mf.GREEDY_STEPS):
                lg = model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0, -1].float()
                top = torch.topk(lg, 2)
                greedy.append(int(top.indices[0]))
                margins.append(float(top.values[0] - top.values[1]))
                step_logits.append(lg.cpu().numpy())
                seq.append(greedy[-1])
            tensors[f"greedy_logits_{i}"] = mq.f32_tensor(np.stack(step_logits))
            gc = copy.deepcopy(model.generation_config)
            gc.eos_token_id = None
            gc.do_sample = False
            gc.max_new_tokens = mf.GREEDY_STEPS
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
            entry.update(logits_key=f"logits_{i}", greedy=greedy, greedy_margins=margins, greedy_logits_key=f"greedy_logits_{i}")
            out_prompts.append(entry)
            print(
                f"[{label}] prompt {i}: L={len(p['ids'])} logit std {float(logits.std()):.3f} max {float(logits.abs().max()):.3f} "
                f"greedy {greedy} min margin {min(margins):.4g}",
                flush=True,
            )
    for h in handles:
        h.remove()
    mq.write_safetensors(model_dir / "reference.safetensors", tensors)
    ref = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "reference_class": type(model).__name__,
        "reference_dtype": "float32",
        "attn_implementation": "eager",
        "vocab_size": cfg.vocab_size,
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

E4M3_MAX = 448.0


def e4m3_table():
    """Values of the 256 FP8 E4M3 codes (bias 7, no infinities, 0x7f/0xff NaN)."""
    vals = np.zeros(256, dtype=np.float64)
    for c in range(256):
        s = -1.0 if c & 0x80 else 1.0
        e = (c >> 3) & 0xF
        m = c & 0x7
        if e == 0xF and m == 0x7:
            vals[c] = np.nan
        elif e == 0:
            vals[c] = s * (m / 8.0) * 2.0**-6
        else:
            vals[c] = s * (1 + m / 8.0) * 2.0 ** (e - 7)
    return vals


E4M3 = e4m3_table()
E4M3_POS = E4M3[:0x7F]  # codes 0..126, increasing


def e4m3_encode(x):
    """Nearest E4M3 code (ties to the even code), saturating at 448; the sign kept for values that round to 0."""
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.clip(np.searchsorted(E4M3_POS, a, side="left"), 0, 126)
    lo = np.clip(hi - 1, 0, 126)
    dlo = np.abs(a - E4M3_POS[lo])
    dhi = np.abs(E4M3_POS[hi] - a)
    code = np.where(dlo < dhi, lo, np.where(dhi < dlo, hi, np.where(lo % 2 == 0, lo, hi)))
    return (code | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


def mxfp8_quantize(w, group_size=32):
    w = np.asarray(w, dtype=np.float32)
    g = w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)
    absmax = np.abs(g).max(axis=-1, keepdims=True)
    scale_bits = mq.e8m0_encode(absmax / E4M3_MAX)
    scale = mq.e8m0_decode(scale_bits)
    codes = e4m3_encode(g * (1.0 / scale.astype(np.float32)))
    codes = codes.reshape(*w.shape[:-1], w.shape[-1])
    packed = codes.reshape(*w.shape[:-1], w.shape[-1] // 4, 4).astype(np.uint32)
    words = packed[..., 0] | (packed[..., 1] << 8) | (packed[..., 2] << 16) | (packed[..., 3] << 24)
    return words.astype(np.uint32), scale_bits.reshape(*w.shape[:-1], w.shape[-1] // group_size).astype(np.uint8)


def mxfp8_dequantize(words, scale_bits, group_size=32):
    codes = np.stack([(words >> (8 * i)) & 0xFF for i in range(4)], axis=-1).reshape(*words.shape[:-1], -1)
    vals = E4M3[codes.astype(np.int64)].astype(np.float32)
    k = vals.shape[-1]
    scale = mq.e8m0_decode(scale_bits).astype(np.float32)
    g = vals.reshape(*vals.shape[:-1], k // group_size, group_size) * scale[..., None]
    return g.reshape(*vals.shape[:-1], k).astype(np.float32)


def to_mlx(hf, layout):
    """Hugging Face Gemma4ForCausalLM tensors (model.*) -> an MLX snapshot's names: mlx-lm's text model keeps
    model.*, mlx-vlm's multimodal wrapper nests it as language_model.model.*; fused experts split into switch_glu."""
    out = {}
    prefix = "language_model." if layout == "mlx_vlm" else ""
    for name, arr in hf.items():
        if name.endswith(".experts.gate_up_proj"):
            base = name[: -len(".gate_up_proj")]
            half = arr.shape[1] // 2
            out[f"{prefix}{base}.switch_glu.gate_proj.weight"] = arr[:, :half]
            out[f"{prefix}{base}.switch_glu.up_proj.weight"] = arr[:, half:]
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
            base = prefix + name[: -len(".gate_up_proj")]
            out[name] = np.concatenate(
                [mlx[f"{base}.switch_glu.gate_proj.weight"], mlx[f"{base}.switch_glu.up_proj.weight"]], axis=1
            )
        elif name.endswith(".experts.down_proj"):
            out[name] = mlx[f"{prefix}{name[: -len('.down_proj')]}.switch_glu.down_proj.weight"]
        else:
            out[name] = mlx[prefix + name]
    return out


def quantize_tensors(mlx_float, quant, overrides):
    tensors, deq = {}, {}
    for name, arr in mlx_float.items():
        path = name[: -len(".weight")] if name.endswith(".weight") else None
        params = overrides.get(path, quant) if path else None
        if params and mf.quantizable(name, arr, params["group_size"]):
            gs, bits, mode = params["group_size"], params["bits"], params.get("mode", "affine")
            if mode == "affine":
                packed, scales, biases = mq.affine_quantize(arr, gs, bits)
                tensors[f"{path}.scales"] = mq.bf16_tensor(scales)
                tensors[f"{path}.biases"] = mq.bf16_tensor(biases)
                deq[name] = mq.affine_dequantize(packed, scales, biases, gs, bits)
            elif mode == "mxfp8":
                packed, scale_bits = mxfp8_quantize(arr, gs)
                tensors[f"{path}.scales"] = mq.u8_tensor(scale_bits)
                deq[name] = mxfp8_dequantize(packed, scale_bits, gs)
            else:
                raise ValueError(f"mode {mode} not supported here")
            tensors[name] = mq.u32_tensor(packed)
        else:
            tensors[name] = mq.bf16_tensor(arr)
            deq[name] = arr
    return tensors, deq


def build_quant_variant(spec, models_dir):
    base_dir = models_dir / spec["base"]
    out_dir = models_dir / spec["name"]
    hf, _ = mq.read_safetensors(base_dir / "model.safetensors")
    mlx_float = to_mlx(hf, spec["layout"])
    overrides = {}
    if "router_override" in spec:
        for name in sorted(mlx_float):
            if name.endswith("router.proj.weight"):
                overrides[name[: -len(".weight")]] = dict(spec["router_override"])
    tensors, deq = quantize_tensors(mlx_float, spec["quantization"], overrides)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    n_params = int(sum(a.size for a in hf.values()))
    files = mf.write_mlx_weights(out_dir, tensors, 1, n_params)
    base_cfg = json.loads((base_dir / "config.json").read_text())
    qconf = dict(spec["quantization"])
    qconf.update(overrides)
    if spec["layout"] == "mlx_vlm":
        text = {k: v for k, v in base_cfg.items() if k not in ("architectures", "transformers_version", "dtype", "torch_dtype")}
        config = {
            "architectures": ["Gemma4ForConditionalGeneration"],
            "model_type": "gemma4",
            "text_config": text,
            "tie_word_embeddings": True,
            "eos_token_id": base_cfg.get("eos_token_id"),
            "vision_config": None,
            "audio_config": None,
        }
    else:
        config = dict(base_cfg)
    config["quantization"] = qconf
    config["quantization_config"] = copy.deepcopy(qconf)
    (out_dir / "config.json").write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (base_dir / f).exists():
            shutil.copy(base_dir / f, out_dir / f)
    print(f"[{spec['name']}] wrote {files}: {sorted(tensors)}; quantization {qconf}", flush=True)
    deq_dir = Path(tempfile.mkdtemp(prefix=f"{spec['name']}_deq_"))
    shutil.copy(base_dir / "config.json", deq_dir / "config.json")
    hf_deq = from_mlx(deq, list(hf), spec["layout"])
    mq.write_safetensors(deq_dir / "model.safetensors", {n: mq.f32_tensor(a) for n, a in hf_deq.items()}, {"format": "pt"})
    return out_dir, deq_dir, hf_deq


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


def index_entry(models_dir, name, features, layout, quantization=None, base=None):
    cfg = json.loads((models_dir / name / "config.json").read_text())
    e = {
        "name": name,
        "family": cfg["model_type"],
        "architecture": cfg["architectures"][0],
        "layout": layout,
        "dtype": "bfloat16",
        "quantization": quantization,
        "features": features,
    }
    if base:
        e["base"] = base
    return e


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
            entries.append(index_entry(models_dir, spec["name"], spec["features"], layout))
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
            cfg = json.loads((out_dir / "config.json").read_text())
            entries.append(index_entry(models_dir, q["name"], base["features"] + q["features"], q["layout"], cfg["quantization"], q["base"]))
        except Exception as e:
            import traceback

            traceback.print_exc()
            print(f"[{q['name']}] FAILED: {e!r}", flush=True)
            shutil.rmtree(models_dir / q["name"], ignore_errors=True)
    (models_dir / "GEMMA4_INDEX.json").write_text(json.dumps({"fixtures": entries}, indent=2) + "\n")
    print(f"done: {[e['name'] for e in entries]}", flush=True)


if __name__ == "__main__":
    main()
