/**
 * How kaos ends: the exit statuses, the one place a failure becomes the lines
 * that tell it, and the one way Ctrl-C, SIGTERM or a lost reader stop a run.
 */
import { isCorruptionError, isKaosError } from "../core/errors.js";
import { displayMessage } from "../core/format.js";
import type { Colors } from "./output.js";
import { onOutputClosed } from "./pipes.js";

export const EXIT = {
  ok: 0,
  /** Bad input, a failed job, anything that did not work. */
  failure: 1,
  /** `plan --detailed-exitcode` with changes pending (Terraform's convention). */
  changes: 2,
  /** A second Ctrl-C: stop at once. */
  interrupted: 130,
  /** 128 + SIGPIPE: the reader of the output went away. */
  brokenPipe: 141,
} as const;

/**
 * `error: MESSAGE` and `hint: HINT` for an expected failure; a damaged state
 * database met by a read, told as such; anything else as an internal error
 * with its stack. Messages quote what kaos read, so control characters are escaped.
 */
export function failureLines(error: unknown, c: Colors): string[] {
  if (isKaosError(error)) {
    const lines = [`${c.red("error")}: ${displayMessage(error.message)}`];
    if (error.hint) lines.push(`${c.dim("hint")}: ${displayMessage(error.hint)}`);
    return lines;
  }
  if (isCorruptionError(error)) {
    // A writer checks the whole file when it opens; a reader meets damage only where it reads.
    return [
      `${c.red("error")}: kaos's state database .kaos/state.db is damaged (${displayMessage(error instanceof Error ? error.message : String(error))})`,
      `${c.dim("hint")}: move it away (mv .kaos/state.db .kaos/state.db.broken, beside kaos.config.ts) and run kaos again: it starts with fresh state`,
    ];
  }
  return [`${c.red("internal error")}: ${displayMessage(error instanceof Error ? (error.stack ?? error.message) : String(error))}`];
}

export type StopReason = "interrupted" | "terminated" | "output closed";

/**
 * Calls `stop` on Ctrl-C, SIGTERM, or when the output loses its reader; a
 * second signal exits at once with 130. Returns the function that stops listening.
 */
export function onStopRequest(stop: (why: StopReason) => void): () => void {
  let signals = 0;
  const onSignal = (name: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      process.stderr.write("\nstopping at once\n");
      process.exit(EXIT.interrupted);
    }
    stop(name === "SIGINT" ? "interrupted" : "terminated");
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const stopListening = onOutputClosed(() => stop("output closed"));
  return () => {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    stopListening();
  };
}
