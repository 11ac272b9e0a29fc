/**
 * The dashboard's JSON API: short reads of the state store and of job files.
 * Lists come in pages (`?limit=N&cursor=C`, the cursor taken from the
 * previous page's `next`), so a project with many thousands of jobs costs the
 * same to open as a small one. A sweep comes in numbered pages instead
 * (`?limit=N&offset=O&sort=COLUMN&order=desc&filter=TEXT`): it is ordered
 * by any param or metric, so the page shows where it stands in the whole.
 */
import { closeSync, fstatSync, lstatSync, openSync, readdirSync, readSync } from "node:fs";
import { join, relative } from "node:path";
import { KaosError, describeError } from "../core/errors.js";
import { readMetricSeries, readMetrics, type MetricSeries } from "../core/metrics.js";
import { leadingMetric, numericMetricNames } from "../core/sweep.js";
import type { JobRecord, JobState, Stage } from "../core/state.js";
import type { StoreReader } from "./reader.js";
import type { SweepReader, SweepView } from "./sweep.js";
import { cellValue, parseFilter, sortRows, type SweepSort } from "./sweep-query.js";

export const DEFAULT_PAGE = 50;
export const MAX_PAGE = 500;
/** A log is sent in pieces of at most this many bytes: a job's log may be large. */
export const LOG_CHUNK_BYTES = 256 << 10;
/** The step curves of at most this many jobs are sent at once. */
const MAX_SERIES_JOBS = 50;
/**
 * A chart's points per field and job: a long run logs millions of steps, which
 * neither the page nor its reader needs. More are thinned, evenly spread, keeping the last.
 */
export const CHART_POINTS = 2000;
/** The most points of a sweep's chart sent at once: every row of the largest sweep a pipeline expands to. */
const MAX_POINTS = 100_000;
/** Output listings stop here: the script may have written anything. */
const MAX_OUTPUT_ENTRIES = 500;

export interface ApiReply {
  status: number;
  body: unknown;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const STAGES: readonly Stage[] = ["ingest", "build", "train"];
const STATES: readonly JobState[] = ["queued", "running", "succeeded", "failed", "cancelled"];

function pageOf(query: URLSearchParams): { limit: number; cursor?: string } {
  const raw = query.get("limit");
  const limit = raw === null ? DEFAULT_PAGE : Number(raw);
  if (!Number.isInteger(limit) || limit < 1) throw new ApiError(400, `limit: expected a whole number, 1 or more, found "${raw}"`);
  const cursor = query.get("cursor") ?? undefined;
  return { limit: Math.min(limit, MAX_PAGE), ...(cursor ? { cursor } : {}) };
}

function oneOf<T extends string>(query: URLSearchParams, name: string, allowed: readonly T[]): T | undefined {
  const value = query.get(name);
  if (value === null || value === "") return undefined;
  if (!allowed.includes(value as T)) throw new ApiError(400, `${name}: expected one of ${allowed.join(", ")}, found "${value}"`);
  return value as T;
}

function optional(query: URLSearchParams, name: string): string | undefined {
  const value = query.get(name);
  return value === null || value === "" ? undefined : value;
}

/** What a list shows of a job. */
export function jobSummary(job: JobRecord) {
  return {
    id: job.id,
    runId: job.runId,
    stack: job.stack,
    pipeline: job.pipeline,
    stage: job.stage,
    state: job.state,
    params: job.params,
    sweepIndex: job.sweepIndex,
    sweepSize: job.sweepSize,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
    exitCode: job.exitCode,
    reason: job.reason,
    createdAt: job.createdAt,
    collectedAt: job.collectedAt,
  };
}

export type JobSummary = ReturnType<typeof jobSummary>;

/** A sweep's rows as a query asked for them, kept while the sweep read stays the same. */
/** The rows a filter keeps of one sweep view, and (`sort` set) in an order. */
interface KeptRows {
  view: SweepView;
  filter: string;
  sort: string;
  rows: SweepView["items"];
}

/** One page of a sweep: where it stands among the rows the filter keeps, in the order asked for. */
export interface SweepPage extends Omit<SweepView, "items"> {
  paramNames: string[];
  /** Rows of the whole sweep. */
  total: number;
  /** Rows the filter keeps. */
  matched: number;
  offset: number;
  limit: number;
  sort: SweepSort | null;
  filter: string;
  items: SweepView["items"];
}

function sortOf(query: URLSearchParams): SweepSort | undefined {
  const column = optional(query, "sort");
  if (column === undefined) return undefined;
  const order = oneOf(query, "order", ["asc", "desc"] as const) ?? "asc";
  return { column, descending: order === "desc" };
}

function offsetOf(query: URLSearchParams): number {
  const raw = query.get("offset") ?? "0";
  const offset = Number(raw);
  if (!Number.isSafeInteger(offset) || offset < 0) throw new ApiError(400, `offset: expected a whole number, 0 or more, found "${raw}"`);
  return offset;
}

export class Api {
  // Apart, so that the chart's request (filtered rows) and the table's (also sorted) do not evict each other.
  private readonly filtered = new Map<string, KeptRows>();
  private readonly ordered = new Map<string, KeptRows>();

