"""Train rmlx's built-in default model: a small Qwen3 chat model with its own byte-level BPE tokenizer.

    bun scripts/gather_default_corpus.ts --out .corpus        # on a Debian machine
    python3 scripts/train_default_model.py --corpus .corpus --out build/default_hf --report report.json

Needs torch, transformers (5.x), tokenizers, numpy, and a GPU for the default time budget. Steps:

  1. a byte-level BPE tokenizer (4096 tokens, ChatML specials) trained on the training conversations;
  2. a Qwen3 model (tied embeddings) trained from scratch on the ChatML-rendered conversations, loss on the
     assistant turns only (their text and the closing <|im_end|>), bf16 autocast, AdamW, for --minutes;
  3. the model saved in the Hugging Face layout in bf16, with tokenizer.json, tokenizer_config.json (chat template,
     eos <|im_end|>) and generation_config.json;
  4. evaluation in float32: assistant-token loss on the held-out split and on a sample of the training split, for
     the bf16 weights and for each MLX affine quantization (bits, group size) simulated with scripts/mlx_quant_ref.py
     on exactly the tensors `rmlx convert -q` quantizes; the smallest one within 2% of the bf16 held-out loss is
     chosen;
  5. greedy answers (full forward per step, float32, eager attention) to fixed questions from the chosen model's
     dequantized weights: the reference rmlx's test compares with.

Everything random is seeded; the training length is set in wall-clock minutes, so a rerun on other hardware gives
a somewhat different model.
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mlx_quant_ref as mq  # noqa: E402

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 4096
MAX_TOKENS = 192
SEED = 1234

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MODEL = dict(
    hidden_size=256,
    intermediate_size=1024,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=32,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)

# (bits, group size) in order of size per weight: bits + 32/group for the bf16 scale and bias.
QUANT_CANDIDATES = [(2, 32), (3, 64), (3, 32), (4, 64), (4, 32), (5, 64), (6, 64), (8, 64)]
TOLERANCE = 0.02

QUESTIONS = [
    "What is the package ripgrep?",
    "What does the command ls do?",
    "Who are you?",
    "What is curl?",
    "Which section is vim in?",
    "What does the package git do?",
    "Hello",
    "What does the command tar do?",
]


def render(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def trained_spans(messages):
    """Character spans of the rendered text that carry loss: each assistant reply and its <|im_end|>."""
    spans, pos = [], 0
    for m in messages:
        head = f"<|im_start|>{m['role']}\n"
        start = pos + len(head)
        end = start + len(m["content"]) + len("<|im_end|>")
        if m["role"] == "assistant":
            spans.append((start, end))
        pos = end + 1
    return spans


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


# ---------------------------------------------------------------- tokenizer


def build_tokenizer(train, out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIALS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [m["content"] for conv in train for m in conv] + ["system", "user", "assistant"] * 100
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise SystemExit(f"tokenizer has {tok.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
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
        "model_max_length": MODEL["max_position_embeddings"],
        "chat_template": CHATML_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tok, ids


def encode(tok, convs):
    """Token ids and loss masks (uint8) per conversation, truncated to MAX_TOKENS."""
    texts = [render(c) for c in convs]
    encs = tok.encode_batch(texts, add_special_tokens=False)
    out = []
    for conv, enc in zip(convs, encs):
        ids = np.asarray(enc.ids[:MAX_TOKENS], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=np.uint8)
        spans = trained_spans(conv)
        for i, (a, b) in enumerate(enc.offsets[:MAX_TOKENS]):
            if any(s <= a and b <= e for s, e in spans):
                mask[i] = 1
        out.append((ids, mask))
    return out


# ---------------------------------------------------------------- batches


def batches(data, batch_size, rng, pad_id, shuffle=True):
    """(ids, targets) pairs of padded LongTensors; targets are -100 outside the loss mask. Sequences of similar
    length share a batch so that padding stays small."""
    import torch

    order = list(range(len(data)))
    if shuffle:
        rng.shuffle(order)
    chunk = batch_size * 64
    groups = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: len(data[i][0]))
        groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if shuffle:
        rng.shuffle(groups)
    for g in groups:
        width = max(len(data[i][0]) for i in g)
        ids = np.full((len(g), width), pad_id, dtype=np.int64)
        tgt = np.full((len(g), width), -100, dtype=np.int64)
        for r, i in enumerate(g):
            x, m = data[i]
            ids[r, : len(x)] = x
            # Position t predicts token t+1; it carries loss when token t+1 is in the mask.
            y = np.where(m[1:] == 1, x[1:], -100)
            tgt[r, : len(x) - 1] = y
        yield torch.from_numpy(ids), torch.from_numpy(tgt)


def mean_loss(model, data, dev, pad_id, batch_size=256):
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, tgt in batches(data, batch_size, None, pad_id, shuffle=False):
            ids, tgt = ids.to(dev), tgt.to(dev)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), tgt.view(-1), ignore_index=-100, reduction="sum")
            total += float(loss)
            count += int((tgt != -100).sum())
    return total / count


# ---------------------------------------------------------------- training


def train_model(train_data, heldout, ids, args, dev):
    import torch
    import torch.nn.functional as F
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(SEED)
    config = Qwen3Config(
        vocab_size=VOCAB_SIZE,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **MODEL,
    )
    model = Qwen3ForCausalLM(config).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=dev == "cuda",
    )
    budget = args.minutes * 60
    warmup = 200
    rng = random.Random(SEED)
    start = time.time()
    step, epoch, done = 0, 0, False
    last_print = start
    curve = []
    while not done:
        epoch += 1
        model.train()
        for x, y in batches(train_data, args.batch, rng, ids["<|endoftext|>"]):
            elapsed = time.time() - start
            progress = elapsed / budget
            if progress >= 1:
                done = True
                break
            # Linear warm-up, then cosine decay to a tenth over the wall-clock budget.
            lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
                logits = model(input_ids=x, use_cache=False).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if time.time() - last_print > 30:
                last_print = time.time()
                held = mean_loss(model, heldout, dev, ids["<|endoftext|>"])
                model.train()
                curve.append({"step": step, "seconds": round(time.time() - start), "train": float(loss), "heldout": held})
                print(f"step {step} epoch {epoch} {time.time() - start:.0f}s lr {lr:.2e} loss {float(loss):.3f} held-out {held:.3f}", flush=True)
    print(f"trained {step} steps, {epoch} epochs, {time.time() - start:.0f}s", flush=True)
    return model, n_params, {"steps": step, "epochs": epoch, "seconds": round(time.time() - start), "curve": curve}


# ---------------------------------------------------------------- evaluation


def quantizable(name, shape):
    """The tensors `rmlx convert -q` quantizes in a dense Qwen3: 2-D weights other than norms."""
    return name.endswith(".weight") and len(shape) == 2 and "norm" not in name


def load_float32(model_dir, dev):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    return model.to(dev).eval()


def set_quantized(model, float_state, bits, group_size):
    """Load float_state into model, every quantizable tensor replaced by its MLX affine round trip."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            w = float_state[name]
            if quantizable(name, w.shape) and w.shape[-1] % group_size == 0:
                packed, scales, biases = mq.affine_quantize(w, group_size, bits)
                w = mq.affine_dequantize(packed, scales, biases, group_size, bits)
            p.copy_(torch.from_numpy(np.ascontiguousarray(w)))


