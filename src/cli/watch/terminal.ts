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

  event(event: RunEvent): void {
    this.terminal.around(() => this.plain.event(event));
    if (event.kind === "job") {
      this.jobs.set(event.job.id, event.job);
      this.onJob(event.job);
      this.onChange();
    }
  }

  counts(): { total: number; running: number; done: number } {
    const jobs = [...this.jobs.values()];
    return {
      total: jobs.length,
      running: jobs.filter((job) => job.state === "running").length,
      done: jobs.filter((job) => job.state !== "running" && job.state !== "queued").length,
    };
  }

  close(): void {}
}
