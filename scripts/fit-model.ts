// npx tsx scripts/fit-model.ts [--check]: refits the performance model's constants on the
// paper's unshared Table 3 rows and rewrites autotune/model-params.json (bumping modelVersion
// when the constants change, which makes model-derived tuning-DB entries stale).
// --check writes nothing and exits 1 when the committed parameters are not the fit's result.

import { writeFileSync } from 'node:fs';
import { FIT_GPU, FIT_METHOD, fitModel } from '../autotune/fit.ts';
import { loadModelParams, MODEL_PARAMS_PATH, type ModelParams } from '../autotune/model-params.ts';

const check = process.argv.includes('--check');
const committed = loadModelParams();
const { fitted, points, maxRelativeError } = fitModel(committed.dramLatencyUs);
const changed =
  fitted.eta !== committed.fitted.eta || fitted.launchOverheadUs !== committed.fitted.launchOverheadUs;

for (const p of points)
  console.log(
    `${p.kernel.padEnd(10)} np=${p.promptTokens} ns=${p.sharedTokens}: paper ${p.publishedUs.toFixed(1)} µs, ` +
      `model ${p.predictedUs.toFixed(1)} µs (${(100 * p.relativeError).toFixed(1)}%)`,
  );
console.log(
  `eta ${fitted.eta}, launch overhead ${fitted.launchOverheadUs} µs, max |error| ${(100 * maxRelativeError).toFixed(1)}%`,
);

if (check) {
  if (changed) {
    console.error(`${MODEL_PARAMS_PATH} is not the fit's result: run npx tsx scripts/fit-model.ts`);
    process.exit(1);
  }
} else {
  const params: ModelParams = {
    modelVersion: changed ? committed.modelVersion + 1 : committed.modelVersion,
    fitted,
    dramLatencyUs: committed.dramLatencyUs,
    fit: { gpu: FIT_GPU, method: FIT_METHOD, points, maxRelativeError },
  };
  writeFileSync(MODEL_PARAMS_PATH, JSON.stringify(params, null, 2) + '\n');
  console.log(`wrote autotune/model-params.json (model version ${params.modelVersion})`);
}
