// chunkattn doctor: what this machine can build and run.

import { existsSync, readdirSync } from 'node:fs';
import { execa } from 'execa';
import { cacheDir, findToolchain, PACKAGE_VERSION } from '../../codegen/index.ts';
import { ARCHS } from '../../dsl/spec.ts';
import { nativeAbiVersion } from '../../runtime/native-module.ts';
import { nativeAddonStatus } from '../../runtime/native-status.ts';
import type { Output } from '../output.ts';

async function gpuPresent(): Promise<string> {
  if (!existsSync('/dev/nvidia0') && !existsSync('/dev/nvidiactl')) return 'no (no /dev/nvidia* device)';
  try {
    const { stdout } = await execa('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader']);
    return `yes: ${stdout.trim()}`;
  } catch {
    return 'a device node exists, but nvidia-smi does not answer';
  }
}

async function nvccArchs(nvcc: string | undefined): Promise<string[]> {
  if (!nvcc) return [];
  try {
    const { stdout } = await execa(nvcc, ['--list-gpu-code']);
    const listed = stdout.split('\n').map((s) => s.trim());
    // 'a' variants (sm_90a) are listed under their base arch.
    return ARCHS.filter((arch) => listed.includes(arch.replace(/a$/, '')));
  } catch {
    return [];
  }
}

/** The C ABI the addon speaks, or why it cannot be asked. */
function addonAbi(): string {
  try {
    return String(nativeAbiVersion());
  } catch (error) {
    return `unknown: ${(error as Error).message}`;
  }
}

export async function doctorCommand(out: Output): Promise<void> {
  const toolchain = await findToolchain();
  const cache = cacheDir();
  const report = {
    package: PACKAGE_VERSION,
    node: process.version,
    gxx: toolchain.gxx,
    nvcc: toolchain.nvcc,
    nvccArchs: await nvccArchs(toolchain.nvcc?.path),
    cudaInclude: toolchain.cudaInclude,
    hostCpu: toolchain.hostCpu,
    gpu: await gpuPresent(),
    cache,
    cachedModules: existsSync(cache)
      ? readdirSync(cache).filter((e) => !e.startsWith('.') && !e.endsWith('.lock')).length
      : 0,
    addon: nativeAddonStatus(),
    abi: addonAbi(),
  };
  const line = (label: string, value: string) => out.info(`${label.padEnd(14)} ${value}`);
  line('chunkattn', report.package);
  line('node', `${report.node} (N-API ${process.versions.napi})`);
  line(
    'g++',
    report.gxx ? `${report.gxx.version} (${report.gxx.path})` : 'missing: the cpu and emu targets need it',
  );
  line(
    'nvcc',
    report.nvcc ? `${report.nvcc.version} (${report.nvcc.path})` : 'missing: the cuda target needs it',
  );
  line('nvcc archs', report.nvccArchs.join(', ') || '-');
  line('cuda headers', report.cudaInclude ?? 'missing: the emu target needs them');
  line('host cpu', report.hostCpu);
  line('gpu', report.gpu);
  line('cache', `${cache} (${report.cachedModules} modules; set CHUNKATTN_CACHE to move it)`);
  line('native addon', report.addon);
  line('module ABI', report.abi);
  out.result(report);
}
