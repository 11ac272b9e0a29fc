/** The terminal of `kaos watch`: plain lines, and on a TTY one status line kept below them. */
import { PlainReporter } from "../progress.js";
import type { Reporter, RunEvent } from "../../core/events.js";
import type { JobRecord } from "../../core/state.js";
import { withoutColours } from "../../core/format.js";

const ERASE_LINE = "\r\u001b[2K";

/**
 * Lines on stderr; on a terminal, with one status line kept below them. The
 * status line is a single line without a newline, erased and redrawn around
 * every other write, and cut to the terminal's width so it never wraps.
 */
export class Terminal {
  private status = "";
  private shown = false;

  constructor(readonly interactive: boolean) {}

  private fit(text: string): string {
    const columns = process.stderr.columns;
    if (!columns || columns < 10) return text;
    const visible = withoutColours(text);
    return visible.length < columns ? text : `${visible.slice(0, columns - 2)}…`;
  }

  /** Writes through `write` with the status line lifted out of the way. */
  around(write: () => void): void {
    if (this.shown) process.stderr.write(ERASE_LINE);
    this.shown = false;
    write();
    this.draw();
  }

  line(text: string): void {
    this.around(() => process.stderr.write(`${text}\n`));
  }

  setStatus(text: string): void {
    if (text === this.status && this.shown) return;
    this.status = text;
    if (this.shown) process.stderr.write(ERASE_LINE);
    this.shown = false;
    this.draw();
  }

  private draw(): void {
    if (!this.interactive || this.status === "") return;
    process.stderr.write(this.fit(this.status));
    this.shown = true;
  }

  close(): void {
    if (this.shown) process.stderr.write(ERASE_LINE);
    this.shown = false;
    this.status = "";
  }
}

/** `kaos up`'s plain job lines, plus the counts for the status line and the stale-job check. */
export class WatchReporter implements Reporter {
  private readonly plain = new PlainReporter();
  readonly jobs = new Map<string, JobRecord>();

  constructor(
    private readonly terminal: Terminal,
    private readonly onJob: (job: JobRecord) => void,
    private readonly onChange: () => void,
  ) {}

  /** Kept as jobs change, as the live view of `kaos up` keeps its own: the status line is drawn on every job event of a sweep. */
  private readonly tally = { total: 0, running: 0, done: 0 };

  event(event: RunEvent): void {
    this.terminal.around(() => this.plain.event(event));
    if (event.kind === "job") {
      const before = this.jobs.get(event.job.id);
      if (before === undefined) this.tally.total += 1;
      else this.count(before, -1);
      this.count(event.job, 1);
      this.jobs.set(event.job.id, event.job);
      this.onJob(event.job);
      this.onChange();
    }
  }

  private count(job: JobRecord, by: 1 | -1): void {
    if (job.state === "running") this.tally.running += by;
    else if (job.state !== "queued") this.tally.done += by;
  }

  counts(): { total: number; running: number; done: number } {
    return { ...this.tally };
  }

  close(): void {}
}
