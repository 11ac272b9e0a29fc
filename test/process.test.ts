import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { JOB_TAG, processStartTicks, processesOfJob, signalJob, type JobStart } from "../src/backends/local/process.js";

const linux = process.platform === "linux";
const started: ChildProcess[] = [];

afterEach(() => {
  for (const child of started.splice(0)) child.kill("SIGKILL");
});

/** A job's first process, which forks a child into a session of its own (as a daemon would) and waits. */
async function jobWithDaemon(jobId: string): Promise<{ start: JobStart; daemon: number }> {
  const child = spawn("sh", ["-c", "setsid sleep 30 & echo $!; wait"], {
    env: { ...process.env, [JOB_TAG]: jobId },
    stdio: ["ignore", "pipe", "ignore"],
  });
  started.push(child);
  const daemon = await new Promise<number>((done) => child.stdout!.once("data", (chunk: Buffer) => done(Number(String(chunk).trim()))));
  return { start: { pid: child.pid!, ticks: processStartTicks(child.pid!), startedAtMs: Date.now() }, daemon };
}

describe("finding a job's processes by its tag (Linux /proc)", () => {
  it.runIf(linux)("finds the job's first process and a daemon that left its session, and nobody else's", async () => {
    const jobId = randomBytes(5).toString("hex");
    const { start, daemon } = await jobWithDaemon(jobId);
    const other = await jobWithDaemon(randomBytes(5).toString("hex"));
    const pids = (since?: JobStart) =>
      processesOfJob(jobId, since)
        .map((found) => found.pid)
        .sort();
    const expected = [start.pid, daemon].sort();
    // Looking among the pids allocated since the job started, among all of them, and for a job started long ago.
    expect(pids(start)).toEqual(expected);
    expect(pids()).toEqual(expected);
    expect(pids({ ...start, startedAtMs: Date.now() - 3_600_000 })).toEqual(expected);
    expect(pids(start)).not.toContain(other.daemon);
  });

  it.runIf(linux)(
    "looks only above the job's first pid while the job is short: a process older than the job is not one of it",
    async () => {
      const jobId = randomBytes(5).toString("hex");
      const { start, daemon } = await jobWithDaemon(jobId);
      // A process started after the job's: as if the job had started then, none of its processes lies in the range.
      const later = spawn("true");
      await new Promise((done) => later.on("exit", done));
      const since: JobStart = { pid: later.pid!, ticks: undefined, startedAtMs: Date.now() };
      expect(Number(readFileSync("/proc/sys/kernel/ns_last_pid", "utf8"))).toBeGreaterThanOrEqual(since.pid);
      expect(processesOfJob(jobId, since)).toEqual([]);
      // The same, for a job started long ago: the counter may have wrapped, so every process is looked at.
      expect(
        processesOfJob(jobId, { ...since, startedAtMs: Date.now() - 3_600_000 })
          .map((found) => found.pid)
          .sort(),
      ).toEqual([start.pid, daemon].sort());
    },
  );

  it.runIf(linux)("signalJob stops every tagged process, the daemon included", async () => {
    const jobId = randomBytes(5).toString("hex");
    const { start, daemon } = await jobWithDaemon(jobId);
    expect(signalJob(jobId, "SIGKILL", start)).toBe(2);
    const gone = () => {
      try {
        process.kill(daemon, 0);
        return readFileSync(`/proc/${daemon}/stat`, "utf8").split(") ")[1]?.startsWith("Z") ?? true;
      } catch {
        return true;
      }
    };
    // A killed process leaves /proc a moment after the signal: wait for every tagged one to be gone.
    const allGone = () => gone() && processesOfJob(jobId).length === 0;
    for (let tries = 0; tries < 250 && !allGone(); tries++) await new Promise((done) => setTimeout(done, 20));
    expect(gone()).toBe(true);
    expect(processesOfJob(jobId)).toEqual([]);
  });
});
