// bench build: time from spec to built module, with a cold cache and a warm one, per target.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildModule, setBuildProgress } from '../codegen/index.ts';
import type { BuildTarget } from '../dsl/spec.ts';
import { llama2_7b, llama3_8b, softcap_window } from '../generated/index.ts';
import type { BenchOptions, BenchReport } from './report.ts';

export async function runBuildBench(opts: BenchOptions): Promise<BenchReport> {
  // The example specs as generated/ ships them (examples/ itself is not part of the package).
  const specs = (opts.quick ? [llama3_8b] : [llama2_7b, llama3_8b, softcap_window]).map((g) => g.spec);
  const targets: BuildTarget[] = opts.quick ? ['cpu', 'cuda'] : ['cpu', 'emu', 'cuda'];
  const cache = mkdtempSync(join(tmpdir(), 'chunkattn-bench-build-'));
  const saved = process.env.CHUNKATTN_CACHE;
  process.env.CHUNKATTN_CACHE = cache;
  const rows: { spec: string; target: string; coldSeconds: number; warmMs: number }[] = [];
  // The report's own bar shows each build; codegen's spinner would draw over it.
  const savedProgress = setBuildProgress(null);
  try {
    const total = specs.length * targets.length;
    for (const spec of specs) {
      for (const target of targets) {
        opts.progress(rows.length, total, `${spec.name} → ${target}`);
        const archs = target === 'cuda' ? (['sm_80', 'sm_90a'] as const) : undefined;
        const options = { target, ...(archs && { archs }) };
        let started = performance.now();
        await buildModule(spec, options);
        const coldSeconds = (performance.now() - started) / 1000;
        started = performance.now();
        const warm = await buildModule(spec, options);
        const warmMs = performance.now() - started;
        if (!warm.cached) throw new Error(`second build of ${spec.name} → ${target} missed the cache`);
        rows.push({
          spec: spec.name,
          target: archs ? `cuda (${archs.join(',')})` : target,
          coldSeconds,
          warmMs,
        });
      }
    }
    opts.progress(total, total, 'done');
  } finally {
    setBuildProgress(savedProgress);
    if (saved === undefined) delete process.env.CHUNKATTN_CACHE;
    else process.env.CHUNKATTN_CACHE = saved;
    rmSync(cache, { recursive: true, force: true });
  }
  return {
    name: 'build',
    title: 'Spec → built module (cold: empty cache; warm: the same build again, a cache hit)',
    head: ['spec', 'target', 'cold s', 'warm ms', 'cold / warm'],
    rows: rows.map((r) => [
      r.spec,
      r.target,
      r.coldSeconds.toFixed(2),
      r.warmMs.toFixed(2),
      `${Math.round((r.coldSeconds * 1000) / r.warmMs)}×`,
    ]),
    notes: ['Warm builds hash the spec and read the manifest; nothing is rendered or compiled.'],
    json: { builds: rows },
    chart: {
      title: 'Cold build time by spec and target',
      unit: 'seconds',
      series: [
        {
          label: 'cold',
          values: rows.map((r) => ({ category: `${r.spec} ${r.target}`, value: r.coldSeconds })),
        },
      ],
    },
  };
}
