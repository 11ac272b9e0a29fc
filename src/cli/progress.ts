/**
 * What a run tells the user while it goes: a live view on a terminal, one line
 * per state change otherwise, nothing under --json (the result is printed at
 * the end instead).
 */
import type { IngestProgress, Reporter, RunEvent } from "../core/events.js";
import type { JobRecord } from "../core/state.js";
import { formatPlan } from "../core/plan.js";
import { colors, type Colors } from "./output.js";
import { skippedStageLine } from "./run-lines.js";
import { displayLine, displayMessage, displayText, formatBytes, formatDuration, paramsText } from "../core/format.js";

/** `412/1000 files  392.9 MiB / 953.7 MiB  334.0 MiB/s  ETA 2s`: an ingest's progress on one line. */
export function formatIngestProgress(p: IngestProgress): string {
  const bytes = p.bytesTotal === undefined ? formatBytes(p.bytesDone) : `${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)}`;
  const eta = p.etaSec === undefined ? "" : `  ETA ${formatDuration(Math.ceil(p.etaSec) * 1000)}`;
  return `${p.filesDone}/${p.filesTotal} files  ${bytes}  ${formatBytes(p.rateBytesPerSec)}/s${eta}`;
}

function jobLabel(job: JobRecord): string {
  const sweep = job.sweepSize !== null && job.sweepIndex !== null && job.stage === "train" ? ` ${job.sweepIndex + 1}/${job.sweepSize}` : "";
  return `${displayText(job.pipeline)} ${job.stage}${sweep} ${job.id}`;
}

function stateColor(c: Colors, state: string): string {
  switch (state) {
    case "succeeded":
      return c.green(state);
    case "failed":
      return c.red(state);
    case "cancelled":
      return c.yellow(state);
    case "running":
      return c.cyan(state);
    default:
      return c.dim(state);
  }
}

function jobLine(c: Colors, job: JobRecord, message: string | undefined): string {
  const params = paramsText(job.params);
  const duration = job.startedAt && job.finishedAt ? ` in ${formatDuration(Date.parse(job.finishedAt) - Date.parse(job.startedAt))}` : "";
  const extra =
    job.state === "failed" || job.state === "cancelled" ? (job.reason ?? (job.exitCode !== null ? `exit code ${job.exitCode}` : "")) : "";
  // A reason or message may quote what a job left behind (a file name it wrote): one line, no control characters.
  return [
    jobLabel(job),
    params ? c.dim(params) : "",
    `${stateColor(c, job.state)}${duration}`,
    extra ? `(${displayLine(extra)})` : "",
    message ? displayLine(message) : "",
  ]
    .filter(Boolean)
    .join("  ");
}

/** One line per state change: for pipes, logs and CI. */
export class PlainReporter implements Reporter {
  private readonly c = colors(process.stderr);
  private lastIngest = 0;

  event(event: RunEvent): void {
    switch (event.kind) {
      case "stage":
        process.stderr.write(`${skippedStageLine(this.c, event)}\n`);
        break;
      case "job":
        if (event.job.state === "queued") return;
        process.stderr.write(`${jobLine(this.c, event.job, event.message)}\n`);
        break;
      case "ingest": {
        const now = Date.now();
        if (event.filesDone !== event.filesTotal && now - this.lastIngest < 2000) return;
        this.lastIngest = now;
        process.stderr.write(`${displayText(event.pipeline)} ingest  ${formatIngestProgress(event)}\n`);
        break;
      }
      case "note":
        process.stderr.write(`${displayMessage(event.message)}\n`);
        break;
      case "plan":
        process.stdout.write(`${formatPlan(event.plan, colors())}\n\n`);
        break;
      case "output":
        process.stderr.write(event.text);
        break;
    }
  }

  close(): void {}
}

interface PipelineView {
  stage: string;
  done: number;
  failed: number;
  running: number;
  total: number;
  ingest?: string;
}

/** How many jobs of one pipeline's stage the run has told of, by state. */
interface StageTally {
  jobs: number;
  byState: Map<string, number>;
}

