import { describe, expect, test } from 'vitest';
import type { KernelPlan } from '../codegen/index.ts';
import { parsePtxasReport, resourceViolations } from '../codegen/index.ts';

// A real `nvcc -Xptxas -v` report (sm_80 and sm_90a), plus a kernel with spills and static smem.
const REPORT = `ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN2ca28decode_sequence_first_kernelIN6ca_gen3CfgENS1_7VariantEEEv14CaDecodeParams' for 'sm_80'
ptxas info    : Function properties for _ZN2ca28decode_sequence_first_kernelIN6ca_gen3CfgENS1_7VariantEEEv14CaDecodeParams
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 544 bytes cmem[0]
ptxas info    : Compile time = 97.973 ms
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN2ca28decode_sequence_first_kernelIN6ca_gen3CfgENS1_7VariantEEEv14CaDecodeParams' for 'sm_90a'
ptxas info    : Function properties for _ZN2ca28decode_sequence_first_kernelIN6ca_gen3CfgENS1_7VariantEEEv14CaDecodeParams
    24 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 4096 bytes smem, 544 bytes cmem[0]
`;

describe('ptxas resource report', () => {
  test('parses one record per kernel per arch', () => {
    const records = parsePtxasReport(REPORT);
    expect(records).toEqual([
      expect.objectContaining({
        arch: 'sm_80',
        registers: 40,
        smemBytes: 0,
        spillStoreBytes: 0,
        barriers: 1,
      }),
      expect.objectContaining({
        arch: 'sm_90a',
        registers: 168,
        smemBytes: 4096,
        stackBytes: 24,
        spillStoreBytes: 16,
        spillLoadBytes: 8,
      }),
    ]);
  });

  test('spills, registers over budget, static smem and missing archs are plan violations', () => {
    const plan = {
      archs: ['sm_80', 'sm_90a', 'sm_89'],
      kernels: [
        { kernel: 'decode_sequence_first', maxRegisters: 128, smemBytes: 0, threadsPerBlock: 128, grid: '' },
      ],
    } as unknown as KernelPlan;
    const violations = resourceViolations(plan, parsePtxasReport(REPORT));
    expect(violations).toEqual([
      'decode_sequence_first: no ptxas report for sm_89',
      'decode_sequence_first sm_90a: spills 16 B stored, 8 B loaded (plan: 0)',
      'decode_sequence_first sm_90a: 168 registers (plan: ≤ 128)',
      'decode_sequence_first sm_90a: 4096 B static shared memory (plan: 0)',
    ]);
    expect(resourceViolations({ ...plan, archs: ['sm_80'] }, parsePtxasReport(REPORT).slice(0, 1))).toEqual(
      [],
    );
  });
});
