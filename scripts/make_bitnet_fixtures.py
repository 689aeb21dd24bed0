"""Reference fixtures of ternary models, built with transformers.

    TORCHDYNAMO_DISABLE=1 python3 scripts/make_bitnet_fixtures.py --out test/fixtures

Writes models/bitnet/<name>/ and models/bitnet/INDEX.json, with the tiny ChatML tokenizer of make_fixtures.py and
float32 references (make_fixtures.py's write_references) for its chat and plain prompts and a long one:

- bitnet_float: BitNetForCausalLM with no quantization_config (plain Linear layers, bf16).
- bitnet_autobitlinear: the same model's linears ternarised (absmean per tensor) and packed as transformers'
  pack_weights does (uint8 [out/4, in], four output blocks per byte, code = t + 1), weight_scale = mean|W| that
  AutoBitLinear multiplies by; quantization_config linear_class autobitlinear, quantization_mode offline.
- bitnet_bitlinear: the same codes with weight_scale = 1/mean|W|, which BitLinear divides by (int8 activations).
- bitnet_online: the bf16 master weights with quantization_mode online (transformers ternarises them at run time).
- bitnet_mlx: bitnet_autobitlinear as mlx-lm saves it (same tensors, safetensors metadata format mlx, an index);
  its reference is bitnet_autobitlinear's.
- qwen3_2bit_g128: a Qwen3 in MLX affine 2-bit, group 128, with f16 scales and biases and ternary values
  (scale * t, t in {-1, 0, 1}: codes t + 1, bias = -scale), as the Ternary Bonsai checkpoints store it; the
  reference runs on the exactly dequantized weights (scale * code + bias in f32).

Every reference model is what from_pretrained loads (dtype float32, eager attention). TORCHDYNAMO_DISABLE keeps
transformers' torch.compile'd bitnet helpers eager, so the references are plain float32 torch arithmetic.
"""

import argparse
import inspect
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import mlx_quant_ref as mq  # noqa: E402

LONG_TOKENS = 320

BITNET = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    hidden_act="relu2",
    tie_word_embeddings=True,
)

QWEN3 = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    tie_word_embeddings=False,
)

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_linear(name):
    return name.endswith(".weight") and name.split(".")[-2] in LINEARS


def f16_tensor(x):
    return mq.Tensor("F16", np.asarray(x, dtype="<f2"))


def round_f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def ternarise(w):
    """transformers' WeightQuant in float32: s = 1/max(mean|W|, 1e-5), t = clamp(round(W*s), -1, 1)."""
    import torch

    x = torch.from_numpy(np.asarray(w, dtype=np.float32))
    s = 1.0 / x.abs().mean().clamp(min=1e-5)
    t = (x * s).round().clamp(-1, 1)
    return t.numpy().astype(np.int8), float(s)


def pack_ternary(t):
    """int8 [out, in] in {-1, 0, 1} -> uint8 [out/4, in]: byte (r, c) holds rows r + i*out/4 in bits 2i..2i+1."""
    out = t.shape[0]
    if out % 4:
        raise ValueError(f"{out} rows do not pack four to a byte")
    rows = out // 4
    codes = (t.astype(np.int16) + 1).astype(np.uint8)
    packed = np.zeros((rows, t.shape[1]), dtype=np.uint8)
    for i in range(4):
        packed |= codes[i * rows : (i + 1) * rows] << (2 * i)
    return packed


def bitnet_float_model(tok_dir, vocab, special_ids, out_dir, seed):
    import transformers

    torch, _ = mf.torch_setup()
    config = transformers.BitNetConfig(
        **BITNET, vocab_size=vocab, bos_token_id=None, eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = transformers.BitNetForCausalLM(config).float()
    mf.init_weights(model, seed, False)
    model = model.to(torch.bfloat16)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    copy_tokenizer(tok_dir, out_dir)
    print(f"[bitnet_float] config.json: {(out_dir / 'config.json').read_text()}", flush=True)
    return out_dir


def copy_tokenizer(tok_dir, out_dir):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tok_dir / f, out_dir / f)