  constructor(
    private readonly reader: StoreReader,
    private readonly sweeps: SweepReader,
  ) {}

  /** Answers GET `path` with `query`; throws ApiError for what the client got wrong. */
  async handle(path: string, query: URLSearchParams): Promise<ApiReply> {
    let parts: string[];
    try {
      parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    } catch {
      throw new ApiError(400, `the path ${path} is not valid percent-encoding`);
    }
    const [api, kind, name, detail, ...rest] = parts;
    if (api !== "api" || rest.length > 0) throw new ApiError(404, `no such API path: ${path}`);
    if (kind === "overview" && name === undefined) return ok(await this.overview());
    if (kind === "runs" && name === undefined) return ok(this.runs(query));
    if (kind === "jobs" && name === undefined) return ok(this.jobs(query));
    if (kind === "jobs" && name !== undefined && detail === undefined) return ok(this.job(name));
    if (kind === "jobs" && name !== undefined && detail === "log") return ok(this.log(name, query));
    if (kind === "jobs" && name !== undefined && detail === "series") return ok(this.series(this.requireJob(name)));
    if (kind === "series" && name === undefined) return ok(this.manySeries(query));
    if (kind === "pipelines" && name !== undefined && detail === "sweep") {
      return ok(query.has("limit") ? await this.sweepPage(name, query) : await this.sweep(name));
    }
    if (kind === "pipelines" && name !== undefined && detail === "points") return ok(await this.sweepPoints(name, query));
    throw new ApiError(404, `no such API path: ${path}`);
  }

  /** The pipelines the config names and those with recorded jobs, and what is wrong with a config that does not load. */
  async overview() {
    const store = this.reader.get();
    const pipelines = new Map<string, { name: string; jobs: Partial<Record<JobState, number>>; builds: number; total: number }>();
    let configError: string | null = null;
    try {
      for (const name of (await this.sweeps.pipelineNames()) ?? []) pipelines.set(name, { name, jobs: {}, builds: 0, total: 0 });
    } catch (error) {
      configError = describeError(error);
    }
    for (const { pipeline, stage, state, count } of store.pipelineCounts()) {
      const entry = pipelines.get(pipeline) ?? { name: pipeline, jobs: {}, builds: 0, total: 0 };
      if (stage === "train") {
        entry.jobs[state] = (entry.jobs[state] ?? 0) + count;
        entry.total += count;
      } else if (stage === "build") entry.builds += count;
      pipelines.set(pipeline, entry);
    }
    return { root: this.reader.root, configError, pipelines: [...pipelines.values()] };
  }

  runs(query: URLSearchParams) {
    const { runs, next } = this.reader.get().pageRuns(pageOf(query));
    return { items: runs, next };
  }

  jobs(query: URLSearchParams) {
    const filter = {
      pipeline: optional(query, "pipeline"),
      runId: optional(query, "run"),
      stack: optional(query, "stack"),
      stage: oneOf(query, "stage", STAGES),
      state: oneOf(query, "state", STATES),
    };
    const { jobs, next } = this.reader.get().pageJobs(filter, pageOf(query));
    return { items: jobs.map(jobSummary), next };
  }

  job(id: string) {
    const job = this.requireJob(id);
    const outDir = this.reader.outDirOf(job);
    const metrics = readMetrics(outDir);
    return {
      ...jobSummary(job),
      keys: { job: job.key, env: job.envKey, source: job.sourceKey, data: job.dataKey, params: job.paramsKey },
      metrics: metrics.values,
      metricsSkipped: metrics.skipped,
      outputDir: outDir,
      outputs: job.collectedAt === null ? listOutputs(outDir) : [],
      logFile: this.reader.logFileOf(job),
    };
  }

