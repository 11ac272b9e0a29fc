/**
 * How this `kaos up` was started, as its up-to-date record (core/up-to-date.ts)
 * keys it, and the trace of what became of the record: the process's own
 * facts, which the command line reads and the core is given.
 */
import { createHash } from "node:crypto";
import { kaosBuild } from "../core/layout.js";

/** Set to 1 to have `kaos up` say on stderr whether it used the record, and if not, why. Not part of the invocation. */
export const TRACE_VARIABLE = "KAOS_TRACE_UP_TO_DATE";

/**
 * What a shell sets about itself in every program's environment: the path of
 * the command run, how deep the shell is nested, the directory before the
 * last `cd`. Keyed on, they would tie a record to one shell.
 */
const SHELL_BOOKKEEPING: ReadonlySet<string> = new Set(["_", "SHLVL", "OLDPWD", TRACE_VARIABLE]);

/**
 * How this process was started, as a digest: a record is used only by a
 * `kaos up` started the same way. The environment goes in whole but for the
 * shell's bookkeeping (a config or an interpreter may read any of it), and
 * hashed: it may hold secrets.
 */
export function invocationKey(): string {
  const environment = Object.entries(process.env)
    .filter(([name]) => !SHELL_BOOKKEEPING.has(name))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return createHash("sha256")
    .update(
      JSON.stringify([
        kaosBuild(),
        process.version,
        process.execPath,
        process.argv.slice(2),
        process.cwd(),
        environment,
        process.stdout.isTTY === true,
        process.stderr.isTTY === true,
      ]),
    )
    .digest("hex");
}

/** Says on stderr, when TRACE_VARIABLE asks, what became of the record. */
export function traceUpToDate(message: string): void {
  if (process.env[TRACE_VARIABLE] === "1") process.stderr.write(`kaos up-to-date record: ${message}\n`);
}

/** When this process started, on the wall clock, in nanoseconds: before it read anything. */
export function processStartNs(): bigint {
  return BigInt(Math.floor(performance.timeOrigin * 1e6));
}
