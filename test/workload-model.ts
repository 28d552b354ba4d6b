// A random serving workload driven through `Attention`, with a naive model of every sequence's
// tokens and KV, checked against float64 attention at every decode step.
//
// A token's K/V is a pseudo-random function of (layer, the token's whole prefix), as in a real
// model, so sequences sharing a prefix agree on its KV by construction, whoever wrote it.

import { variantFunctions } from '../dsl/index.ts';
import type { DType, KernelSpec } from '../dsl/spec.ts';
import type { Attention } from '../runtime/attention.ts';
import { fromHost, toHost } from '../runtime/half.ts';
import { referenceDecode, relativeError, TOLERANCE } from '../runtime/reference.ts';

export class Rng {
  #state: number;
  constructor(readonly seed: number) {
    this.#state = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.#state;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state / 2 ** 32;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
}

function fnv(hash: number, token: number): number {
  let h = hash ^ (token & 0xffff);
  h = Math.imul(h, 0x01000193);
  h ^= token >>> 16;
  return Math.imul(h, 0x01000193) >>> 0;
}

/** Values of a dtype, exactly as the kernels will see them. */
function rounded(values: Float32Array, dtype: DType): Float32Array {
  return fromHost(toHost(values, dtype), dtype);
}

interface SeqModel {
  tokens: number[];
  hashes: number[];
}

export interface CheckResult {
  readonly steps: number;
  readonly maxError: number;
  readonly decodes: number;
}

export class WorkloadModel {
  readonly seqs = new Map<number, SeqModel>();
  readonly rowElems: number;
  readonly qElems: number;
  maxError = 0;
  decodes = 0;
  /** matchedTokens of the last insert. */
  lastMatched = 0;

  constructor(
    readonly attn: Attention,
    readonly spec: KernelSpec,
    readonly rng: Rng,
  ) {
    this.rowElems = spec.heads.kv * spec.headDim;
    this.qElems = spec.heads.q * spec.headDim;
  }

  /** K or V row of one token in one layer (already rounded to the KV dtype). */
  kvRow(layer: number, hash: number, which: 0 | 1): Float32Array {
    const rng = new Rng(hash ^ Math.imul(layer + 1, 0x85ebca6b) ^ (which ? 0x27d4eb2f : 0));
    const row = new Float32Array(this.rowElems);
    for (let i = 0; i < row.length; i++) row[i] = rng.next() * 2 - 1;
    return rounded(row, this.spec.dtype.kv);
  }

  /** K or V ([hashes.length, Hkv, D]) of tokens: host data in the KV dtype, or f32 values. */
  kvTokens(
    layer: number,
    hashes: readonly number[],
    which: 0 | 1,
    values = false,
  ): Float32Array | Uint16Array {
    const rows = this.#rows(layer, hashes, which);
    return values ? rows : this.#host(rows);
  }

  #rows(layer: number, hashes: readonly number[], which: 0 | 1): Float32Array {
    const out = new Float32Array(hashes.length * this.rowElems);
    for (const [i, h] of hashes.entries()) out.set(this.kvRow(layer, h, which), i * this.rowElems);
    return out;
  }