def write_bitnet_variant(float_dir, out_dir, qconf, packed, scale_of, metadata, shards=1):
    """The float model's tensors with each linear packed (packed=True: uint8 + bf16 weight_scale = scale_of(s)) or
    kept as bf16 master weights, and config.json's quantization_config = qconf."""
    hf, _ = mq.read_safetensors(float_dir / "model.safetensors")
    tensors, ternary = {}, {}
    for name, arr in hf.items():
        if packed and is_linear(name):
            t, s = ternarise(arr)
            path = name[: -len(".weight")]
            tensors[name] = mq.u8_tensor(pack_ternary(t))
            tensors[f"{path}.weight_scale"] = mq.bf16_tensor(np.array([scale_of(s)], dtype=np.float32))
            ternary[name] = (t, s)
            if qconf.get("use_rms_norm"):
                rng = np.random.default_rng(len(tensors))
                tensors[f"{path}.rms_norm.weight"] = mq.bf16_tensor(1.0 + mf.NORM_STD * rng.standard_normal(arr.shape[1]))
        else:
            # the float tensors of the ternary forms are stored as f32 (holding the float model's bf16 values)
            tensors[name] = mq.f32_tensor(arr)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    if shards == 1:
        mq.write_safetensors(out_dir / "model.safetensors", tensors, metadata)
    else:
        mf.write_mlx_weights(out_dir, tensors, shards, int(sum(a.size for a in hf.values())))
    cfg = json.loads((float_dir / "config.json").read_text())
    cfg["quantization_config"] = qconf
    cfg["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (float_dir / f).exists():
            shutil.copy(float_dir / f, out_dir / f)
    return ternary


def bitnet_loader(ternary, scale_of, label, notes):
    """mf.load_reference_model for a packed checkpoint: from_pretrained, then the layer classes and the unpacked
    codes checked against ours. Should the loader not unpack AutoBitLinear weights, they are set from our codes
    (and weight_scale from ours) and `notes` says so; the forward is transformers' either way."""
    plain = mf.load_reference_model

    def load(model_dir):
        model, torch, dev = plain(model_dir)
        from transformers.integrations import bitnet as tb

        classes = sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith(("q_proj", "lm_head"))})
        print(f"[{label}] layer classes {classes}", flush=True)
        worst, fixed = 0.0, 0
        for name, (t, s) in ternary.items():
            mod = model.get_submodule(name[: -len(".weight")])
            w = mod.weight
            want = torch.from_numpy(t.astype(np.float32)).to(w.device)
            got = tb.unpack_weights(w, dtype=torch.float32) if w.dtype == torch.uint8 else w.float()
            ws = torch.tensor([float(np.asarray(mq.round_bf16(np.float32(scale_of(s)))).reshape(-1)[0])], dtype=torch.float32, device=w.device)
            ok = got.shape == want.shape and bool((got == want).all()) and bool((mod.weight_scale.float() == ws).all())
            if not ok and w.dtype != torch.uint8:
                with torch.no_grad():
                    mod.weight = torch.nn.Parameter(want.to(w.dtype), requires_grad=False)
                    mod.weight_scale = ws.to(mod.weight_scale.dtype)
                fixed += 1
            elif not ok:
                worst = 1.0
            norm = getattr(mod, "rms_norm", None)
            if norm is not None and bool((norm.weight == 1).all()):
                raise SystemExit(f"[{label}] {name}: the linear's rms_norm weight was not loaded")
        print(f"[{label}] loaded ternary codes: mismatches {worst}, modules set from our codes {fixed}", flush=True)
        if worst:
            raise SystemExit(f"[{label}] transformers did not load the ternary weights we wrote")
        if fixed:
            notes.append(f"{fixed} AutoBitLinear weights set from the packed codes after from_pretrained")
        return model, torch, dev

    return load


