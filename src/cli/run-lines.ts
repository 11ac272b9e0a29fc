/**
 * The lines a run prints whatever shows it (the live view, plain lines) and
 * that `kaos up` prints again from its up-to-date record (cli/up-from-record.ts):
 * kept apart from the views so that printing them loads nothing else.
 */
import type { Reporter, RunEvent } from "../core/events.js";
import { colors, type Colors } from "./output.js";
import { displayMessage } from "../core/format.js";

export function skippedStageLine(c: Colors, event: { pipeline: string; stage: string; reason: string }): string {
  return `${event.pipeline} ${event.stage}  ${c.dim("skipped")}  (${event.reason})`;
}

/** The first line of a run's summary: `run ID: COUNTS`. */
export function runLine(runId: string, counts: string): string {
  return `run ${runId}: ${counts}`;
}

/** A reporter that passes every event on and keeps the lines a run that has nothing to do prints (see core/up-to-date.ts). */
export class PrintedLines implements Reporter {
  readonly lines: string[] = [];
  private readonly c = colors(process.stderr);

  constructor(private readonly shown: Reporter) {}

  event(event: RunEvent): void {
    if (event.kind === "stage") this.lines.push(skippedStageLine(this.c, event));
    else if (event.kind === "note") this.lines.push(displayMessage(event.message));
    this.shown.event(event);
  }

  close(): void {
    this.shown.close();
  }
}
