/**
 * What the commands that plan, apply, open a stack's backend or watch its
 * bundles load, as one module. The bundler splits the built code at every
 * module loaded by a dynamic import; loaded one by one, these made a no-op
 * `kaos up` read dozens of small files. Read-only commands that only open the
 * store (`train list`) load none of it.
 */
export { checkInputs, openSession } from "../core/engine.js";
export { createBackend } from "../backends/index.js";
export { startHashWorkers, startHashWorkersFor } from "../core/hash.js";
export { prefetchPython } from "../backends/local/python.js";
export { largestStatCache } from "../core/state.js";
export { formatPlan, planJson } from "../core/plan.js";
export { bestOfSweep, numericMetricNames, rankSweep, sweepRowJson } from "../core/sweep.js";
export { setupReporter, startMonitor } from "../core/monitor.js";
export { createReporter } from "./progress.js";
export { recordUpToDate } from "../core/up-to-date-record.js";
