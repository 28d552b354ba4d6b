// The tuner: per shape, the candidates of space.ts timed by one timer (measure.ts), the winner
// written to the tuning DB, and for measured runs a confirmation that alternates the defaults
// and the winner in one run (the ratio and its spread, so a win is not one lucky sample).

import { BuildError, findToolchain } from '../codegen/index.ts';
import type { BuildTarget, KernelSpec } from '../dsl/spec.ts';
import { MIN_SHARERS_TUNABLE } from '../runtime/dispatch.ts';
import { currentMeta, shippedDbPath, type TuningEntry, tuningKey, updateDb, userDbPath } from './db.ts';
import { type Timer, type Timing, type TuneShape, WrongResultError } from './measure.ts';
import { loadModelParams } from './model-params.ts';
import { type Candidate, combineWinners, firstRound } from './space.ts';

export type CandidateStatus = 'timed' | 'pruned' | 'wrong' | 'failed' | 'skipped';

export interface CandidateResult {
  readonly candidate: Candidate;
  readonly status: CandidateStatus;
  readonly reason: string | null;
  /** Model time, µs (the model timer, or beside a GPU measurement). */
  readonly predictedUs: number | null;
  /** Measured median, µs. */
  readonly measuredUs: number | null;
  readonly samplesUs: readonly number[];
  readonly maxError: number | null;
  readonly occupancy: string | null;
  /** What read the measured time (Timing.clock), e.g. `emu-host-clock`: emulator wall time. */
  readonly clock: string | null;
}

export interface Confirmation {
  /** Rounds, each timing the defaults and the winner back to back (order alternating). */
  readonly rounds: number;
  /** winner / defaults per round. */
  readonly ratios: readonly number[];
  readonly medianRatio: number;
  readonly minRatio: number;
  readonly maxRatio: number;
  /** Rounds the winner was faster in. */
  readonly wins: number;
  /** Whether the win holds: a median ratio below 1 and wins in at least two rounds of three. */
  readonly confirmed: boolean;
}

export interface ShapeResult {
  readonly shape: TuneShape;
  readonly results: readonly CandidateResult[];
  readonly winner: CandidateResult | null;
  readonly defaults: CandidateResult | null;
  readonly confirmation: Confirmation | null;
}

export interface TuneProgress {
  readonly built: number;
  readonly pruned: number;
  readonly timed: number;
  readonly total: number;
  readonly label: string;
}

export interface TuneOptions {
  readonly spec: KernelSpec;
  /** `cpu` or a GPU id. */
  readonly gpu: string;
  readonly target: BuildTarget;
  readonly timer: Timer;
  /** Model predictions beside a GPU measurement (for the chart); optional. */
  readonly predictor?: Timer;
  readonly shapes: readonly TuneShape[];
  /** Seconds for the whole search (candidates beyond it are skipped); default 600. */
  readonly budgetS?: number;
  /** Confirmation rounds (measured timers); default 9; 0 skips it. */
  readonly confirmRounds?: number;
  /** Where the winners go: the user DB (default), the shipped DB, or nowhere. */
  readonly write?: 'user' | 'shipped' | 'none';
  readonly cacheRoot?: string;
  readonly onProgress?: (progress: TuneProgress) => void;
  /** Pruned before anything is timed (from space.ts's constraints); reported. */
  readonly cores?: number;
}

export interface TuneReport {
  readonly spec: string;
  readonly gpu: string;
  readonly timer: Timer['kind'];
  readonly shapes: readonly ShapeResult[];
  readonly written: {
    readonly path: string;
    readonly added: number;
    readonly replaced: number;
    readonly droppedStale: number;
  } | null;
}

const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

const timeOf = (r: CandidateResult) => r.measuredUs ?? r.predictedUs ?? Number.POSITIVE_INFINITY;

