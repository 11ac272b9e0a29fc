/**
 * `kaos up` when the up-to-date record (core/up-to-date.ts) still vouches
 * that nothing changed since the last `kaos up` that had nothing to do: the
 * run is recorded as that one was and the same lines are printed, without
 * loading the command line, the config or the planner. The command line's
 * entry (cli.ts) asks here first for every `kaos up`; whenever the record does
 * not vouch for the run, kaos up runs in full.
 */
import { dirname } from "node:path";
import { knownRuntime } from "../backends/local/python.js";
import { describeError } from "../core/errors.js";
import { findConfigs, stateDirOf } from "../core/layout.js";
import { StateStore } from "../core/state.js";
import { changedWitness, readUpToDate, writeUpToDate, type UpToDateRecord } from "../core/up-to-date.js";
import { invocationKey, traceUpToDate } from "./invocation.js";
import { exitQuietlyOnClosedOutput } from "./pipes.js";
import { runLine } from "./run-lines.js";

/** An argument naming the config file (`-c`, `--config`). */
const CONFIG_ARGUMENT = /^(?:-c|--config)/;

/** Why `record` does not vouch for this run, or undefined when it does. */
function whyNot(record: UpToDateRecord, stateDir: string): string | undefined {
  if (record.invocation !== invocationKey())
    return "kaos was started differently (build, Node, arguments, directory, environment or terminal)";
  const changed = changedWitness(record);
  if (changed !== undefined) return `${changed} changed`;
  for (const { wanted, runtime } of record.runtimes) {
    if (knownRuntime(wanted ?? undefined, stateDir) !== runtime)
      return `the Python interpreter for ${wanted ?? "python3"} is not the one recorded`;
  }
  return undefined;
}

/**
 * The exit status of this `kaos up` when the record vouched for it (the run
 * is then recorded and told), or undefined: the full `kaos up` is to run.
 */
export function upFromRecord(): number | undefined {
  // A config named on the command line: `kaos up` then writes no record either.
  if (process.argv.slice(2).some((argument) => CONFIG_ARGUMENT.test(argument))) {
    traceUpToDate("not used: the config file was named with --config, and no record is kept for it");
    return undefined;
  }
  const configs = findConfigs(process.cwd());
  const config = configs[0];
  if (config === undefined) return undefined;
  if (configs.length > 1) {
    traceUpToDate("not used: more than one config file");
    return undefined;
  }
  const root = dirname(config);
  const stateDir = stateDirOf(root);
  const record = readUpToDate(stateDir);
  if (record === undefined) {
    traceUpToDate("none to use");
    return undefined;
  }
  const why = whyNot(record, stateDir);
  if (why !== undefined) {
    traceUpToDate(`not used: ${why}`);
    return undefined;
  }
  let recorded: { runId: string; revision: string } | undefined;
  let store: StateStore | undefined;
  let notRewritten: string | undefined;
  try {
    store = StateStore.open(root);
    recorded = store.recordSettledRun(record.stack, "up", record.revision);
    if (recorded !== undefined) writeUpToDate(stateDir, { ...record, revision: recorded.revision });
  } catch (error) {
    const message = describeError(error);
    // The full kaos up tells what is wrong with the store.
    if (recorded === undefined) {
      traceUpToDate(`not used: ${message}`);
      return undefined;
    }
    // A record that cannot be rewritten only costs the next kaos up a full run.
    notRewritten = message;
  } finally {
    store?.close();
  }
  if (recorded === undefined) {
    traceUpToDate("not used: the state store changed since");
    return undefined;
  }
  traceUpToDate("used");
  if (notRewritten !== undefined) traceUpToDate(`not rewritten: ${notRewritten}`);
  exitQuietlyOnClosedOutput();
  process.stderr.write(`${[...record.lines, runLine(recorded.runId, record.summary)].join("\n")}\n`);
  return 0;
}
