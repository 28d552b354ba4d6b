// chunkattn inspect <spec.ts>: the normalized spec, the plan and cache key per target, and the
// compiler's resource table when the module is already built.

import { join } from 'node:path';
import Table from 'cli-table3';
import { cacheDir, planModule, readModule } from '../../codegen/index.ts';
import type { Output } from '../output.ts';
import { type CompileFlags, compileRequests, loadSpecsWithFlags } from './compile.ts';

export async function inspectCommand(file: string, flags: CompileFlags, out: Output): Promise<void> {
  const specs = await loadSpecsWithFlags(file, flags);
  const report = [];
  for (const request of compileRequests(specs, flags)) {
    const plan = await planModule(request.spec, {
      target: request.target,
      sanitize: request.sanitize,
      ...(request.archs && { archs: request.archs }),
    });
    const built = readModule(join(cacheDir(), plan.buildId), true);
    out.info(`== ${plan.name} → ${plan.target}${plan.archs.length ? ` (${plan.archs.join(', ')})` : ''}`);
    out.info(`key: ${plan.key}  (cache folder ${plan.buildId})`);
    out.info(
      `plan: ${JSON.stringify({ phase1: plan.phase1, tunables: plan.tunables, kernels: plan.kernels }, null, 2)}`,
    );
    if (built) {
      out.info(`built: ${built.dir} (${built.manifest.buildSeconds} s, ${built.manifest.builtAt})`);
      if (built.manifest.resources.length) {
        const table = new Table({
          head: ['kernel', 'arch', 'regs', 'smem B', 'stack B', 'spill st/ld B'],
          style: { head: [], border: [] },
        });
        for (const r of built.manifest.resources)
          table.push([
            r.symbol.length > 48 ? `${r.symbol.slice(0, 45)}...` : r.symbol,
            r.arch,
            r.registers,
            r.smemBytes,
            r.stackBytes,
            `${r.spillStoreBytes}/${r.spillLoadBytes}`,
          ]);
        out.info(table.toString());
      }
    } else {
      out.info('built: no (run `chunkattn compile` first)');
    }
    report.push({ plan, built: built ? { dir: built.dir, resources: built.manifest.resources } : null });
  }
  out.info(`spec${specs.length > 1 ? 's' : ''}:\n${JSON.stringify(specs, null, 2)}`);
  out.result({ specs, modules: report });
}
