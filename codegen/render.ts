// KernelPlan → source text, through handlebars. Templates only instantiate: constants, the
// variant functions and the ABI one-liners; the kernels themselves live in templates/include.

import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import Handlebars from 'handlebars';
import type { DType } from '../dsl/spec.ts';
import { TEMPLATES_DIR } from './cache-key.ts';
import { MANIFEST_ABI } from './manifest.ts';
import { type KernelPlan, narrowPhase1 } from './plan.ts';
import { TARGET_TUNABLES } from './target-tunables.ts';

export interface RenderedModule {
  /** File name inside the module folder: kernel.cu (cuda, emu) or kernel.cpp (cpu). */
  readonly fileName: string;
  readonly source: string;
}

const CUDA_TYPES: Record<DType, string> = { f16: 'ca::f16', bf16: 'ca::bf16', f32: 'float' };
const CPU_TYPES: Record<DType, string> = { f16: 'ca::cpu::f16', bf16: 'ca::cpu::bf16', f32: 'float' };

let engine: typeof Handlebars | undefined;
const compiled = new Map<string, Handlebars.TemplateDelegate>();

function template(name: string): Handlebars.TemplateDelegate {
  if (!engine) {
    engine = Handlebars.create();
    const partials = join(TEMPLATES_DIR, 'partials');
    for (const file of readdirSync(partials))
      engine.registerPartial(basename(file, '.hbs'), readFileSync(join(partials, file), 'utf8'));
  }
  let fn = compiled.get(name);
  if (!fn) {
    // noEscape: this is C++, not HTML; strict: a missing field is an error, never empty text.
    fn = engine.compile(readFileSync(join(TEMPLATES_DIR, name), 'utf8'), { noEscape: true, strict: true });
    compiled.set(name, fn);
  }
  return fn;
}

/** The JSON ca_info() returns: what the addon needs to validate calls without the spec. */
export function moduleInfo(plan: KernelPlan): Record<string, unknown> {
  const { spec } = plan;
  return {
    abi: MANIFEST_ABI,
    name: spec.name,
    key: plan.key,
    target: plan.target,
    archs: plan.archs,
    qHeads: spec.heads.q,
    kvHeads: spec.heads.kv,
    headDim: spec.headDim,
    chunkSize: spec.chunkSize,
    dtype: spec.dtype,
    numParams: spec.params.length,
    phase1: plan.phase1,
    sanitize: plan.sanitize,
    compilerVersion: plan.compilerVersion,
  };
}

/**
 * Where a score/mask function was written, for a C++ comment. The file name comes from the spec,
 * which may be stored data, so only path characters reach the source: nothing else can be
 * injected into generated code, even inside a comment.
 */
function locComment(loc: { file: string; line: number; column: number } | undefined): string {
  if (!loc) return '';
  return `${loc.file.replace(/[^\w./@+-]/g, '_').slice(0, 200)}:${loc.line}:${loc.column}`;
}

export function render(plan: KernelPlan): RenderedModule {
  const isCpu = plan.target === 'cpu';
  const types = isCpu ? CPU_TYPES : CUDA_TYPES;
  const infoJson = JSON.stringify(moduleInfo(plan));
  const context = {
    compilerVersion: plan.compilerVersion,
    key: plan.key,
    target: plan.target,
    archs: plan.archs,
    narrowPhase1: narrowPhase1(plan.archs),
    spec: plan.spec,
    variantLocs: { scoreMod: locComment(plan.spec.scoreMod?.loc), mask: locComment(plan.spec.mask?.loc) },
    targetMacro: plan.target.toUpperCase(),
    types: { q: types[plan.spec.dtype.q], kv: types[plan.spec.dtype.kv], out: types[plan.spec.dtype.out] },
    infoJsonOpen: infoJson.slice(0, -1),
    tunables: Object.entries(plan.tunables).map(([name, value]) => {
      const integer = Number.isInteger(value) && Math.abs(value) < 2 ** 31;
      return { name, type: integer ? 'int' : 'double', value: String(value) };
    }),
    infoComputed: isCpu
      ? // What the kernel reads (decode.h's Tune<Cfg>), so a test sees the rendered values arrive.
        TARGET_TUNABLES.cpu.map((t) => ({
          name: `tuned_${t.name}`,
          expr: `ca::cpu::Tune<Cfg>::T::k_${t.name}`,
        }))
      : [
          { name: 'smemBytes', expr: 'ca::Phase2Plan<Cfg>::kSmemBytes' },
          {
            name: 'phase1SmemBytes',
            expr: 'ca::Phase1PlanOf<Cfg, Variant, false>::kSmemBytes',
          },
        ],
  };
  return isCpu
    ? { fileName: 'kernel.cpp', source: template('module_cpu.cpp.hbs')(context) }
    : { fileName: 'kernel.cu', source: template('module_cuda.cu.hbs')(context) };
}
