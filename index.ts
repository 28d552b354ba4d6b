// The package entry (`import … from 'chunkattn'`): the DSL, the runtime, and codegen wired in as
// the runtime's module loader (and the tuning DB as its dispatch rules), so `Attention.create(spec, …)` builds on first use.

import { dbDispatchRules } from './autotune/dispatch.ts';
import { buildModule } from './codegen/index.ts';
import { setDefaultDispatchRules, setDefaultModuleLoader } from './runtime/index.ts';

setDefaultModuleLoader((spec, target, tunables) =>
  buildModule(spec, { target, ...(tunables && { tunables }) }),
);
// Per-call kernel choice from the tuning DB (autotune/db and the user's in the cache folder).
setDefaultDispatchRules((spec, target) => dbDispatchRules(spec, target));

export { buildModule } from './codegen/index.ts';
export * from './dsl/index.ts';
export * from './runtime/index.ts';
