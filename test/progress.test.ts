/**
 * The live view `kaos up` draws on a terminal, fed the events of a large
 * sweep: its counts, and the work each event costs.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import { LiveReporter } from "../src/cli/progress.js";
import { Terminal, WatchReporter } from "../src/cli/watch/terminal.js";
import type { JobRecord } from "../src/core/state.js";
import { readsCounted } from "./helpers/counting.js";

afterEach(() => {
  vi.restoreAllMocks();
});

const nextTurn = () => new Promise((resolve) => setImmediate(resolve));

function trainJob(index: number, size: number): JobRecord {
  return {
    id: `job${index}`,
    runId: "run1",
    stack: "default",
    pipeline: "p",
    stage: "train",
    key: `key${index}`,
    state: "queued",
    params: { score: index },
    envKey: null,
    sourceKey: null,
    dataKey: null,
    paramsKey: null,
    sweepIndex: index,
    sweepSize: size,
    pid: null,
    startedAt: null,
    finishedAt: null,
    exitCode: null,
    reason: null,
    outputDir: null,
    logFile: null,
    createdAt: "2026-12-07T00:00:00.000Z",
    collectedAt: null,
  };
}

describe("the live view of kaos up", () => {
  it("costs each job event the same however large the sweep, and draws the counts it is told", async () => {
    const written: string[] = [];
    vi.spyOn(process.stderr, "write").mockImplementation((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    });
    await import("log-update");
    const reporter = new LiveReporter();
    await nextTurn();

    const size = 5_000;
    let reads = 0;
    // Every read of a job record's fields is counted: the work the view does, without a clock.
    const counted = (job: JobRecord): JobRecord =>
      readsCounted(job, () => {
        reads += 1;
      });
    const jobs = Array.from({ length: size }, (_, index) => trainJob(index, size));
    for (const job of jobs) reporter.event({ kind: "job", job: counted(job) });
    // A queued job is drawn by the timer's next tick, not by a frame of its own.
    expect(written.length).toBeLessThan(10);
    expect(reads).toBeLessThan(size * 40);

    reporter.event({ kind: "job", job: { ...jobs[0]!, state: "running" } });
    reporter.event({ kind: "job", job: { ...jobs[0]!, state: "succeeded" } });
    reporter.event({ kind: "job", job: { ...jobs[1]!, state: "running" } });
    reporter.event({ kind: "job", job: { ...jobs[2]!, state: "running" } });
    reporter.event({ kind: "job", job: { ...jobs[1]!, state: "failed", exitCode: 3 } });
    reporter.close();
    await nextTurn();
    const lastFrame = written.join("").replace(/\u001b\[[0-9;?]*[A-Za-z]/g, "");
    expect(lastFrame).toContain("p train 1/5000 job0  score=0  succeeded");
    expect(lastFrame).toContain("p train 2/5000 job1  score=1  failed  (exit code 3)");
    expect(lastFrame.slice(lastFrame.lastIndexOf("p  train"))).toMatch(/^p {2}train {2}1 done, 1 running, 1 failed of 5000\n/);
  });
});

describe("the status line of kaos watch", () => {
  it("counts each job once, in the state it is in now, as its events come", () => {
    vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    const reporter = new WatchReporter(
      new Terminal(false),
      () => undefined,
      () => undefined,
    );
    const send = (index: number, state: JobRecord["state"]) => reporter.event({ kind: "job", job: { ...trainJob(index, 3), state } });
    for (const index of [0, 1, 2]) send(index, "queued");
    expect(reporter.counts()).toEqual({ total: 3, running: 0, done: 0 });
    send(0, "running");
    send(1, "running");
    expect(reporter.counts()).toEqual({ total: 3, running: 2, done: 0 });
    send(0, "succeeded");
    send(1, "failed");
    send(2, "cancelled");
    expect(reporter.counts()).toEqual({ total: 3, running: 0, done: 3 });
  });
});
