/**
 * How kaos ends: the exit statuses, the one place a failure becomes the lines
 * that tell it, and the one way Ctrl-C, SIGTERM or a lost reader stop a run.
 */
import { CommanderError } from "commander";
import { describeError, type ErrorCode, isCorruptionError, isKaosError } from "../core/errors.js";
import { displayMessage, withoutColours } from "../core/format.js";
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

/** A failure as every report of it tells it: a stable code, the message and the fix. */
interface Failure {
  code: ErrorCode | "INTERNAL";
  message: string;
  hint: string | undefined;
}

function failureOf(error: unknown): Failure {
  if (isKaosError(error)) return { code: error.code, message: error.message, hint: error.hint };
  if (isCorruptionError(error)) {
    // A writer checks the whole file when it opens; a reader meets damage only where it reads.
    return {
      code: "STATE_CORRUPT",
      message: `kaos's state database .kaos/state.db is damaged (${describeError(error)})`,
      hint: "move it away (mv .kaos/state.db .kaos/state.db.broken, beside kaos.config.ts) and run kaos again: it starts with fresh state",
    };
  }
  if (error instanceof CommanderError) {
    // Commander has printed its own lines, `error: ` first, and how to ask for the usage.
    return { code: "USAGE", message: error.message.replace(/^error: /, ""), hint: "run with --help for usage" };
  }
  return { code: "INTERNAL", message: describeError(error), hint: undefined };
}

/**
 * `error: MESSAGE` and `hint: HINT` for an expected failure; a damaged state
 * database met by a read, told as such; anything else as an internal error
 * with its stack. Messages quote what kaos read, so control characters are escaped.
 */
export function failureLines(error: unknown, c: Colors): string[] {
  const { code, message, hint } = failureOf(error);
  if (code === "INTERNAL") {
    // kaos's own bug: the stack tells where.
    return [`${c.red("internal error")}: ${displayMessage(error instanceof Error ? (error.stack ?? message) : message)}`];
  }
  const lines = [`${c.red("error")}: ${displayMessage(message)}`];
  if (hint) lines.push(`${c.dim("hint")}: ${displayMessage(hint)}`);
  return lines;
}

export interface FailureJson {
  error: { code: Failure["code"]; message: string; hint: string | null; exitCode: number };
}

/**
 * What a command run with `--json` prints on stdout when it fails, the same
 * for every command, so that a script reads one JSON object either way:
 * `{"error": {"code", "message", "hint", "exitCode"}}`. The code is the
 * stable one scripts match on (`USAGE` for a command line kaos cannot parse,
 * `INTERNAL` for a bug); the strings are plain text, colour codes taken out
 * and anything else left to JSON's escapes.
 */
export function failureJson(error: unknown, exitCode: number): FailureJson {
  const { code, message, hint } = failureOf(error);
  return { error: { code, message: withoutColours(message), hint: hint ? withoutColours(hint) : null, exitCode } };
}

export type StopReason = "interrupted" | "terminated" | "hung up" | "output closed";

const STOP_SIGNALS = { SIGINT: "interrupted", SIGTERM: "terminated", SIGHUP: "hung up" } as const satisfies Partial<
  Record<NodeJS.Signals, StopReason>
>;

/**
 * Calls `stop` on Ctrl-C, SIGTERM, SIGHUP (its terminal closed: the jobs, in
 * process groups of their own, would run on unrecorded), or when the output
 * loses its reader; a second signal exits at once with 130. Returns the
 * function that stops listening.
 */
/** What a second Ctrl-C does: say so, and exit with 130 without waiting for anything. */
export function exitAtOnce(): never {
  process.stderr.write("\nstopping at once\n");
  process.exit(EXIT.interrupted);
}

/**
 * Quit while a run plans: nothing has started and nothing is recorded, so kaos
 * exits now rather than hash on only to cancel what the plan starts (exiting
 * ends the hashing threads mid-walk). The live view is closed first, to give
 * the terminal back its cursor, and the store last, to give the stack's lock
 * back. A reader that went away is told nothing and gets 141; `quit` is `q`
 * typed to `kaos watch`.
 */
export function exitWhilePlanning(why: StopReason | "quit", close: { view(): void; store(): void }): never {
  close.view();
  const readerGone = why === "output closed";
  if (!readerGone) process.stderr.write(`\n${why}: stopped before anything ran\n`);
  close.store();
  process.exit(readerGone ? EXIT.brokenPipe : EXIT.interrupted);
}

export function onStopRequest(stop: (why: StopReason) => void): () => void {
  let signals = 0;
  const onSignal = (name: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) exitAtOnce();
    stop(STOP_SIGNALS[name as keyof typeof STOP_SIGNALS] ?? "terminated");
  };
  for (const name of Object.keys(STOP_SIGNALS)) process.on(name, onSignal);
  const stopListening = onOutputClosed(() => stop("output closed"));
  return () => {
    for (const name of Object.keys(STOP_SIGNALS)) process.off(name, onSignal);
    stopListening();
  };
}
