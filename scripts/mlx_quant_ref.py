"""Reference implementation, in numpy, of MLX's weight quantization formats.

Follows the formulas MLX documents and implements in its quantize kernels
(affine: per-group min/max with the edge snapped onto the grid; mxfp4: E8M0
shared scale and E2M1 elements), and MLX's packing: every row is one
little-endian bit stream, value i at stream bits [i*b, (i+1)*b), read back as
uint32 words. Also a minimal safetensors reader and writer, so that bf16 and
uint32 tensors can be handled without torch.

Run `python3 scripts/mlx_quant_ref.py` to execute the hand-checked self-test.
"""

import json
import struct
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- bfloat16


def bf16_bits(x):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    nan = np.isnan(np.asarray(x, dtype=np.float32))
    out = rounded.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def bf16_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_bf16(x):
    """Round float32 values to the nearest bfloat16, returned as float32."""
    return bf16_to_f32(bf16_bits(x))


# ---------------------------------------------------------------- bit packing


def pack_bits(q, bits):
    """Pack unsigned integers q[..., K] (each < 2**bits) into uint32 words [..., K*bits/32]."""
    q = np.asarray(q, dtype=np.uint32)
    k = q.shape[-1]
    if (k * bits) % 32:
        raise ValueError(f"row of {k} values at {bits} bits is not a whole number of uint32 words")
    shifts = np.arange(bits, dtype=np.uint32)
    stream = ((q[..., None] >> shifts) & 1).astype(np.uint8)  # [..., K, bits], LSB first
    stream = stream.reshape(*q.shape[:-1], k * bits)
    packed = np.packbits(stream, axis=-1, bitorder="little")  # bytes, stream bit 0 = byte 0 bit 0
    return np.ascontiguousarray(packed).view("<u4").astype(np.uint32)


def unpack_bits(words, bits, k):
    """Inverse of pack_bits: uint32 words [..., K*bits/32] -> values [..., K]."""
    words = np.ascontiguousarray(words, dtype="<u4")
    stream = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    stream = stream[..., : k * bits].reshape(*words.shape[:-1], k, bits).astype(np.uint32)
    return (stream << np.arange(bits, dtype=np.uint32)).sum(axis=-1).astype(np.uint32)


# ---------------------------------------------------------------- affine


