/**
 * Running a job's process: its own process group (so a kill reaches every
 * child), stdout and stderr written line by line with timestamps to the job's
 * log, and a memory limit enforced like Kubernetes does (the whole group is
 * killed when its resident memory goes over the limit).
 */
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { appendFileSync, createWriteStream, readdirSync, readFileSync, rmSync, writeFileSync, type WriteStream } from "node:fs";
import { parseMemory } from "../../core/config.js";
import { KaosError, describeError } from "../../core/errors.js";
import { formatBytes } from "../../core/format.js";
import { ownerStamp, readProcStat } from "../../core/process-identity.js";

export interface ProcessResult {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Set when kaos ended the process: out of memory, or cancelled. */
  reason: string | undefined;
  oomKilled: boolean;
  /** Set when the log could not be written (a full disk): what the process printed from then on is lost. */
  logError: string | undefined;
}

export interface RunningProcess {
  pid: number;
  done: Promise<ProcessResult>;
  /** Stops the whole group: SIGTERM, then SIGKILL after `graceMs`. */
  stop(reason: string, graceMs?: number): void;
}

export interface SpawnOptions {
  command: string;
  args: string[];
  cwd: string;
  env: NodeJS.ProcessEnv;
  logFile: string;
  memoryLimitBytes?: number | undefined;
  memoryLimitText?: string | undefined;
  /**
   * The job this process runs for. It is passed as KAOS_JOB_ID, and every
   * process still carrying it when the script ends is stopped too, even one
   * that left the process group (setsid daemons).
   */
  jobId?: string | undefined;
  /** The log's cap in bytes; default: KAOS_LOG_MAX_BYTES, else DEFAULT_LOG_LIMIT_BYTES. */
  logLimitBytes?: number | undefined;
}

/** The environment variable that tags every process of a job. */
export const JOB_TAG = "KAOS_JOB_ID";

/** The environment variable that caps each job's log, and the cap without it. */
export const LOG_LIMIT_VARIABLE = "KAOS_LOG_MAX_BYTES";
export const DEFAULT_LOG_LIMIT_BYTES = 50 * 1024 * 1024;

/** The log cap in bytes from KAOS_LOG_MAX_BYTES (a number of bytes, or a size such as 20M or 1Gi; 0: no cap). */
export function logLimitBytes(env: NodeJS.ProcessEnv = process.env): number {
  const text = env[LOG_LIMIT_VARIABLE]?.trim();
  if (text === undefined || text === "") return DEFAULT_LOG_LIMIT_BYTES;
  const bytes = /^\d+$/.test(text) ? Number(text) : parseMemory(text);
  if (bytes === undefined || !Number.isSafeInteger(bytes)) {
    throw new KaosError(
      "USAGE",
      `${LOG_LIMIT_VARIABLE}=${text}: expected a number of bytes or a size such as "20M" or "1Gi" (0 for no cap)`,
    );
  }
  return bytes === 0 ? Number.POSITIVE_INFINITY : bytes;
}

/** Beside a log whose middle was dropped: how much, as JSON `{"droppedBytes", "limitBytes"}`. */
export function droppedNoteOf(logFile: string): string {
  return `${logFile}.dropped`;
}

/** A quarter of the cap keeps the start of the output; the rest, its end, which tells why a job failed. */
const HEAD_SHARE = 0.25;

/**
 * A job's log file. A write that fails (a full disk) must not take kaos down
 * with an unhandled stream error: the failure is kept, later lines are
 * dropped, and the process's output is still drained so it never blocks.
 *
 * The log is capped (`limit` bytes, and the lines kaos adds): the first
 * quarter of the cap goes to the log as it comes; past it, lines go to two
 * tail files beside the log used in turn, each emptied when the other fills,
 * so the last lines (between three eighths and three quarters of the cap) are
 * always kept. A line longer than a tail file's share keeps only its end. When the job ends they follow a line that says how many bytes were
 * dropped, and a note beside the log says it too.
 */