def quantize_ternary_affine(w, group_size):
    """Ternary values in MLX affine 2-bit: per group scale = f16(mean|w|), t = clamp(round(w/scale), -1, 1),
    codes t + 1, bias = -scale. Returns codes, f16-rounded scales and biases, and the exact dequantization."""
    g = np.asarray(w, dtype=np.float32).reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)
    scale = round_f16(np.maximum(np.abs(g).mean(axis=-1), 1e-4))
    t = np.clip(np.rint(g / scale[..., None]), -1, 1)
    codes = (t + 1).astype(np.uint32).reshape(w.shape)
    bias = -scale
    deq = (scale[..., None] * (t + 1) + bias[..., None]).astype(np.float32).reshape(w.shape)
    return codes, scale, bias, deq


def build_qwen3_2bit(tok_dir, vocab, special_ids, root, seed):
    import transformers

    torch, _ = mf.torch_setup()
    name = "qwen3_2bit_g128"
    config = transformers.Qwen3Config(
        **QWEN3, vocab_size=vocab, bos_token_id=None, eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(config).float()
    mf.init_weights(model, seed, False)
    model = model.to(torch.float16)
    float_dir = Path(tempfile.mkdtemp(prefix="qwen3_f16_"))
    model.save_pretrained(str(float_dir))
    hf, _ = mq.read_safetensors(float_dir / "model.safetensors")
    out_dir = root / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    tensors, deq = {}, {}
    for n, arr in hf.items():
        if n.endswith(".weight") and arr.ndim == 2:
            codes, scale, bias, d = quantize_ternary_affine(arr, 128)
            path = n[: -len(".weight")]
            tensors[n] = mq.u32_tensor(mq.pack_bits(codes, 2))
            tensors[f"{path}.scales"] = f16_tensor(scale)
            tensors[f"{path}.biases"] = f16_tensor(bias)
            deq[n] = d
        else:
            tensors[n] = f16_tensor(arr)
            deq[n] = arr
    mq.write_safetensors(out_dir / "model.safetensors", tensors, {"format": "mlx"})
    cfg = json.loads((float_dir / "config.json").read_text())
    q = {"group_size": 128, "bits": 2, "mode": "affine"}
    cfg["quantization"] = q
    cfg["quantization_config"] = dict(q)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    for f in ("generation_config.json",):
        if (float_dir / f).exists():
            shutil.copy(float_dir / f, out_dir / f)
    copy_tokenizer(tok_dir, out_dir)
    deq_dir = Path(tempfile.mkdtemp(prefix="qwen3_2bit_deq_"))
    shutil.copy(float_dir / "config.json", deq_dir / "config.json")
    mq.write_safetensors(deq_dir / "model.safetensors", {n: mq.f32_tensor(a) for n, a in deq.items()}, {"format": "pt"})
    print(f"[{name}] config.json: {(out_dir / 'config.json').read_text()}", flush=True)
    return out_dir, deq_dir, deq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="test/fixtures")
    ap.add_argument("--sources", default="", help="folder to copy transformers' bitnet sources into, for reading")
    args = ap.parse_args()
    import torch
    import transformers

    print(f"transformers {transformers.__version__} torch {torch.__version__} cuda {torch.cuda.is_available()}")
    if args.sources:
        src = Path(args.sources)
        src.mkdir(parents=True, exist_ok=True)
        from transformers.integrations import bitnet as tb
        from transformers.models.bitnet import modeling_bitnet

        mods = [tb, modeling_bitnet]
        try:
            from transformers.quantizers import quantizer_bitnet

            mods.append(quantizer_bitnet)
        except Exception as e:
            print(f"no quantizer_bitnet: {e!r}")
        for m in mods:
            (src / (m.__name__ + ".py")).write_text(inspect.getsource(m))
        (src / "BitNetQuantConfig.py").write_text(inspect.getsource(transformers.BitNetQuantConfig))

    root = Path(args.out) / "models" / "bitnet"
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

    entries = []

    def entry(name, features, layout, quant=None, reference_of=None):
        cfg = json.loads((root / name / "config.json").read_text())
        e = {"name": name, "family": cfg["model_type"], "architecture": cfg["architectures"][0], "layout": layout,
             "quantization": quant or cfg.get("quantization_config"), "features": features}
        if reference_of:
            e["reference_of"] = reference_of
        entries.append(e)

    def attempt(label, fn):
        try:
            fn()
        except BaseException as e:  # one broken form must not lose the others
            import traceback

            traceback.print_exc()
            print(f"[{label}] FAILED: {e!r}", flush=True)
            if (root / label).exists():
                shutil.rmtree(root / label)

    float_dir = root / "bitnet_float"

    def do_float():
        bitnet_float_model(tok_dir, vocab, special_ids, float_dir, 21)
        mf.compute_references(float_dir, prompts, "bitnet_float")
        entry("bitnet_float", ["sub_norms", "relu2", "tied_embeddings", "no_quantization_config"], "huggingface")

    attempt("bitnet_float", do_float)
    if not (float_dir / "reference.json").exists():
        raise SystemExit("the float BitNet model failed; nothing else can be built")

    forms = [
        ("bitnet_autobitlinear", {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
         True, lambda s: 1.0 / s, ["packed_ternary", "weight_scale_multiplies", "int8_fake_quant_activations"]),
        ("bitnet_bitlinear", {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline"},
         True, lambda s: s, ["packed_ternary", "weight_scale_divides", "int8_activations"]),
        ("bitnet_online", {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"},
         False, None, ["master_weights", "online_absmean_ternary", "int8_fake_quant_activations"]),
        ("bitnet_rms_norm", {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline",
                             "use_rms_norm": True, "rms_norm_eps": 1e-5},
         True, lambda s: 1.0 / s, ["packed_ternary", "weight_scale_multiplies", "rms_norm_inside_linears"]),
    ]
    for name, qconf, packed, scale_of, features in forms:
        def do_form(name=name, qconf=qconf, packed=packed, scale_of=scale_of, features=features):
            ternary = write_bitnet_variant(float_dir, root / name, qconf, packed, scale_of, {"format": "pt"})
            plain = mf.load_reference_model
            notes = []
            if packed:
                mf.load_reference_model = bitnet_loader(ternary, scale_of, name, notes)
            try:
                mf.compute_references(root / name, prompts, name)
            finally:
                mf.load_reference_model = plain
            if notes:
                ref_path = root / name / "reference.json"
                ref = json.loads(ref_path.read_text())
                ref["notes"] = notes
                ref_path.write_text(json.dumps(ref, indent=1) + "\n")
            entry(name, features, "huggingface")

        attempt(name, do_form)

    def do_mlx():
        src = root / "bitnet_autobitlinear"
        if not (src / "reference.json").exists():
            raise RuntimeError("bitnet_autobitlinear failed")
        qconf = json.loads((src / "config.json").read_text())["quantization_config"]
        write_bitnet_variant(float_dir, root / "bitnet_mlx", qconf, True, lambda s: 1.0 / s, {"format": "mlx"}, shards=2)
        entry("bitnet_mlx", ["packed_ternary", "mlx_snapshot", "sharded"], "mlx", reference_of="bitnet_autobitlinear")

    attempt("bitnet_mlx", do_mlx)

    def do_qwen3():
        out_dir, deq_dir, deq = build_qwen3_2bit(tok_dir, vocab, special_ids, root, 22)
        mf.check_loaded(deq_dir, deq, "qwen3_2bit_g128")
        mf.compute_references(out_dir, prompts, "qwen3_2bit_g128", dequant_dir=deq_dir)
        shutil.rmtree(deq_dir)
        entry("qwen3_2bit_g128", ["affine_2bit_g128", "f16_scales", "ternary_values", "quantized_embedding",
                                  "quantized_lm_head", "untied_lm_head"], "mlx",
              quant=json.loads((out_dir / "config.json").read_text())["quantization"])

    attempt("qwen3_2bit_g128", do_qwen3)

    index = {
        "prompts": [{"kind": p["kind"], "length": len(p["ids"])} for p in prompts],
        "greedy_steps": mf.GREEDY_STEPS,
        "transformers_version": transformers.__version__,
        "fixtures": entries,
    }
    (root / "INDEX.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {[e['name'] for e in entries]}", flush=True)


if __name__ == "__main__":
    main()