export async function tune(options: TuneOptions): Promise<TuneReport> {
  const { spec, target, timer } = options;
  const started = performance.now();
  const budgetMs = (options.budgetS ?? 600) * 1000;
  const measured = timer.kind !== 'model';
  const progress = { built: 0, pruned: 0, timed: 0, total: 0 };
  const report = (label: string) => options.onProgress?.({ ...progress, label });
  const shapes: ShapeResult[] = [];

  for (const shape of options.shapes) {
    const where = `b=${shape.batch} shared=${shape.sharedTokens}`;
    const space = firstRound(spec, target, { cores: options.cores ?? 1, threshold: true });
    const results: CandidateResult[] = space.pruned.map(({ id, reason }) => ({
      candidate: { id, kernel: {}, minSharers: 0 },
      status: 'pruned',
      reason,
      predictedUs: null,
      measuredUs: null,
      samplesUs: [],
      maxError: null,
      occupancy: null,
      clock: null,
    }));
    progress.pruned += space.pruned.length;
    progress.total += space.candidates.length + space.pruned.length;
    const run = async (candidate: Candidate): Promise<CandidateResult> => {
      const base = {
        candidate,
        predictedUs: null,
        measuredUs: null,
        samplesUs: [],
        maxError: null,
        occupancy: null,
        clock: null,
      };
      if (measured && performance.now() - started > budgetMs)
        return { ...base, status: 'skipped', reason: `over the ${options.budgetS ?? 600} s budget` };
      report(`${where}: ${candidate.id}`);
      let timing: Timing;
      try {
        timing = await timer.time(candidate, shape);
      } catch (error) {
        if (error instanceof WrongResultError) return { ...base, status: 'wrong', reason: error.message };
        if (error instanceof BuildError) {
          progress.pruned++;
          return { ...base, status: 'pruned', reason: `build: ${error.message.split('\n')[0]}` };
        }
        return { ...base, status: 'failed', reason: (error as Error).message.split('\n')[0] ?? 'failed' };
      }
      if (measured) progress.built++;
      progress.timed++;
      const prediction = options.predictor ? await options.predictor.time(candidate, shape) : null;
      const predicted = prediction?.us ?? null;
      report(`${where}: ${candidate.id}`);
      return {
        candidate,
        status: 'timed',
        reason: null,
        predictedUs: timing.predicted ? timing.us : predicted,
        measuredUs: timing.predicted ? null : timing.us,
        samplesUs: timing.samplesUs,
        maxError: timing.maxError,
        occupancy: timing.occupancy ?? prediction?.occupancy ?? null,
        clock: timing.clock ?? null,
      };
    };
    for (const candidate of space.candidates) results.push(await run(candidate));
    const timed = () =>
      results.filter((r) => r.status === 'timed').map((r) => ({ candidate: r.candidate, us: timeOf(r) }));
    const combined = combineWinners(spec, target, timed());
    if (combined) {
      progress.total++;
      results.push(await run(combined));
    }
    const ok = results.filter((r) => r.status === 'timed');
    const defaults = ok.find((r) => r.candidate.id === 'defaults') ?? null;
    const winner = ok.length ? ok.reduce((a, b) => (timeOf(a) <= timeOf(b) ? a : b)) : null;
    let confirmation: Confirmation | null = null;
    const rounds = options.confirmRounds ?? 9;
    if (measured && winner && defaults && winner !== defaults && rounds > 0) {
      const ratios: number[] = [];
      for (let round = 0; round < rounds; round++) {
        report(`${where}: confirming, round ${round + 1}/${rounds}`);
        const order = round % 2 ? [winner, defaults] : [defaults, winner];
        const [first, second] = [
          await timer.time(order[0]!.candidate, shape),
          await timer.time(order[1]!.candidate, shape),
        ];
        const [d, w] = round % 2 ? [second, first] : [first, second];
        ratios.push(w.us / d.us);
      }
      const wins = ratios.filter((r) => r < 1).length;
      confirmation = {
        rounds,
        ratios,
        medianRatio: median(ratios),
        minRatio: Math.min(...ratios),
        maxRatio: Math.max(...ratios),
        wins,
        confirmed: median(ratios) < 1 && wins * 3 >= rounds * 2,
      };
    }
    shapes.push({ shape, results, winner, defaults, confirmation });
  }

  let written: TuneReport['written'] = null;
  if ((options.write ?? 'user') !== 'none') {
    const toolchain = await findToolchain();
    const meta = currentMeta(target, toolchain, loadModelParams().modelVersion);
    const at = new Date().toISOString();
    const entries: TuningEntry[] = [];
    for (const { shape, winner, confirmation } of shapes) {
      if (!winner) continue;
      // A measured winner that did not hold up in the alternating rounds keeps the defaults.
      const holds = !confirmation || confirmation.confirmed;
      const chosen = holds ? winner : shapes.find((s) => s.shape === shape)!.defaults!;
      entries.push({
        key: tuningKey({
          gpu: options.gpu,
          headDim: spec.headDim,
          dtype: spec.dtype,
          heads: spec.heads,
          chunkSize: spec.chunkSize,
          batch: shape.batch,
          sharedTokens: shape.sharedTokens,
        }),
        source: measured ? 'measured' : 'model',
        tunables: { ...chosen.candidate.kernel, [MIN_SHARERS_TUNABLE]: chosen.candidate.minSharers },
        predictedUs: chosen.predictedUs,
        measuredUs: chosen.measuredUs,
        meta,
        at,
      });
    }
    const path =
      options.write === 'shipped' ? shippedDbPath(options.gpu) : userDbPath(options.gpu, options.cacheRoot);
    written = { path, ...(await updateDb(path, options.gpu, entries, meta)) };
  }
  return { spec: spec.name, gpu: options.gpu, timer: timer.kind, shapes, written };
}
