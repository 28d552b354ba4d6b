// f16 / bf16 <-> f32 on the host. The runtime passes f16 and bf16 tensors as Uint16Array bits;
// these convert (round-to-nearest-even) for callers that hold float data.

import type { DType } from '../dsl/spec.ts';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32ToBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  if ((bits & 0x7f800000) === 0x7f800000 && bits & 0x007fffff) return (bits >>> 16) | 0x40; // quiet NaN
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function bf16BitsToF32(bits: number): number {
  u32[0] = bits << 16;
  return f32[0]!;
}

export function f32ToF16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  let mantissa = bits & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 : 0);
  let e = exponent - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mantissa |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mantissa & ((1 << shift) - 1);
    let m = mantissa >>> shift;
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  let m = mantissa >>> 13;
  const rest = mantissa & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

export function f16BitsToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** Float data in a dtype's host representation: Float32Array for f32, else Uint16Array bits. */
export function toHost(values: ArrayLike<number>, dtype: DType): Float32Array | Uint16Array {
  if (dtype === 'f32') return Float32Array.from(values);
  const convert = dtype === 'f16' ? f32ToF16Bits : f32ToBf16Bits;
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = convert(values[i]!);
  return out;
}

/** The float values of host data in a dtype. */
export function fromHost(data: Float32Array | Uint16Array, dtype: DType): Float32Array {
  if (dtype === 'f32') {
    if (!(data instanceof Float32Array)) throw new TypeError('f32 data must be a Float32Array');
    return data;
  }
  const convert = dtype === 'f16' ? f16BitsToF32 : bf16BitsToF32;
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = convert(data[i]!);
  return out;
}