class LogFile {
  private readonly out: WriteStream;
  error: string | undefined;
  private readonly headLimit: number;
  private readonly segmentLimit: number;
  private written = 0;
  /** Past the head: the tail files (older first), their sizes, and the bytes dropped from them so far. */
  private tail: { files: [string, string]; sizes: [number, number]; active: 0 | 1; dropped: number } | undefined;

  constructor(
    private readonly file: string,
    private readonly limit: number,
  ) {
    this.out = createWriteStream(file, { flags: "a" });
    this.out.on("error", (error) => {
      this.error ??= describeError(error);
    });
    this.headLimit = Math.floor(limit * HEAD_SHARE);
    this.segmentLimit = Math.max(1, Math.floor((limit - this.headLimit) / 2));
  }

  write(text: string): void {
    if (this.error !== undefined || this.out.destroyed) return;
    if (this.tail === undefined) {
      const bytes = Buffer.byteLength(text);
      if (this.written + bytes <= this.headLimit) {
        this.written += bytes;
        this.out.write(text);
        return;
      }
      // The lines that still fit end the head; the rest begin the tail.
      const lines = text.split(/(?<=\n)/);
      let head = "";
      let index = 0;
      for (; index < lines.length; index++) {
        const size = Buffer.byteLength(lines[index]!);
        if (this.written + size > this.headLimit) break;
        this.written += size;
        head += lines[index];
      }
      this.out.write(
        head +
          `${new Date().toISOString()} kaos | the log reached its cap of ${formatBytes(this.limit)} (${LOG_LIMIT_VARIABLE}): the output from here on is dropped but for its last part, which follows when the job ends\n`,
      );
      const stamp = `${ownerStamp()}.${randomUUID().slice(0, 8)}`;
      this.tail = { files: [`${this.file}.tail-a.${stamp}.tmp`, `${this.file}.tail-b.${stamp}.tmp`], sizes: [0, 0], active: 0, dropped: 0 };
      text = lines.slice(index).join("");
      if (text === "") return;
    }
    this.writeTail(text);
  }

  private writeTail(text: string): void {
    const tail = this.tail!;
    try {
      const bytes = Buffer.byteLength(text);
      if (bytes > this.segmentLimit) {
        // Longer than a tail file may hold: only its end fits the cap, and it is all the tail keeps.
        const buffer = Buffer.from(text);
        let start = buffer.length - this.segmentLimit;
        // Not from the middle of a character.
        while (start < buffer.length && ((buffer[start] as number) & 0xc0) === 0x80) start++;
        const other = tail.active === 0 ? 1 : 0;
        tail.dropped += tail.sizes[0] + tail.sizes[1] + start;
        writeFileSync(tail.files[other], "");
        tail.sizes[other] = 0;
        writeFileSync(tail.files[tail.active], buffer.subarray(start));
        tail.sizes[tail.active] = buffer.length - start;
        return;
      }
      // A tail file never grows past its share, so the two together stay within the cap whatever the lines' lengths.
      if (tail.sizes[tail.active] > 0 && tail.sizes[tail.active] + bytes > this.segmentLimit) {
        const next = tail.active === 0 ? 1 : 0;
        tail.dropped += tail.sizes[next];
        writeFileSync(tail.files[next], "");
        tail.sizes[next] = 0;
        tail.active = next;
      }
      appendFileSync(tail.files[tail.active], text);
      tail.sizes[tail.active] += bytes;
    } catch (error) {
      this.error ??= describeError(error);
    }
  }

  /** Resolves once everything written is on disk, or the stream failed. */
  end(): Promise<void> {
    const tail = this.tail;
    if (tail !== undefined) {
      if (this.error === undefined && !this.out.destroyed) {
        const older: 0 | 1 = tail.active === 0 ? 1 : 0;
        const kept = tail.sizes[older] + tail.sizes[tail.active];
        this.out.write(
          `${new Date().toISOString()} kaos | ${tail.dropped} bytes of output dropped here (the log keeps the first ${formatBytes(this.headLimit)} and the last ${formatBytes(kept)}; cap ${formatBytes(this.limit)} per job, ${LOG_LIMIT_VARIABLE})\n`,
        );
        try {
          for (const index of [older, tail.active] as const) if (tail.sizes[index] > 0) this.out.write(readFileSync(tail.files[index]));
          writeFileSync(droppedNoteOf(this.file), `${JSON.stringify({ droppedBytes: tail.dropped, limitBytes: this.limit })}\n`);
        } catch (error) {
          this.error ??= describeError(error);
        }
      }
      for (const file of tail.files) rmSync(file, { force: true });
    }
    return new Promise((resolve) => {
      if (this.out.destroyed || this.out.closed) return resolve();
      this.out.once("close", () => resolve());
      this.out.end();
    });
  }
}