  #host(values: Float32Array) {
    return toHost(values, this.spec.dtype.kv);
  }

  insert(tokens: number[]): number {
    const { seq, matchedTokens } = this.attn.insert(tokens);
    this.lastMatched = matchedTokens;
    const hashes: number[] = [];
    tokens.reduce((h, t) => {
      const next = fnv(h, t);
      hashes.push(next);
      return next;
    }, 0x811c9dc5);
    for (let layer = 0; layer < this.attn.layers; layer++) {
      const fresh = hashes.slice(matchedTokens);
      if (fresh.length === 0) continue;
      this.attn.writeKV(
        layer,
        seq,
        matchedTokens,
        this.#host(this.#rows(layer, fresh, 0)),
        this.#host(this.#rows(layer, fresh, 1)),
      );
    }
    this.seqs.set(seq, { tokens: [...tokens], hashes });
    return seq;
  }

  fork(seq: number, n: number): number[] {
    const children = this.attn.fork(seq, n);
    const parent = this.seqs.get(seq)!;
    for (const child of children)
      this.seqs.set(child, { tokens: [...parent.tokens], hashes: [...parent.hashes] });
    return children;
  }

  release(seq: number): void {
    this.attn.release(seq);
    this.seqs.delete(seq);
  }

  /** One decode step over `seqs` (in that order): append, write KV, decode every layer, check. */
  step(seqs: number[]): void {
    const tokens = seqs.map(() => this.rng.int(50));
    this.attn.appendStep(seqs, tokens);
    seqs.forEach((seq, i) => {
      const model = this.seqs.get(seq)!;
      model.tokens.push(tokens[i]!);
      model.hashes.push(fnv(model.hashes.at(-1) ?? 0x811c9dc5, tokens[i]!));
    });
    const newHashes = seqs.map((s) => this.seqs.get(s)!.hashes.at(-1)!);
    const variant = variantFunctions(this.spec);
    for (let layer = 0; layer < this.attn.layers; layer++) {
      this.attn.writeDecodeKV(
        layer,
        this.#host(this.#rows(layer, newHashes, 0)),
        this.#host(this.#rows(layer, newHashes, 1)),
      );
      const q = new Float32Array(seqs.length * this.qElems);
      for (let i = 0; i < q.length; i++) q[i] = this.rng.next() * 2 - 1;
      const qRounded = rounded(q, this.spec.dtype.q);
      const out = poisoned(this.spec.dtype.out, seqs.length * this.qElems);
      this.attn.decode(layer, toHost(qRounded, this.spec.dtype.q), out);
      const rows = seqs.map((seq, i) => {
        const model = this.seqs.get(seq)!;
        return {
          seq,
          q: qRounded.subarray(i * this.qElems, (i + 1) * this.qElems),
          k: this.#rows(layer, model.hashes, 0),
          v: this.#rows(layer, model.hashes, 1),
          length: model.tokens.length,
        };
      });
      const shape = {
        qHeads: this.spec.heads.q,
        kvHeads: this.spec.heads.kv,
        headDim: this.spec.headDim,
        softmaxScale: this.spec.softmaxScale,
      };
      const reference = referenceDecode(shape, rows, variant);
      const got = fromHost(out, this.spec.dtype.out);
      const expected = new Float64Array(got.length);
      for (const [i, r] of reference.entries()) expected.set(r, i * this.qElems);
      const error = relativeError(got, expected);
      this.maxError = Math.max(this.maxError, error);
      this.decodes++;
      const tolerance = toleranceOf(this.spec);
      if (!(error <= tolerance))
        throw new Error(
          `layer ${layer}: relative error ${error} > ${tolerance} (seed ${this.rng.seed}, seqs ${seqs.join(',')}, lengths ${seqs.map((s) => this.seqs.get(s)!.tokens.length).join(',')})`,
        );
    }
  }
}

/**
 * Multi-token steps on top of WorkloadModel: extend (n tokens per sequence, then attend every
 * layer, checked against float64 attention with each query token's causal length), prefill of
 * an inserted prompt's unmatched suffix, and rollback of rejected tokens.
 */
export class MultiTokenModel extends WorkloadModel {
  attends = 0;

  /** Appends counts[i] random tokens to seqs[i], writes their K/V and attends every layer. */
  extendStep(seqs: number[], counts: number[]): void {
    const tokens = counts.map((n) => Array.from({ length: n }, () => this.rng.int(50)));
    this.attn.extend(seqs, tokens);
    seqs.forEach((seq, i) => {
      const model = this.seqs.get(seq)!;
      for (const token of tokens[i]!) {
        model.tokens.push(token);
        model.hashes.push(fnv(model.hashes.at(-1) ?? 0x811c9dc5, token));
      }
    });
    for (let layer = 0; layer < this.attn.layers; layer++) {
      const fresh = seqs.flatMap((seq, i) => this.seqs.get(seq)!.hashes.slice(-counts[i]!));
      this.attn.writeDecodeKV(layer, this.kvTokens(layer, fresh, 0), this.kvTokens(layer, fresh, 1));
      this.checkAttend(layer, seqs, counts, undefined);
    }
  }

  /** Inserts a prompt and attends its unmatched suffix (the prefill) in every layer. */
  prefill(tokens: number[]): number {
    const seq = this.insert(tokens);
    const n = tokens.length - this.lastMatched;
    for (let layer = 0; layer < this.attn.layers; layer++)
      this.checkAttend(layer, [seq], [n], { seqs: [seq], counts: [n] });
    return seq;
  }

  rollback(seq: number, n: number): void {
    this.attn.rollback(seq, n);
    const model = this.seqs.get(seq)!;
    model.tokens.length -= n;
    model.hashes.length -= n;
  }

