// chunkattn compile <spec.ts>: builds every spec in the file for the asked targets.

import { resolve } from 'node:path';
import Table from 'cli-table3';
import { type BuiltModule, buildModule, buildTargetsOf, type Sanitizer } from '../../codegen/index.ts';
import { loadSpecs } from '../../dsl/index.ts';
import type { Arch, BuildTarget, KernelSpec } from '../../dsl/spec.ts';
import { UsageError } from '../exit-codes.ts';
import { parseArchs, parseBuildTargets, parseInteger, parseList } from '../options.ts';
import type { Output } from '../output.ts';

export interface SpecFlags {
  readonly headDim?: string;
  readonly chunkSize?: string;
}

export interface CompileFlags extends SpecFlags {
  readonly arch?: string;
  readonly target?: string;
  readonly sanitize?: string;
  readonly json?: boolean;
}

/** Loads the specs of a file with the retargeting flags applied (the DSL re-validates them). */
export async function loadSpecsWithFlags(file: string, flags: SpecFlags): Promise<KernelSpec[]> {
  const overrides = {
    ...(flags.headDim !== undefined && { headDim: parseInteger('--head-dim', flags.headDim) }),
    ...(flags.chunkSize !== undefined && { chunkSize: parseInteger('--chunk-size', flags.chunkSize) }),
  };
  return loadSpecs(resolve(file), overrides);
}

export interface CompileRequest {
  readonly spec: KernelSpec;
  readonly target: BuildTarget;
  readonly archs?: readonly Arch[];
  readonly sanitize: Sanitizer;
}

/** Which modules the flags ask for: --target wins; --arch alone means cuda; else the spec's targets. */
export function compileRequests(specs: readonly KernelSpec[], flags: CompileFlags): CompileRequest[] {
  const archs = flags.arch ? parseArchs(flags.arch) : undefined;
  const sanitize = flags.sanitize
    ? parseList('--sanitize', flags.sanitize, ['address', 'thread'] as const)[0]!
    : ('none' as const);
  return specs.flatMap((spec) => {
    const targets = flags.target
      ? parseBuildTargets(flags.target)
      : archs
        ? ['cuda' as const]
        : buildTargetsOf(spec.targets);
    if (targets.length === 0) throw new UsageError(`spec "${spec.name}" names no build target`);
    // A flag that no chosen target uses is a mistake, not something to ignore.
    if (archs && !targets.includes('cuda'))
      throw new UsageError(`--arch applies to the cuda target only; the targets are ${targets.join(', ')}`);
    if (sanitize !== 'none' && !targets.includes('emu'))
      throw new UsageError(
        `--sanitize applies to the emu target only; the targets are ${targets.join(', ')}`,
      );
    return targets.map((target) => ({
      spec,
      target,
      sanitize: target === 'emu' ? sanitize : 'none',
      ...(archs && target === 'cuda' && { archs }),
    }));
  });
}

function summarize(module: BuiltModule, seconds: number) {
  const { manifest } = module;
  const maxRegisters = Math.max(0, ...manifest.resources.map((r) => r.registers));
  const spillBytes = manifest.resources.reduce((sum, r) => sum + r.spillStoreBytes + r.spillLoadBytes, 0);
  return {
    name: manifest.name,
    target: manifest.target,
    archs: manifest.archs,
    key: manifest.key,
    cached: module.cached,
    seconds: Math.round(seconds * 1000) / 1000,
    dir: module.dir,
    library: module.libraryPath,
    maxRegisters,
    spillBytes,
    resources: manifest.resources,
  };
}

export async function compileCommand(file: string, flags: CompileFlags, out: Output): Promise<void> {
  const specs = await loadSpecsWithFlags(file, flags);
  const requests = compileRequests(specs, flags);
  const results = [];
  for (const request of requests) {
    // codegen announces each real build (and draws a spinner on a terminal) on stderr.
    const started = performance.now();
    const module = await buildModule(request.spec, {
      target: request.target,
      sanitize: request.sanitize,
      ...(request.archs && { archs: request.archs }),
    });
    results.push(summarize(module, (performance.now() - started) / 1000));
  }
  const table = new Table({
    head: ['spec', 'target', 'cache', 'seconds', 'max regs', 'spill B', 'key'],
    style: { head: [], border: [] },
  });
  for (const r of results)
    table.push([
      r.name,
      r.target === 'cuda' ? `cuda ${r.archs.join(',')}` : r.target,
      r.cached ? 'hit' : 'built',
      r.seconds.toFixed(3),
      r.target === 'cuda' ? String(r.maxRegisters) : '-',
      r.target === 'cuda' ? String(r.spillBytes) : '-',
      r.key,
    ]);
  out.info(table.toString());
  out.result({ modules: results });
}