def greedy(model, tok, question, dev, eos_id, max_new=64):
    import torch

    prompt = render([{"role": "user", "content": question}]) + "<|im_start|>assistant\n"
    ids = tok.encode(prompt, add_special_tokens=False).ids
    seq, out, margins = list(ids), [], []
    with torch.no_grad():
        for _ in range(max_new):
            lg = model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0, -1].float()
            top = torch.topk(lg, 2)
            out.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
            seq.append(out[-1])
            if out[-1] == eos_id:
                break
    text = tok.decode([t for t in out if t != eos_id], skip_special_tokens=False)
    return {"question": question, "prompt_ids": ids, "tokens": out, "margins": margins, "text": text}


def check_chat_template(model_dir, tok):
    """transformers renders the saved chat template exactly as this script renders conversations."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is ripgrep?"}]
    text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    expect = render(msgs) + "<|im_start|>assistant\n"
    problems = []
    if text != expect:
        problems.append(f"chat template renders {text!r}, expected {expect!r}")
    if list(hf.encode(text, add_special_tokens=False)) != tok.encode(text, add_special_tokens=False).ids:
        problems.append("transformers and tokenizers disagree on the prompt's ids")
    for p in problems:
        print(f"WARNING: {p}", flush=True)
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path(".corpus"))
    ap.add_argument("--out", type=Path, required=True, help="Hugging Face model directory to write")
    ap.add_argument("--report", type=Path, required=True, help="JSON report: losses, quantization, greedy answers")
    ap.add_argument("--minutes", type=float, default=4.5, help="wall-clock training budget")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--prepare-only", action="store_true", help="tokenizer and data only (no torch needed)")
    args = ap.parse_args()

    t0 = time.time()
    train = load_jsonl(args.corpus / "train.jsonl")
    heldout_convs = load_jsonl(args.corpus / "heldout.jsonl")
    tok, ids = build_tokenizer(train, args.out)
    train_data = encode(tok, train)
    heldout = encode(tok, heldout_convs)
    n_tok = sum(len(x) for x, _ in train_data)
    n_loss = sum(int(m.sum()) for _, m in train_data)
    print(
        f"tokenizer + data {time.time() - t0:.0f}s: {len(train_data)} train conversations, {n_tok:,} tokens "
        f"({n_loss:,} with loss), {len(heldout)} held-out",
        flush=True,
    )
    if args.prepare_only:
        x, m = train_data[0]
        print(tok.decode(x.tolist(), skip_special_tokens=False))
        print("loss on:", repr(tok.decode(x[m == 1].tolist(), skip_special_tokens=False)))
        return

    import torch
    import transformers
    from transformers import GenerationConfig

    torch.backends.cuda.matmul.allow_tf32 = True
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, n_params, run = train_model(train_data, heldout, ids, args, dev)
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    model.save_pretrained(str(args.out))
    # Greedy unless a request asks otherwise: the model recites what it memorised. save_pretrained leaves
    # do_sample out (False is transformers' default), and servers read it from the file.
    gen_path = Path(args.out) / "generation_config.json"
    gen_path.write_text(json.dumps({"do_sample": False, **json.loads(gen_path.read_text())}, indent=2) + "\n")
    template_problems = check_chat_template(args.out, tok)
    del model

    # Reference computations in float32, no TF32.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = load_float32(args.out, dev)
    float_state = {n: p.detach().float().cpu().numpy() for n, p in model.named_parameters()}
    train_sample = random.Random(SEED).sample(train_data, min(4000, len(train_data)))
    pad = ids["<|endoftext|>"]
    evals = [{"bits": 16, "group_size": None, "heldout": mean_loss(model, heldout, dev, pad), "train": mean_loss(model, train_sample, dev, pad)}]
    print(f"bf16: held-out {evals[0]['heldout']:.4f}, train sample {evals[0]['train']:.4f}", flush=True)
    for bits, gs in QUANT_CANDIDATES:
        set_quantized(model, float_state, bits, gs)
        e = {"bits": bits, "group_size": gs, "heldout": mean_loss(model, heldout, dev, pad), "train": mean_loss(model, train_sample, dev, pad)}
        e["heldout_rel"] = e["heldout"] / evals[0]["heldout"] - 1
        evals.append(e)
        print(f"{bits}-bit g{gs}: held-out {e['heldout']:.4f} ({100 * e['heldout_rel']:+.2f}%), train sample {e['train']:.4f}", flush=True)
    chosen = next(e for e in evals[1:] if e["heldout_rel"] <= TOLERANCE)
    print(f"chosen: {chosen['bits']}-bit g{chosen['group_size']}", flush=True)

    answers = {}
    for label, (bits, gs) in [("bf16", (None, None)), ("quantized", (chosen["bits"], chosen["group_size"]))]:
        if bits is None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(torch.from_numpy(float_state[n]))
        else:
            set_quantized(model, float_state, bits, gs)
        answers[label] = [greedy(model, tok, q, dev, ids["<|im_end|>"]) for q in QUESTIONS]
        for a in answers[label]:
            print(f"[{label}] {a['question']} -> {a['text']!r} (min margin {min(a['margins']):.3g})", flush=True)

    report = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "parameters": n_params,
        "model": MODEL,
        "vocab_size": VOCAB_SIZE,
        "special_ids": ids,
        "corpus": {"train_conversations": len(train_data), "train_tokens": n_tok, "train_loss_tokens": n_loss, "heldout_conversations": len(heldout)},
        "training": run,
        "evaluation": evals,
        "template_problems": template_problems,
        "chosen": {"bits": chosen["bits"], "group_size": chosen["group_size"]},
        "reference": {
            "dtype": "float32",
            "attn_implementation": "eager",
            "greedy_rule": "argmax of the float32 logits, full forward each step, stop after <|im_end|> or 64 tokens",
            "weights": "bf16 checkpoint; quantized answers use the MLX affine round trip of every quantizable tensor, dequantized in float32",
        },
        "answers": answers,
    }
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
