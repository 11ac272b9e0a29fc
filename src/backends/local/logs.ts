/**
 * `kaos train logs` on the local backend: the job's log file as it grows,
 * until the job ends (with `follow`), and what was dropped from its middle.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { open } from "node:fs/promises";
import type { LogEnd, LogOutput } from "../../core/backend.js";
import { jobPaths, stateDirOf } from "../../core/layout.js";
import type { JobRecord, StateStore } from "../../core/state.js";
import { droppedNoteOf, LOG_LIMIT_VARIABLE } from "./process.js";

const CHUNK_BYTES = 1 << 20;
const FOLLOW_INTERVAL_MS = 200;

export async function* localJobLogs(root: string, state: StateStore, jobRef: string, follow: boolean): AsyncGenerator<LogOutput> {
  const job = state.resolveJob(jobRef);
  const file = job.logFile ?? jobPaths(stateDirOf(root), job.id).log;
  let offset = 0;
  async function* readNew(): AsyncGenerator<LogOutput> {
    if (!existsSync(file)) return;
    const size = statSync(file).size;
    if (size <= offset) return;
    const handle = await open(file, "r");
    try {
      while (offset < size) {
        const buffer = Buffer.alloc(Math.min(CHUNK_BYTES, size - offset));
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
        yield { kind: "chunk", data: buffer.subarray(0, bytesRead) };
      }
    } finally {
      await handle.close();
    }
  }
  // Said after the log, where it is seen: the line in the log that says it may be far up.
  function droppedNote(): LogOutput | undefined {
    let note: { droppedBytes: number; limitBytes: number };
    try {
      note = JSON.parse(readFileSync(droppedNoteOf(file), "utf8")) as typeof note;
    } catch {
      return undefined;
    }
    return {
      kind: "note",
      message: `note: ${note.droppedBytes} bytes of job ${job.id}'s output were dropped from the middle of its log (cap ${note.limitBytes} bytes; ${LOG_LIMIT_VARIABLE} sets it)`,
    };
  }
  yield* readNew();
  if (!follow) {
    if (!existsSync(file)) yield { kind: "note", message: `job ${job.id} has no log yet (${job.state})` };
    const note = droppedNote();
    if (note) yield note;
    return;
  }
  let current = job;
  for (;;) {
    current = state.getJob(job.id) ?? current;
    yield* readNew();
    if (current.state !== "running" && current.state !== "queued") break;
    // Killed kaos processes record nothing more: following such a job would never end.
    if (!state.runOwnerAlive(current.runId)) {
      yield* readNew();
      yield { ...endOf(current), reason: "the kaos that ran it is gone; the next kaos up reruns it" };
      return;
    }
    await new Promise((done) => setTimeout(done, FOLLOW_INTERVAL_MS));
  }
  yield* readNew();
  const note = droppedNote();
  if (note) yield note;
  yield endOf(current);
}

function endOf(job: JobRecord): LogEnd {
  return { kind: "end", job: job.id, state: job.state, exitCode: job.exitCode, reason: job.reason };
}