  /**
   * A piece of a job's log from `offset`, or with `tail=1` its last piece
   * (from a line start); `next` is where the following piece starts.
   */
  log(id: string, query: URLSearchParams) {
    const job = this.requireJob(id);
    const file = this.reader.logFileOf(job);
    if (query.get("tail") === "1") return { id: job.id, state: job.state, ...readLogChunk(file, 0, { tail: true }) };
    const offset = Number(query.get("offset") ?? "0");
    if (!Number.isSafeInteger(offset) || offset < 0) throw new ApiError(400, `offset: expected a whole number, 0 or more`);
    return { id: job.id, state: job.state, ...readLogChunk(file, offset) };
  }

  series(job: JobRecord): MetricSeries & { id: string } {
    return { id: job.id, ...readMetricSeries(this.reader.outDirOf(job), { maxPoints: CHART_POINTS }) };
  }

  manySeries(query: URLSearchParams) {
    const ids = (query.get("ids") ?? "").split(",").filter(Boolean);
    if (ids.length > MAX_SERIES_JOBS) throw new ApiError(400, `ids: at most ${MAX_SERIES_JOBS} jobs at once, found ${ids.length}`);
    return { items: ids.map((id) => this.series(this.requireJob(id))) };
  }

  /** The pipeline's sweep: its current grid, or for a pipeline the config no longer names, the jobs of its last run. */
  async sweep(pipeline: string): Promise<SweepView> {
    const sweep = await this.sweeps.sweep(pipeline, () => this.lastRunSweep(pipeline));
    if (sweep === undefined) throw new ApiError(404, `no pipeline '${pipeline}' in the config or the recorded jobs`);
    return sweep;
  }

  /**
   * One page of the sweep, filtered and sorted as the page's table asks
   * (the filter language and the order of `sweep-query.ts`). An offset past
   * the last row gives the last page: the sweep may have shrunk since the
   * address was written.
   */
  async sweepPage(pipeline: string, query: URLSearchParams): Promise<SweepPage> {
    const { limit } = pageOf(query);
    const sort = sortOf(query);
    const filter = query.get("filter") ?? "";
    const view = await this.sweep(pipeline);
    const rows = this.orderedRows(view, filter, sort);
    const lastPage = rows.length === 0 ? 0 : Math.floor((rows.length - 1) / limit) * limit;
    const offset = Math.min(Math.floor(offsetOf(query) / limit) * limit, lastPage);
    const { items, ...about } = view;
    return {
      ...about,
      paramNames: [...new Set(items.flatMap((row) => Object.keys(row.params)))].sort(),
      total: items.length,
      matched: rows.length,
      offset,
      limit,
      sort: sort ?? null,
      filter,
      items: rows.slice(offset, offset + limit),
    };
  }

  /**
   * The sweep's chart: param `x` against metric `y` for every row the filter
   * keeps that has both (`y` a number), as two columns.
   */
  async sweepPoints(pipeline: string, query: URLSearchParams) {
    const x = optional(query, "x");
    const y = optional(query, "y");
    if (x === undefined || y === undefined) throw new ApiError(400, "x and y: expected a param and a metric of the sweep");
    const rows = this.filteredRows(await this.sweep(pipeline), query.get("filter") ?? "");
    const xs: unknown[] = [];
    const ys: number[] = [];
    for (const row of rows) {
      const value = row.metrics[y];
      const param = cellValue(row, x);
      if (typeof value !== "number" || param === undefined) continue;
      if (xs.length === MAX_POINTS) break;
      xs.push(param);
      ys.push(value);
    }
    return { x, y, xs, ys };
  }

  /** The rows `filter` keeps, in the sweep's order: kept per pipeline. */
  private filteredRows(view: SweepView, filter: string): SweepView["items"] {
    const kept = this.filtered.get(view.pipeline);
    if (kept !== undefined && kept.view === view && kept.filter === filter) return kept.rows;
    const rows = filter.trim() === "" ? view.items : view.items.filter(parseFilter(filter));
    this.filtered.set(view.pipeline, { view, filter, sort: "", rows });
    return rows;
  }

  /** The rows `filter` keeps, ordered by `sort`: kept per pipeline, so that paging through costs a slice. */
  private orderedRows(view: SweepView, filter: string, sort: SweepSort | undefined): SweepView["items"] {
    const sortKey = sort === undefined ? "" : `${sort.descending ? "-" : "+"}${sort.column}`;
    const kept = this.ordered.get(view.pipeline);
    if (kept !== undefined && kept.view === view && kept.filter === filter && kept.sort === sortKey) return kept.rows;
    const rows = sortRows(this.filteredRows(view, filter), sort);
    this.ordered.set(view.pipeline, { view, filter, sort: sortKey, rows });
    return rows;
  }