/** A line longer than this is logged in pieces, so that output without newlines cannot fill kaos's memory. */
const MAX_LINE_CHARS = 1 << 20;

/** Writes `<ISO time> <stream> | <line>` for every complete line of a stream. */
class LineLogger {
  private pending = "";
  constructor(
    private readonly out: LogFile,
    private readonly stream: "stdout" | "stderr",
  ) {}

  write(chunk: string): void {
    const text = this.pending + chunk;
    const lines = text.split("\n");
    this.pending = lines.pop() ?? "";
    while (this.pending.length > MAX_LINE_CHARS) {
      lines.push(this.pending.slice(0, MAX_LINE_CHARS));
      this.pending = this.pending.slice(MAX_LINE_CHARS);
    }
    if (lines.length === 0) return;
    const stamp = new Date().toISOString();
    this.out.write(lines.map((line) => `${stamp} ${this.stream} | ${line}\n`).join(""));
  }

  flush(): void {
    if (this.pending !== "") {
      this.out.write(`${new Date().toISOString()} ${this.stream} | ${this.pending}\n`);
      this.pending = "";
    }
  }
}

const PAGE_SIZE = 4096;

/** Resident bytes of every process whose process group is `pgid` (Linux /proc). */
export function groupResidentBytes(pgid: number): number {
  let total = 0;
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return 0;
  }
  for (const entry of entries) {
    if (entry.charCodeAt(0) < 48 || entry.charCodeAt(0) > 57) continue;
    const stat = readProcStat(entry);
    if (stat?.pgid === pgid) total += stat.rssPages * PAGE_SIZE;
  }
  return total;
}

export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

export function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // already gone
  }
}

/**
 * Live processes whose environment holds `KAOS_JOB_ID=<jobId>` (Linux /proc;
 * none elsewhere), with their process groups. The tag is inherited by every
 * descendant that does not scrub its environment, so it finds a job's
 * processes even after they left its process group or lost their parent.
 */
export function processesOfJob(jobId: string, since?: JobStart): { pid: number; pgid: number }[] {
  return processesOfJobs(new Set([jobId]), since);
}

/** A job's first process: its pid, when it started (clock ticks since boot), and when kaos started it (ms). */
export interface JobStart {
  pid: number;
  ticks: number | undefined;
  startedAtMs: number;
}

/**
 * Pids allocated since a job started, up to this many, are each looked at
 * directly: /proc/PID of a pid nobody holds fails at once, and of a thread
 * (which a listing of /proc leaves out) names its process's group and
 * environment, so signalling it signals that process.
 */
const DIRECT_PID_RANGE = 64;

/** Jobs shorter than this have their descendants looked for among the pids allocated since they started. */
const PID_RANGE_MAX_MS = 60_000;

/**
 * The pids handed out since a job's first one: Linux allocates them in
 * increasing order, so its descendants lie between its first pid and the last
 * one allocated, unless the counter wrapped around meanwhile. A last pid below
 * the first shows one wrap, not two; so the range is used only for jobs short
 * enough that the counter cannot have gone all the way round (undefined
 * otherwise: look at every process). Short jobs are where it matters: it
 * spares reading the stat of every process on the machine after each of them.
 */
function pidsAllocatedSince(start: JobStart): { from: number; to: number } | undefined {
  if (Date.now() - start.startedAtMs > PID_RANGE_MAX_MS) return undefined;
  try {
    const last = Number(readFileSync("/proc/sys/kernel/ns_last_pid", "utf8"));
    return Number.isInteger(last) && last >= start.pid ? { from: start.pid, to: last } : undefined;
  } catch {
    return undefined;
  }
}

