/**
 * Live updates as server-sent events. One timer polls for every client,
 * and only while clients are connected: SQLite's data_version tells in one
 * cheap statement whether any writer committed since the last look, and only
 * then are the new jobs and the unfinished ones read again. A client that
 * follows a job (`?job=ID`) also gets its log as it grows and its step
 * metrics when its .jsonl files change.
 *
 * Events: `jobs` (the jobs that changed, as list rows), `log` (text appended
 * to the followed job's log), `series` and `metrics` (the followed job's), and
 * `reset` when the store was removed or replaced: what the page shows is gone.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { isTerminalJobState, type JobRecord } from "../core/state.js";
import { readMetricsAndSeries } from "../core/metrics.js";
import { CHART_POINTS, jobSummary, readLogChunk } from "./api.js";
import type { StoreReader } from "./reader.js";

export const POLL_MS = 300;
const MAX_LOG_PIECES_PER_TICK = 4;
/** A comment line now and then keeps proxies and browsers from dropping an idle stream. */
const HEARTBEAT_MS = 15_000;

interface Follow {
  job: JobRecord;
  logOffset: number;
  seriesStamp: string;
  /** Set once the job has ended and its last log and metrics were sent. */
  done: boolean;
}

interface Client {
  res: ServerResponse;
  follow: Follow | undefined;
}

/** What a job looked like when last sent: a change in any of these is news. */
function stampOf(job: JobRecord): string {
  return `${job.state}|${job.startedAt}|${job.finishedAt}|${job.exitCode}|${job.reason}|${job.collectedAt}`;
}

export class EventHub {
  private readonly clients = new Set<Client>();
  private timer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private version = -1;
  private lastSeq = -1;
  private generation = -1;
  /** Unfinished jobs, by id, with their last stamp: the ones whose rows are read again on every change. */
  private readonly watched = new Map<string, string>();

  constructor(
    private readonly reader: StoreReader,
    private readonly pollMs = POLL_MS,
  ) {}

  /** Serves one event stream until the client goes away. */
  open(req: IncomingMessage, res: ServerResponse, query: URLSearchParams, followed: JobRecord | undefined): void {
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-store",
      connection: "keep-alive",
      "x-accel-buffering": "no",
    });
    res.write("retry: 1000\n\n");
    const logOffset = Number(query.get("logOffset") ?? "0");
    const client: Client = {
      res,
      follow:
        followed === undefined
          ? undefined
          : {
              job: followed,
              logOffset: Number.isSafeInteger(logOffset) && logOffset >= 0 ? logOffset : 0,
              seriesStamp: seriesStamp(this.reader.outDirOf(followed)),
              done: false,
            },
    };
    this.clients.add(client);
    req.on("close", () => {
      this.clients.delete(client);
      if (this.clients.size === 0) this.stop();
    });
    this.start();
    this.tick();
  }

  close(): void {
    for (const client of this.clients) client.res.end();
    this.clients.clear();
    this.stop();
  }

  private start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => this.tick(), this.pollMs);
    this.heartbeat = setInterval(() => {
      for (const client of this.clients) client.res.write(": ping\n\n");
    }, HEARTBEAT_MS);
    this.timer.unref();
    this.heartbeat.unref();
  }

  private stop(): void {
    clearInterval(this.timer);
    clearInterval(this.heartbeat);
    this.timer = undefined;
    this.heartbeat = undefined;
  }

  private tick(): void {
    try {
      this.noticeNewStore();
      const changed = this.changedJobs();
      if (changed.length > 0) this.broadcast("jobs", changed.map(jobSummary));
      for (const client of this.clients) if (client.follow !== undefined) this.followJob(client, client.follow, changed);
    } catch (error) {
      // A busy or briefly unreadable store is tried again on the next tick.
      this.broadcast("problem", { message: error instanceof Error ? error.message : String(error) });
    }
  }

  /** A store removed or replaced under the dashboard starts everything over, on the server and in the pages. */
  private noticeNewStore(): void {
    const generation = this.reader.generation();
    if (generation === this.generation) return;
    const first = this.generation < 0;
    this.generation = generation;
    if (first) return;
    this.lastSeq = -1;
    this.watched.clear();
    for (const client of this.clients) if (client.follow !== undefined) client.follow.done = true;
    this.broadcast("reset", {});
  }

  private changedJobs(): JobRecord[] {
    const store = this.reader.get();
    const version = store.dataVersion();
    if (this.lastSeq < 0) {
      // The first look: remember where the jobs end and which are unfinished; nothing is news yet.
      this.lastSeq = store.lastJobSeq();
      this.version = version;
      for (const state of ["queued", "running"] as const) {
        for (const job of store.listJobs({ state })) this.watched.set(job.id, stampOf(job));
      }
      return [];
    }
    if (version === this.version) return [];
    this.version = version;
    const { lastSeq, jobs } = store.changesSince(this.lastSeq, [...this.watched.keys()]);
    this.lastSeq = lastSeq;
    const changed: JobRecord[] = [];
    for (const job of jobs) {
      const stamp = stampOf(job);
      if (this.watched.get(job.id) === stamp) continue;
      changed.push(job);
      if (isTerminalJobState(job.state)) this.watched.delete(job.id);
      else this.watched.set(job.id, stamp);
    }
    return changed;
  }

  private followJob(client: Client, follow: Follow, changed: readonly JobRecord[]): void {
    if (follow.done) return;
    const update = changed.find((job) => job.id === follow.job.id);
    if (update !== undefined) follow.job = update;
    // Everything the job wrote is read once more after it ended, then it is left alone.
    const ended = isTerminalJobState(follow.job.state);
    // A few pieces a tick at most: a job printing fast is caught up with over the next ticks.
    for (let pieces = 0; pieces < MAX_LOG_PIECES_PER_TICK; pieces++) {
      const chunk = readLogChunk(this.reader.logFileOf(follow.job), follow.logOffset);
      if (chunk.next === follow.logOffset) break;
      send(client.res, "log", { offset: chunk.offset, next: chunk.next, text: chunk.text });
      follow.logOffset = chunk.next;
    }
    const outDir = this.reader.outDirOf(follow.job);
    const stamp = seriesStamp(outDir);
    if (stamp !== follow.seriesStamp || (ended && update !== undefined)) {
      follow.seriesStamp = stamp;
      const { metrics, series } = readMetricsAndSeries(outDir, CHART_POINTS);
      send(client.res, "series", { id: follow.job.id, ...series });
      send(client.res, "metrics", { id: follow.job.id, metrics: metrics.values });
    }
    if (ended && readLogChunk(this.reader.logFileOf(follow.job), follow.logOffset).next === follow.logOffset) follow.done = true;
  }

  private broadcast(event: string, data: unknown): void {
    for (const client of this.clients) send(client.res, event, data);
  }
}

function send(res: ServerResponse, event: string, data: unknown): void {
  res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

/** Names, sizes and times of the job's metric files: when it moves, the metrics are read again. */
function seriesStamp(outDir: string): string {
  const dir = join(outDir, "metrics");
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch {
    return "";
  }
  return names
    .map((name) => {
      try {
        const stats = statSync(join(dir, name));
        return `${name}:${stats.size}:${stats.mtimeMs}`;
      } catch {
        return name;
      }
    })
    .join("|");
}