  private lastRunSweep(pipeline: string): SweepView | undefined {
    const store = this.reader.get();
    const [latest] = store.listJobs({ pipeline, stage: "train", limit: 1 });
    if (latest === undefined) return undefined;
    const items = store.sweepMembers(latest.runId, pipeline).map((job, index) => ({
      index,
      key: job.key,
      id: job.id,
      runId: job.runId,
      state: job.state,
      params: job.params,
      metrics: job.collectedAt === null ? this.sweeps.metricsOf(job).values : {},
      finishedAt: job.finishedAt,
      collectedAt: job.collectedAt,
    }));
    return { pipeline, source: "run", metricNames: numericMetricNames(items), leadingMetric: leadingMetric(items) ?? null, items };
  }

  requireJob(id: string): JobRecord {
    try {
      return this.reader.get().resolveJob(id);
    } catch (error) {
      if (error instanceof KaosError && (error.code === "JOB_NOT_FOUND" || error.code === "USAGE")) throw new ApiError(404, error.message);
      if (error instanceof KaosError && error.code === "JOB_AMBIGUOUS") throw new ApiError(400, error.message);
      throw error;
    }
  }
}

function ok(body: unknown): ApiReply {
  return { status: 200, body };
}

/**
 * At most {@link LOG_CHUNK_BYTES} of `file` from `offset`, cut at the last
 * whole line unless that leaves nothing; with `tail`, the last such piece,
 * starting at a line.
 */
export function readLogChunk(
  file: string,
  offset: number,
  options: { tail?: boolean } = {},
): { offset: number; next: number; size: number; text: string } {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch {
    return { offset, next: offset, size: 0, text: "" };
  }
  try {
    const size = fstatSync(fd).size;
    let start = Math.min(offset, size);
    if (options.tail === true && size > LOG_CHUNK_BYTES) {
      // From the first line that starts within the last piece.
      start = size - LOG_CHUNK_BYTES;
      const head = Buffer.alloc(Math.min(LOG_CHUNK_BYTES, 64 << 10));
      const headRead = head.subarray(0, readSync(fd, head, 0, head.length, start));
      const newline = headRead.indexOf(10);
      if (newline >= 0) start += newline + 1;
      else {
        // No line starts there: from the next character then, not from the middle of one.
        let skip = 0;
        while (skip < 3 && skip < headRead.length && (headRead[skip]! & 0xc0) === 0x80) skip += 1;
        start += skip;
      }
    }
    const buffer = Buffer.alloc(Math.min(LOG_CHUNK_BYTES, size - start));
    const read = buffer.length === 0 ? 0 : readSync(fd, buffer, 0, buffer.length, start);
    let end = read;
    const newline = buffer.lastIndexOf(10, read - 1);
    if (newline >= 0) end = newline + 1;
    else end = wholeCharacters(buffer, read) || read;
    return { offset: start, next: start + end, size, text: buffer.toString("utf8", 0, end) };
  } finally {
    closeSync(fd);
  }
}

/**
 * How many of the first `length` bytes end on a UTF-8 character boundary: a
 * line longer than a piece is cut between characters, so that neither piece
 * shows a character split in two as replacement marks.
 */
function wholeCharacters(buffer: Buffer, length: number): number {
  let start = length - 1;
  // Back over at most three continuation bytes (10xxxxxx) to the last character's first byte.
  while (start > 0 && length - start < 4 && (buffer[start]! & 0xc0) === 0x80) start -= 1;
  const lead = buffer[start] ?? 0;
  const size = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return start + size > length ? start : length;
}

function listOutputs(outDir: string): { path: string; size: number }[] {
  const found: { path: string; size: number }[] = [];
  let entries: string[];
  try {
    entries = readdirSync(outDir, { recursive: true, encoding: "utf8" });
  } catch {
    return found;
  }
  for (const entry of entries.sort()) {
    if (found.length >= MAX_OUTPUT_ENTRIES) break;
    try {
      const stats = lstatSync(join(outDir, entry));
      if (stats.isFile()) found.push({ path: relative(outDir, join(outDir, entry)), size: stats.size });
    } catch {
      // Gone since it was listed.
    }
  }
  return found;
}