/** When a process started, in clock ticks since boot (Linux /proc); undefined elsewhere or once it is reaped. */
export function processStartTicks(pid: number): number | undefined {
  return readProcStat(pid)?.startTicks;
}

/** Signals every process of a job: the groups it leads and each tagged process. Returns how many were found. */
export function signalJob(jobId: string, signal: NodeJS.Signals, since?: JobStart): number {
  const processes = processesOfJob(jobId, since);
  signalProcesses(processes, signal);
  return processes.length;
}

/**
 * Live processes tagged with any of `jobIds`, in one pass over /proc: a
 * killed sweep leaves up to 100,000 unfinished jobs, and a pass per job would
 * read every process's environment that many times. With `since`, only
 * processes started after a job's first one are looked at.
 */
function processesOfJobs(jobIds: ReadonlySet<string>, since?: JobStart): { pid: number; pgid: number; jobId: string }[] {
  const prefix = `${JOB_TAG}=`;
  const pids = since === undefined ? undefined : pidsAllocatedSince(since);
  let entries: Iterable<string>;
  if (pids !== undefined && pids.to - pids.from < DIRECT_PID_RANGE) {
    // A few pids (the usual after a short job): each is looked at, rather than listing every process on the machine.
    entries = Array.from({ length: pids.to - pids.from + 1 }, (_, index) => String(pids.from + index));
  } else {
    try {
      entries = readdirSync("/proc");
    } catch {
      return [];
    }
  }
  const found: { pid: number; pgid: number; jobId: string }[] = [];
  for (const entry of entries) {
    if (entry.charCodeAt(0) < 48 || entry.charCodeAt(0) > 57) continue;
    if (pids !== undefined) {
      const pid = Number(entry);
      if (pid < pids.from || pid > pids.to) continue;
    }
    const stat = readProcStat(entry);
    // Gone meanwhile, a zombie, or started before the job's first process: not
    // one of its descendants, whose environment need not be read (this scan runs after every job).
    if (stat === undefined || stat.state === "Z" || (since?.ticks !== undefined && stat.startTicks < since.ticks)) continue;
    try {
      const environ = readFileSync(`/proc/${entry}/environ`, "latin1");
      const jobId = environ
        .split("\0")
        .find((variable) => variable.startsWith(prefix) && jobIds.has(variable.slice(prefix.length)))
        ?.slice(prefix.length);
      if (jobId !== undefined) found.push({ pid: Number(entry), pgid: stat.pgid, jobId });
    } catch {
      // ended meanwhile, or another user's
    }
  }
  return found;
}

