// npx tsx scripts/ship-dbs.ts [--spec FILE]... [--gpu ID]...: regenerates the shipped
// model-derived tuning DBs, autotune/db/<gpu>.json: what `chunkattn tune <spec> --gpu <gpu>
// --write shipped` writes, for every example spec (examples/*.ts) on every GPU of the table (or
// the ones named), over SHIPPED_SHAPES (cli/commands/tune.ts: 1, 4, 16 and 64 rows sharing 0,
// 1024 or 4096 tokens; dispatch serves the other buckets from the nearest tuned one). Each candidate is
// predicted by the model timer from its decode step counted on the emulator and its ptxas
// resources (autotune/counted-step.ts), so this needs g++ with the CUDA headers and nvcc.
// Counts are cached (<cache>/autotune/emu-counts/), so a rerun after an interruption resumes.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { StepCounts } from '../autotune/emu-counts.ts';
import { findGpu, GPU_IDS } from '../autotune/gpus.ts';
import { ModelTimer } from '../autotune/measure.ts';
import { loadModelParams } from '../autotune/model-params.ts';
import { tune } from '../autotune/tune.ts';
import { loadSpecsWithFlags } from '../cli/commands/compile.ts';
import { SHIPPED_SHAPES } from '../cli/commands/tune.ts';

const { values } = parseArgs({
  options: { spec: { type: 'string', multiple: true }, gpu: { type: 'string', multiple: true } },
});
const files =
  values.spec ??
  readdirSync('examples')
    .filter((f) => f.endsWith('.ts'))
    .sort()
    // The specs the shipped DBs lacked first: a cut-off run still covers them.
    .sort((a, b) => Number(a.startsWith('llama2')) - Number(b.startsWith('llama2')))
    .map((f) => join('examples', f));
const gpus = (values.gpu ?? [...GPU_IDS]).map((id) => findGpu(id));
const params = loadModelParams();

for (const file of files) {
  const [spec, ...more] = await loadSpecsWithFlags(file, {});
  if (!spec || more.length) throw new Error(`${file}: expected one spec`);
  // One emulation per step for every GPU whose split factors one head count reproduces.
  const memo = new Map<string, StepCounts>();
  for (const gpu of gpus) {
    const started = performance.now();
    const timer = new ModelTimer(gpu, spec, params, { countFor: gpus, memo });
    const report = await tune({
      spec,
      gpu: gpu.id,
      target: 'cuda',
      timer,
      shapes: SHIPPED_SHAPES,
      write: 'shipped',
      onProgress: (p) =>
        process.stderr.write(`\r${spec.name} on ${gpu.id}: ${p.timed}/${p.total} ${p.label}`.padEnd(100)),
    });
    timer.close();
    const failed = report.shapes.flatMap((s) => s.results.filter((r) => r.status !== 'timed'));
    for (const f of failed) process.stderr.write(`\n  ${f.candidate.id}: ${f.status}: ${f.reason}`);
    const w = report.written;
    console.log(
      `\n${spec.name} on ${gpu.id}: ${w?.added ?? 0} added, ${w?.replaced ?? 0} replaced, ${w?.droppedStale ?? 0} stale dropped ` +
        `(${((performance.now() - started) / 1000).toFixed(0)} s)`,
    );
  }
}