  /** attend with fresh random q over the given rows, compared with float64 attention. */
  checkAttend(
    layer: number,
    seqs: number[],
    counts: number[],
    rows: { seqs: number[]; counts: number[] } | undefined,
  ): Float32Array {
    const total = counts.reduce((a, b) => a + b, 0);
    const q = new Float32Array(total * this.qElems);
    for (let i = 0; i < q.length; i++) q[i] = this.rng.next() * 2 - 1;
    const qRounded = rounded(q, this.spec.dtype.q);
    const out = poisoned(this.spec.dtype.out, total * this.qElems);
    this.attn.attend(layer, toHost(qRounded, this.spec.dtype.q), out, rows);
    const refRows = [];
    let io = 0;
    for (const [i, seq] of seqs.entries()) {
      const model = this.seqs.get(seq)!;
      const length = model.tokens.length;
      const k = this.kvTokens(layer, model.hashes, 0, true) as Float32Array;
      const v = this.kvTokens(layer, model.hashes, 1, true) as Float32Array;
      for (let j = 0; j < counts[i]!; j++, io++) {
        const causal = length - counts[i]! + j + 1;
        refRows.push({
          seq,
          q: qRounded.subarray(io * this.qElems, (io + 1) * this.qElems),
          k: k.subarray(0, causal * this.rowElems),
          v: v.subarray(0, causal * this.rowElems),
          length: causal,
        });
      }
    }
    const shape = {
      qHeads: this.spec.heads.q,
      kvHeads: this.spec.heads.kv,
      headDim: this.spec.headDim,
      softmaxScale: this.spec.softmaxScale,
    };
    const reference = referenceDecode(shape, refRows, variantFunctions(this.spec));
    const got = fromHost(out, this.spec.dtype.out);
    const expected = new Float64Array(got.length);
    for (const [i, r] of reference.entries()) expected.set(r, i * this.qElems);
    const error = relativeError(got, expected);
    this.maxError = Math.max(this.maxError, error);
    this.attends++;
    const tolerance = toleranceOf(this.spec);
    if (!(error <= tolerance))
      throw new Error(
        `layer ${layer}: attend relative error ${error} > ${tolerance} (seed ${this.rng.seed}, seqs ${seqs.join(',')}, counts ${counts.join(',')}, lengths ${seqs.map((s) => this.seqs.get(s)!.tokens.length).join(',')})`,
      );
    return got;
  }
}

/** Output filled with NaN, so an element the kernel never writes fails the comparison. */
export function poisoned(dtype: DType, length: number): Float32Array | Uint16Array {
  if (dtype === 'f32') return new Float32Array(length).fill(Number.NaN);
  return new Uint16Array(length).fill(dtype === 'f16' ? 0x7e00 : 0x7fc0);
}

function toleranceOf(spec: KernelSpec): number {
  const dtypes = [spec.dtype.q, spec.dtype.kv, spec.dtype.out];
  if (dtypes.includes('bf16')) return TOLERANCE.bf16;
  if (dtypes.includes('f16')) return TOLERANCE.f16;
  return TOLERANCE.f32;
}

/**
 * A random workload: prompts drawn from a few shared system prompts (nested: one extends
 * another) with random suffixes, forks, decode steps over all or some sequences, releases.
 */
export function runRandomWorkload(model: WorkloadModel, ops: number): void {
  const { rng } = model;
  const c = model.spec.chunkSize;
  const base = Array.from({ length: 2 * c + 3 }, () => rng.int(50));
  const systems = [[], base.slice(0, c - 1), base.slice(0, c), base.slice(0, c + 1), base];
  for (let op = 0; op < ops; op++) {
    const live = [...model.seqs.keys()];
    const choice = rng.next();
    if (live.length === 0 || (choice < 0.25 && live.length < 24)) {
      const suffix = Array.from({ length: rng.int(c + 2) }, () => rng.int(50));
      model.insert([...rng.pick(systems), ...suffix]);
    } else if (choice < 0.35) {
      model.fork(rng.pick(live), 1 + rng.int(3));
    } else if (choice < 0.45 && live.length > 1) {
      model.release(rng.pick(live));
    } else {
      const subset = rng.next() < 0.7 ? live : live.filter(() => rng.next() < 0.5);
      const order = (subset.length ? subset : live).sort(() => rng.next() - 0.5);
      model.step(order);
    }
  }
  model.attn.cache.validate();
}