/** Signals each process, and the group of each that leads one. */
function signalProcesses(processes: readonly { pid: number; pgid: number }[], signal: NodeJS.Signals): void {
  for (const { pid, pgid } of processes) {
    if (pgid === pid) killGroup(pgid, signal);
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

/**
 * Stops what is left of jobs whose kaos died (SIGKILL, a crash): their train
 * scripts and builds keep running without anyone to record them. SIGTERM,
 * then SIGKILL after `graceMs`. Only processes tagged with the job's id are
 * touched, so a recorded pid that now belongs to someone else is safe.
 */
export async function stopOrphanedJobs(jobIds: readonly string[], graceMs = 3_000): Promise<number> {
  // Every up recovers, mostly with nothing to recover: no pass over /proc for no job.
  if (jobIds.length === 0) return 0;
  const ids = new Set(jobIds);
  const orphans = processesOfJobs(ids);
  if (orphans.length === 0) return 0;
  signalProcesses(orphans, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && processesOfJobs(ids).length > 0) {
    await new Promise((done) => setTimeout(done, 50));
  }
  signalProcesses(processesOfJobs(ids), "SIGKILL");
  return new Set(orphans.map((orphan) => orphan.jobId)).size;
}

/** The process groups of the jobs and builds this process runs. */
const liveGroups = new Set<number>();
let killingGroupsOnExit = false;

/**
 * Each job runs in a process group of its own, which the terminal's Ctrl-C
 * does not reach: a kaos that exits at once (a second Ctrl-C) takes them
 * with it, rather than leave a script that ignores SIGTERM running for good.
 * Their records are left as a crash leaves them, for the next run to recover.
 */
function trackGroup(pid: number): void {
  if (!killingGroupsOnExit) {
    killingGroupsOnExit = true;
    process.on("exit", () => {
      for (const group of liveGroups) killGroup(group, "SIGKILL");
    });
  }
  liveGroups.add(pid);
}

export function spawnLogged(options: SpawnOptions): RunningProcess {
  const log = new LogFile(options.logFile, options.logLimitBytes ?? logLimitBytes());
  const jobId = options.jobId;
  const child = spawn(options.command, options.args, {
    cwd: options.cwd,
    env: jobId === undefined ? options.env : { ...options.env, [JOB_TAG]: jobId },
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stdout = new LineLogger(log, "stdout");
  const stderr = new LineLogger(log, "stderr");
  child.stdout?.setEncoding("utf8").on("data", (chunk: string) => stdout.write(chunk));
  child.stderr?.setEncoding("utf8").on("data", (chunk: string) => stderr.write(chunk));
  let reason: string | undefined;
  let oomKilled = false;
  let killTimer: NodeJS.Timeout | undefined;
  let memoryTimer: NodeJS.Timeout | undefined;
  const pid = child.pid ?? -1;
  // Read now, while the child cannot have been reaped: it bounds which processes may be its descendants.
  const jobStart: JobStart | undefined =
    jobId !== undefined && pid > 0 ? { pid, ticks: processStartTicks(pid), startedAtMs: Date.now() } : undefined;
  if (pid > 0) trackGroup(pid);

  const stop = (why: string, graceMs = 5_000) => {
    if (reason === undefined) reason = why;
    killGroup(pid, "SIGTERM");
    if (killTimer === undefined) {
      killTimer = setTimeout(() => killGroup(pid, "SIGKILL"), graceMs);
      killTimer.unref();
    }
  };

  if (options.memoryLimitBytes !== undefined && pid > 0) {
    const limit = options.memoryLimitBytes;
    memoryTimer = setInterval(() => {
      const used = groupResidentBytes(pid);
      if (used > limit && !oomKilled) {
        oomKilled = true;
        reason = `OOMKilled: used ${formatBytes(used)}, over the memory limit of ${options.memoryLimitText ?? formatBytes(limit)}`;
        killGroup(pid, "SIGKILL");
      }
    }, 100);
    memoryTimer.unref();
  }

  const done = new Promise<ProcessResult>((resolve) => {
    let settled = false;
    child.on("error", (error) => {
      reason ??= `could not start ${options.command}: ${error.message}`;
      if (child.pid === undefined && !settled) {
        settled = true;
        if (memoryTimer) clearInterval(memoryTimer);
        void log.end().then(() => resolve({ exitCode: null, signal: null, reason, oomKilled, logError: log.error }));
      }
    });
    child.on("exit", () => {
      // Children that outlived the script (daemons it forked) go with it. Now,
      // not at "close": a daemon holding the script's stdout would otherwise
      // keep the job running until the daemon ends.
      killGroup(pid, "SIGKILL");
      if (jobId !== undefined) signalJob(jobId, "SIGKILL", jobStart);
      // A process that escaped both (new session, scrubbed environment) may
      // still hold the pipes: stop waiting for them after a moment.
      setTimeout(() => {
        child.stdout?.destroy();
        child.stderr?.destroy();
      }, 2_000).unref();
    });
    child.on("close", (exitCode, signal) => {
      if (settled) return;
      settled = true;
      if (memoryTimer) clearInterval(memoryTimer);
      if (killTimer) clearTimeout(killTimer);
      killGroup(pid, "SIGKILL");
      liveGroups.delete(pid);
      stdout.flush();
      stderr.flush();
      void log.end().then(() => resolve({ exitCode, signal, reason, oomKilled, logError: log.error }));
    });
  });
  return { pid, done, stop };
}