/**
 * A live view redrawn in place: per pipeline, its stage and jobs
 * done/running/failed, and the elapsed time. A sweep tells of up to 100,000
 * jobs at once, so each event costs the same whatever their number: the
 * counts are kept as they change, and a job that only queued or started is
 * drawn by the next tick of the timer rather than at once.
 */
export class LiveReporter implements Reporter {
  private readonly c = colors(process.stderr);
  private readonly started = Date.now();
  private readonly pipelines = new Map<string, PipelineView>();
  /** Each job's last state, by id. */
  private readonly jobStates = new Map<string, string>();
  private readonly tallies = new Map<string, StageTally>();
  private readonly timer: NodeJS.Timeout;
  private update: ((text: string) => void) & { clear(): void; done(): void } = Object.assign(() => {}, { clear() {}, done() {} });
  private ready: Promise<void>;

  constructor() {
    this.ready = import("log-update").then(({ createLogUpdate }) => {
      this.update = createLogUpdate(process.stderr, { showCursor: true });
    });
    this.timer = setInterval(() => this.draw(), 250);
    this.timer.unref();
  }

  private view(pipeline: string): PipelineView {
    let view = this.pipelines.get(pipeline);
    if (!view) {
      view = { stage: "plan", done: 0, failed: 0, running: 0, total: 0 };
      this.pipelines.set(pipeline, view);
    }
    return view;
  }

  event(event: RunEvent): void {
    switch (event.kind) {
      case "stage":
        this.print(skippedStageLine(this.c, event));
        break;
      case "job": {
        const job = event.job;
        const key = `${job.pipeline}\0${job.stage}`;
        let tally = this.tallies.get(key);
        if (tally === undefined) {
          tally = { jobs: 0, byState: new Map() };
          this.tallies.set(key, tally);
        }
        const before = this.jobStates.get(job.id);
        if (before === undefined) tally.jobs += 1;
        else tally.byState.set(before, (tally.byState.get(before) ?? 1) - 1);
        tally.byState.set(job.state, (tally.byState.get(job.state) ?? 0) + 1);
        this.jobStates.set(job.id, job.state);
        const count = (state: string) => tally.byState.get(state) ?? 0;
        const view = this.view(job.pipeline);
        view.stage = job.stage;
        view.total = job.stage === "train" ? (job.sweepSize ?? tally.jobs) : tally.jobs;
        view.done = count("succeeded");
        view.failed = count("failed") + count("cancelled");
        view.running = count("running");
        if (job.state === "queued" || job.state === "running") return;
        this.print(jobLine(this.c, job, event.message));
        break;
      }
      case "ingest": {
        const view = this.view(event.pipeline);
        view.stage = "ingest";
        view.ingest = formatIngestProgress(event);
        break;
      }
      case "note":
        this.print(displayMessage(event.message));
        break;
      case "plan":
        this.update.clear();
        process.stdout.write(`${formatPlan(event.plan, colors())}\n\n`);
        break;
      case "output":
        this.update.clear();
        process.stderr.write(event.text);
        break;
    }
    this.draw();
  }

  private print(line: string): void {
    this.update.clear();
    process.stderr.write(`${line}\n`);
  }

  private draw(): void {
    const lines = [...this.pipelines.entries()].map(([name, view]) => {
      if (view.stage === "ingest" && view.ingest) return `${this.c.bold(name)}  ingest  ${view.ingest}`;
      return `${this.c.bold(name)}  ${view.stage}  ${this.c.green(`${view.done} done`)}, ${this.c.cyan(`${view.running} running`)}, ${view.failed > 0 ? this.c.red(`${view.failed} failed`) : "0 failed"} of ${view.total}`;
    });
    this.update([...lines, this.c.dim(`elapsed ${formatDuration(Date.now() - this.started)}`)].join("\n"));
  }

  close(): void {
    clearInterval(this.timer);
    void this.ready.then(() => {
      this.draw();
      this.update.done();
    });
  }
}

/** Silent: for --json, where the result is printed once at the end. */
export class QuietReporter implements Reporter {
  event(): void {}
  close(): void {}
}

export function createReporter(options: { json?: boolean | undefined; interactive: boolean }): Reporter {
  if (options.json) return new QuietReporter();
  return options.interactive ? new LiveReporter() : new PlainReporter();
}
