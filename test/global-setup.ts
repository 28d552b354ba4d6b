// Runs once per `vitest run`: points every test at one build cache inside the repo and builds
// every kernel module the suites use, two at a time, before any test starts. Tests then hit the
// cache (keyed by content, so local reruns rebuild only what changed). CHUNKATTN_PRECOMPILE=0
// skips the up-front build: while iterating on one test file, each test then builds just the
// modules it uses.

import { join } from 'node:path';

export default async function setup(): Promise<void> {
  process.env.CHUNKATTN_CACHE ??= join(import.meta.dirname, '..', '.cache', 'chunkattn');
  if (process.env.CHUNKATTN_PRECOMPILE === '0') return;
  const { buildModule } = await import('../codegen/index.ts');
  const { loadSpecs } = await import('../dsl/index.ts');
  const { precompiledModules } = await import('./specs.ts');
  const jobs: (() => Promise<unknown>)[] = precompiledModules().map(
    ({ spec, target, sanitize }) =>
      () =>
        buildModule(spec, { target, ...(sanitize && { sanitize }) }),
  );
  for (const example of ['llama2-7b', 'llama3-8b', 'softcap-window']) {
    const [spec] = await loadSpecs(join(import.meta.dirname, '..', 'examples', `${example}.ts`));
    if (!spec) continue;
    jobs.push(() => buildModule(spec, { target: 'cuda', archs: ['sm_80', 'sm_90a'] }));
    jobs.push(() => buildModule(spec, { target: 'cpu' }));
  }
  const started = performance.now();
  const queue = [...jobs];
  await Promise.all(
    [0, 1].map(async () => {
      for (let job = queue.shift(); job; job = queue.shift()) await job();
    }),
  );
  console.log(
    `precompiled ${jobs.length} kernel modules in ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}
