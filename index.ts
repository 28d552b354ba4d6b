// The package entry (`import … from 'chunkattn'`): the DSL, the runtime, and codegen wired in as
// the runtime's module loader, so `Attention.create(spec, …)` builds on first use.

import { buildModule } from './codegen/index.ts';
import { setDefaultModuleLoader } from './runtime/index.ts';

setDefaultModuleLoader((spec, target) => buildModule(spec, { target }));

export { buildModule } from './codegen/index.ts';
export * from './dsl/index.ts';
export * from './runtime/index.ts';