def affine_quantize(w, group_size, bits):
    """MLX affine quantization of w[..., K] (float32 holding the weight's values).

    Returns (packed uint32 [..., K*bits/32], scales, biases), scales and biases as
    float32 already rounded to bfloat16, the dtype they are stored in. The grid is
    computed in float32 from the unrounded scale and bias, as MLX does.
    """
    w = np.asarray(w, dtype=np.float32)
    k = w.shape[-1]
    if k % group_size:
        raise ValueError(f"last dimension {k} is not a multiple of group size {group_size}")
    g = w.reshape(*w.shape[:-1], k // group_size, group_size)
    n_bins = np.float32((1 << bits) - 1)
    w_max = g.max(axis=-1)
    w_min = g.min(axis=-1)
    edge_is_min = np.abs(w_min) > np.abs(w_max)
    scale = np.maximum((w_max - w_min) / n_bins, np.float32(1e-7)).astype(np.float32)
    scale = np.where(edge_is_min, scale, -scale).astype(np.float32)
    edge = np.where(edge_is_min, w_min, w_max).astype(np.float32)
    q0 = np.rint(edge / scale).astype(np.float32)
    nonzero = q0 != 0
    scale = np.where(nonzero, edge / np.where(nonzero, q0, 1), scale).astype(np.float32)
    bias = np.where(nonzero, edge, 0).astype(np.float32)
    q = np.rint((g - bias[..., None]) / scale[..., None])
    q = np.clip(q, 0, n_bins).astype(np.uint32).reshape(w.shape)
    return pack_bits(q, bits), round_bf16(scale), round_bf16(bias)


def affine_dequantize(packed, scales, biases, group_size, bits):
    """float32 weights scale*q + bias, computed in float32 (as MLX's quantized matmuls do)."""
    k = packed.shape[-1] * 32 // bits
    q = unpack_bits(packed, bits, k).astype(np.float32)
    g = q.reshape(*q.shape[:-1], k // group_size, group_size)
    w = g * np.asarray(scales, np.float32)[..., None] + np.asarray(biases, np.float32)[..., None]
    return w.reshape(q.shape).astype(np.float32)


# ---------------------------------------------------------------- mxfp4

FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def e8m0_encode(x):
    """Nearest power of two as a biased exponent: round(log2 x) + 127, clamped to [0, 254]."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(divide="ignore"):
        le = np.log2(x)
    n = np.sign(le) * np.floor(np.abs(le) + 0.5)  # round half away from zero
    n = np.where(np.isneginf(le), -127, n)
    n = np.clip(n, -127, 127)
    return (n + 127).astype(np.uint8)


def e8m0_decode(s):
    return np.ldexp(np.float32(1), np.asarray(s, dtype=np.int32) - 127).astype(np.float32)


def fp4_e2m1_encode(x):
    """Round to the nearest E2M1 value, ties to the even mantissa (the thresholds MLX uses)."""
    x = np.asarray(x, dtype=np.float32)
    a = np.abs(x)
    code = np.zeros(x.shape, dtype=np.uint8)
    code = np.where(a > 0.25, 1, code)
    code = np.where(a >= 0.75, 2, code)
    code = np.where(a > 1.25, 3, code)
    code = np.where(a >= 1.75, 4, code)
    code = np.where(a > 2.5, 5, code)
    code = np.where(a >= 3.5, 6, code)
    code = np.where(a > 5.0, 7, code)
    return (code | np.where(np.signbit(x), 8, 0)).astype(np.uint8)


def mxfp4_quantize(w, group_size=32):
    """MLX mxfp4: per group of 32 an E8M0 scale 2^round(log2(absmax/6)), elements E2M1.

    Returns (packed uint32 [..., K/8], scales uint8 [..., K/32]).
    """
    if group_size != 32:
        raise ValueError("mxfp4 requires group size 32")
    w = np.asarray(w, dtype=np.float32)
    k = w.shape[-1]
    g = w.reshape(*w.shape[:-1], k // group_size, group_size)
    scale_bits = e8m0_encode(np.abs(g).max(axis=-1) / np.float32(6.0))
    scale = e8m0_decode(scale_bits)
    codes = fp4_e2m1_encode(g / scale[..., None]).reshape(w.shape)
    return pack_bits(codes, 4), scale_bits


def mxfp4_dequantize(packed, scale_bits, group_size=32):
    k = packed.shape[-1] * 8
    codes = unpack_bits(packed, 4, k)
    g = FP4_VALUES[codes].reshape(*codes.shape[:-1], k // group_size, group_size)
    return (g * e8m0_decode(scale_bits)[..., None]).reshape(codes.shape).astype(np.float32)


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
    """MLX mxfp8: per group of 32 an E8M0 scale from absmax/448, elements E4M3, four to a uint32 (lowest first).

    Returns (packed uint32 [..., K/4], scales uint8 [..., K/32]).
    """
    w = np.asarray(w, dtype=np.float32)
    g = w.reshape(*w.shape[:-1], w.shape[-1] // group_size, group_size)
    absmax = np.abs(g).max(axis=-1, keepdims=True)
    scale_bits = e8m0_encode(absmax / E4M3_MAX)
    scale = e8m0_decode(scale_bits)
    codes = e4m3_encode(g * (1.0 / scale.astype(np.float32)))
    codes = codes.reshape(*w.shape[:-1], w.shape[-1])
    packed = codes.reshape(*w.shape[:-1], w.shape[-1] // 4, 4).astype(np.uint32)
    words = packed[..., 0] | (packed[..., 1] << 8) | (packed[..., 2] << 16) | (packed[..., 3] << 24)
    return words.astype(np.uint32), scale_bits.reshape(*w.shape[:-1], w.shape[-1] // group_size).astype(np.uint8)


def mxfp8_dequantize(words, scale_bits, group_size=32):
    codes = np.stack([(words >> (8 * i)) & 0xFF for i in range(4)], axis=-1).reshape(*words.shape[:-1], -1)
    vals = E4M3[codes.astype(np.int64)].astype(np.float32)
    k = vals.shape[-1]
    scale = e8m0_decode(scale_bits).astype(np.float32)
    g = vals.reshape(*vals.shape[:-1], k // group_size, group_size) * scale[..., None]
    return g.reshape(*vals.shape[:-1], k).astype(np.float32)


# ---------------------------------------------------------------- safetensors

_DTYPES = {"F32": np.float32, "U32": np.uint32, "U8": np.uint8, "I32": np.int32, "I64": np.int64, "F16": np.float16}


def read_safetensors(path):
    """name -> float32 (for BF16/F16/F32) or integer numpy array; plus the metadata dict."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = {}
    for name, info in header.items():
        start, end = info["data_offsets"]
        buf = raw[base + start : base + end]
        if info["dtype"] == "BF16":
            arr = bf16_to_f32(np.frombuffer(buf, dtype="<u2"))
        else:
            arr = np.frombuffer(buf, dtype=np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")).copy()
            if arr.dtype == np.float16:
                arr = arr.astype(np.float32)
        out[name] = arr.reshape(info["shape"])
    return out, meta


class Tensor:
    """A tensor to write: dtype tag plus little-endian bytes."""

    def __init__(self, dtype, array):
        self.dtype = dtype
        self.shape = list(array.shape)
        self.data = np.ascontiguousarray(array).tobytes()


def bf16_tensor(x):
    return Tensor("BF16", bf16_bits(x).astype("<u2"))


def f32_tensor(x):
    return Tensor("F32", np.asarray(x, dtype="<f4"))


def u32_tensor(x):
    return Tensor("U32", np.asarray(x, dtype="<u4"))


def u8_tensor(x):
    return Tensor("U8", np.asarray(x, dtype=np.uint8))


def write_safetensors(path, tensors, metadata=None):
    """Write name -> Tensor in sorted name order, header padded to 8 bytes."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + len(t.data)]}
        offset += len(t.data)
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for name in names:
            f.write(tensors[name].data)


# ---------------------------------------------------------------- self-test


def _self_test():
    # 3-bit: value i sits at stream bits [3i, 3i+3): 1 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21.
    q = np.array([[1, 2, 3, 4, 5, 6, 7, 0] * 4], dtype=np.uint32)
    words = pack_bits(q, 3)
    assert words.shape == (1, 3)
    stream_24 = 1 + (2 << 3) + (3 << 6) + (4 << 9) + (5 << 12) + (6 << 15) + (7 << 18)
    # Four 24-bit chunks laid end to end: word 0 = chunk0 | low 8 bits of chunk1 << 24.
    assert int(words[0, 0]) == stream_24 | ((stream_24 & 0xFF) << 24)
    assert int(words[0, 1]) == (stream_24 >> 8) | ((stream_24 & 0xFFFF) << 16)
    assert int(words[0, 2]) == (stream_24 >> 16) | (stream_24 << 8) & 0xFFFFFFFF
    # 4-bit: 8 nibbles per word, value 0 lowest.
    assert int(pack_bits(np.arange(8, dtype=np.uint32)[None], 4)[0, 0]) == 0x76543210
    # 8-bit: bytes, lowest first.
    assert int(pack_bits(np.array([[1, 2, 3, 4]], np.uint32), 8)[0, 0]) == 0x04030201
    # 2-bit: 16 values per word.
    assert int(pack_bits(np.array([[3] + [0] * 15], np.uint32), 2)[0, 0]) == 3
    rng = np.random.default_rng(0)
    for bits in (2, 3, 4, 5, 6, 8):
        q = rng.integers(0, 1 << bits, size=(3, 64), dtype=np.uint32)
        assert np.array_equal(unpack_bits(pack_bits(q, bits), bits, 64), q), bits
        assert pack_bits(q, bits).shape == (3, 64 * bits // 32)

    # Affine, hand-computed: group [-1, 0, ..., 0, 0.5] at 2 bits: |min| > |max| so the edge is
    # min = -1, scale = 1.5/3 = 0.5, q0 = round(-1/0.5) = -2 != 0 so scale = -1/-2 = 0.5, bias = -1.
    g = np.zeros(32, np.float32)
    g[0], g[31] = -1.0, 0.5
    packed, s, b = affine_quantize(g[None], 32, 2)
    assert s[0, 0] == 0.5 and b[0, 0] == -1.0
    q = unpack_bits(packed, 2, 32)[0]
    assert q[0] == 0 and q[1] == 2 and q[31] == 3
    # Edge on the max side: [0, ..., 0, 2] at 4 bits: scale = -(2/15), q0 = round(2/(-2/15)) = -15,
    # scale = 2/-15, bias = 2: zero maps to q = 15, 2 maps to q = 0.
    g = np.zeros(64, np.float32)
    g[5] = 2.0
    packed, s, b = affine_quantize(g[None], 64, 4)
    assert b[0, 0] == 2.0 and abs(s[0, 0] - round_bf16(np.float32(-2 / 15))) == 0
    q = unpack_bits(packed, 4, 64)[0]
    assert q[5] == 0 and q[0] == 15
    w = rng.normal(0, 0.1, size=(8, 128)).astype(np.float32)
    for bits in (2, 3, 4, 5, 6, 8):
        p, s, b = affine_quantize(w, 32, bits)
        err = np.abs(affine_dequantize(p, s, b, 32, bits) - w).max()
        step = np.abs(s).max()
        # Loose bound: clipping at the far edge and bf16-rounded scale and bias add to half a step.
        assert err <= 2 * step + 1e-3, (bits, err, step)

    # mxfp4, hand-computed: absmax 3 -> 3/6 = 0.5 -> 2^-1 -> E8M0 126; 3 / 0.5 = 6 -> code 7;
    # 0.3 / 0.5 = 0.6 -> 0.5 (code 1); -0.2 / 0.5 = -0.4 -> -0.5 (code 9); 0.125/0.5 = 0.25 -> 0.
    g = np.zeros(32, np.float32)
    g[0], g[1], g[2], g[3] = 3.0, 0.3, -0.2, 0.125
    packed, sb = mxfp4_quantize(g[None])
    assert sb[0, 0] == 126
    codes = unpack_bits(packed, 4, 32)[0]
    assert list(codes[:4]) == [7, 1, 9, 0]
    assert np.allclose(mxfp4_dequantize(packed, sb)[0, :4], [3.0, 0.25, -0.25, 0.0])
    assert e8m0_encode(np.float32(0.0)) == 0
    # Ties: 0.75 -> 1.0, 1.25 -> 1.0, 2.5 -> 2, 5 -> 4.
    assert list(fp4_e2m1_encode(np.array([0.75, 1.25, 2.5, 5.0, -6.5], np.float32))) == [2, 2, 4, 6, 15]

    assert bf16_bits(np.float32(1.0)) == 0x3F80
    assert bf16_bits(np.array([1.00390625], np.float32))[0] == 0x3F80  # tie rounds to even
    assert bf16_bits(np.array([1.01171875], np.float32))[0] == 0x3F82  # tie rounds up to even
    print("mlx_quant_ref self-test passed")


if __name__ == "__main__":
    _self_test()
