// ca_last_error() of a cpu module reports the cpu kernels' own failures (they used to write a
// separate buffer that ca_last_error() never read). Checked from C, through dlopen, the way the
// addon calls a module.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { buildModule } from '../codegen/index.ts';
import { tinySpec } from './specs.ts';

const DRIVER = `#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
typedef int (*CopyChunk)(void*, void*, int32_t, int32_t, int32_t, int32_t, void*);
typedef const char* (*LastError)(void);
int main(int argc, char** argv) {
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) { fprintf(stderr, "%s\\n", dlerror()); return 2; }
  CopyChunk copy_chunk = (CopyChunk)dlsym(lib, "ca_copy_chunk");
  LastError last_error = (LastError)dlsym(lib, "ca_last_error");
  static float pool[1 << 16];
  int status = copy_chunk(pool, pool, 4, 0, 99, 1, 0);  // slot 99 of 4: a cpu kernel error
  printf("status=%d\\nmessage=%s\\n", status, last_error());
  return 0;
}
`;

test('ca_last_error reports a cpu kernel error (ca_copy_chunk with a slot out of range)', async () => {
  const module = await buildModule(tinySpec('f32', 'plain', ['cpu']), { target: 'cpu' });
  const dir = mkdtempSync(join(tmpdir(), 'chunkattn-error-channel-'));
  writeFileSync(join(dir, 'driver.c'), DRIVER);
  execFileSync('g++', ['-x', 'c++', '-o', join(dir, 'driver'), join(dir, 'driver.c'), '-ldl']);
  const output = execFileSync(join(dir, 'driver'), [module.libraryPath]).toString();
  expect(output).toMatch(/^status=[1-9]\d*$/m);
  expect(output).toContain('message=ca_copy_chunk: slots 0 -> 99 out of range [0, 4)');
});
