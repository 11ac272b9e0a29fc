/**
 * A job's metrics: the JSON objects its script left in OUT/metrics/*.json,
 * and the per-step series it appended to OUT/metrics/*.jsonl while it
 * trained. Nested objects of a .json file flatten to dotted names
 * (`{"val": {"loss": 0.1}}` is `val.loss`); whatever cannot be a metric (a
 * list, null, a file that is not JSON, a bad line) is skipped and said why,
 * never silently dropped nor passed off as a metric.
 */
import { closeSync, constants, fstatSync, openSync, readdirSync, readSync } from "node:fs";
import { join } from "node:path";
import { describeError } from "./errors.js";

/** Outputs are whatever the script left: a metrics file larger than this is not read. */
export const MAX_METRICS_FILE_BYTES = 16 << 20;

/** Past this many problems in one JSON-lines file, the rest are counted rather than listed. */
const MAX_SKIPPED_PER_FILE = 10;

/** Objects nested deeper than this are skipped: the names would be unreadable, the recursion unbounded. */
const MAX_DEPTH = 16;

export type MetricValue = number | string | boolean;

export interface SkippedMetric {
  /** The file, relative to the job's output directory (`metrics/eval.json`), with `:LINE` for a line of a JSON-lines file. */
  file: string;
  /** The dotted name of the value skipped; absent when the whole file was. */
  key?: string;
  reason: string;
}

export interface JobMetrics {
  values: Record<string, MetricValue>;
  skipped: SkippedMetric[];
}

/**
 * Python's json module writes float("nan") and the infinities as bare `NaN`,
 * `Infinity` and `-Infinity`, which JSON has not: a run whose loss diverged
 * would lose every metric of its file. Such a text is read with each of them
 * in place of a marked string, so that only those values are skipped.
 */
const NON_FINITE_TOKEN = /"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)/g;
const NON_FINITE_MARK = "\u0000kaos non-finite ";

function parseMetricsJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    let found = false;
    const marked = text.replace(NON_FINITE_TOKEN, (match, token: string | undefined) => {
      if (token === undefined) return match;
      found = true;
      return JSON.stringify(`${NON_FINITE_MARK}${token}`);
    });
    if (!found) throw error;
    try {
      return JSON.parse(marked) as unknown;
    } catch {
      throw error;
    }
  }
}

/** `NaN`, `Infinity` or `-Infinity` where the text had it, else undefined. */
function nonFinite(value: unknown): string | undefined {
  return typeof value === "string" && value.startsWith(NON_FINITE_MARK) ? value.slice(NON_FINITE_MARK.length) : undefined;
}

function kindOf(value: unknown): string {
  const token = nonFinite(value);
  if (token !== undefined) return token;
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/** Defined, not assigned: a metric named `__proto__` is a metric, not the object's prototype. */
function setMetric<T>(values: Record<string, T>, key: string, value: T): void {
  Object.defineProperty(values, key, { value, enumerable: true, writable: true, configurable: true });
}

function flatten(
  value: Record<string, unknown>,
  prefix: string,
  depth: number,
  file: string,
  metrics: JobMetrics,
  given: Set<string>,
): void {
  for (const [name, item] of Object.entries(value)) {
    const key = `${prefix}${name}`;
    if (nonFinite(item) !== undefined) {
      given.add(key);
      metrics.skipped.push({ file, key, reason: `${kindOf(item)}; expected a finite number` });
    } else if (typeof item === "number" || typeof item === "string" || typeof item === "boolean") {
      setMetric(metrics.values, key, item);
    } else if (typeof item === "object" && item !== null && !Array.isArray(item)) {
      if (depth >= MAX_DEPTH) metrics.skipped.push({ file, key, reason: `nested deeper than ${MAX_DEPTH} levels` });
      else flatten(item as Record<string, unknown>, `${key}.`, depth + 1, file, metrics, given);
    } else {
      metrics.skipped.push({ file, key, reason: `${kindOf(item)}; expected a number (or a string, a boolean, an object of them)` });
    }
  }
}

/**
 * The bytes of a regular file, at most `maxBytes`, or why not. Opened without
 * blocking and checked on the open descriptor: a FIFO would block a read
 * forever, a link to /dev/zero never end it, a huge file exhaust memory. A
 * file still being appended is read up to the size it had when opened.
 */
function readRegularFile(path: string, maxBytes: number): { text: string } | { reason: string } {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    return { reason: `unreadable (${describeError(error)})` };
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) return { reason: "not a regular file" };
    if (stat.size > maxBytes) return { reason: `${stat.size} bytes, more than ${maxBytes}` };
    const buffer = Buffer.alloc(stat.size);
    let filled = 0;
    while (filled < buffer.length) {
      const read = readSync(fd, buffer, filled, buffer.length - filled, filled);
      if (read === 0) break;
      filled += read;
    }
    return { text: buffer.toString("utf8", 0, filled) };
  } catch (error) {
    return { reason: `unreadable (${describeError(error)})` };
  } finally {
    closeSync(fd);
  }
}

function metricFiles(outDir: string, extension: ".json" | ".jsonl"): string[] {
  try {
    return readdirSync(join(outDir, "metrics"))
      .filter((name) => name.endsWith(extension))
      .sort();
  } catch {
    return [];
  }
}

/** One point of a series: the step it was logged at and the value. */
export interface MetricPoint {
  step: number;
  value: number;
}

export interface MetricSeries {
  /** Per field, its points in the order written: files by name, lines in order. */
  series: Record<string, MetricPoint[]>;
  /**
   * Per field whose points were thinned out to `maxPoints`, how many its files
   * hold: the series then keeps points evenly spread over them, and the last.
   * Absent when no field was.
   */
  totals?: Record<string, number>;
  skipped: SkippedMetric[];
}

/** How much of a field's series its files hold: the number of points and the highest step. */
export interface SeriesExtent {
  points: number;
  lastStep: number;
}

/** A series file is read this much at a time: a long training run's file may be gigabytes. */
const SERIES_CHUNK_BYTES = 1 << 20;

/** A line longer than this is skipped and said so, not gathered without bound waiting for its end. */
export const MAX_SERIES_LINE_BYTES = 1 << 20;

const NO_BYTES = Buffer.alloc(0);

/**
 * Hands each line of the open file `fd` (up to `size` bytes) to `onLine`, from
 * the start, a chunk at a time: `ended` is false for a last line without its
 * newline. A line longer than MAX_SERIES_LINE_BYTES goes to `onLongLine`
 * instead. A newline byte is never part of a UTF-8 sequence, so text cut at
 * newlines decodes whole.
 */
function forEachLine(
  fd: number,
  size: number,
  onLine: (text: string, line: number, ended: boolean) => void,
  onLongLine: (line: number) => void,
): void {
  const chunk = Buffer.allocUnsafe(SERIES_CHUNK_BYTES);
  // The start of a line that goes on in the next chunk.
  let carry: Buffer = NO_BYTES;
  let overlong = false;
  let line = 0;
  for (let position = 0; position < size; ) {
    const read = readSync(fd, chunk, 0, Math.min(SERIES_CHUNK_BYTES, size - position), position);
    if (read === 0) break;
    position += read;
    const lastNewline = chunk.lastIndexOf(10, read - 1);
    if (lastNewline === -1) {
      if (!overlong) carry = Buffer.concat([carry, chunk.subarray(0, read)]);
      if (carry.length > MAX_SERIES_LINE_BYTES) [overlong, carry] = [true, NO_BYTES];
      continue;
    }
    const firstNewline = chunk.indexOf(10);
    line += 1;
    if (overlong || carry.length + firstNewline > MAX_SERIES_LINE_BYTES) onLongLine(line);
    else
      onLine(
        carry.length === 0
          ? chunk.toString("utf8", 0, firstNewline)
          : Buffer.concat([carry, chunk.subarray(0, firstNewline)]).toString("utf8"),
        line,
        true,
      );
    overlong = false;
    if (firstNewline < lastNewline) {
      for (const text of chunk.toString("utf8", firstNewline + 1, lastNewline).split("\n")) {
        line += 1;
        onLine(text, line, true);
      }
    }
    // Copied: the chunk is read into again.
    carry = Buffer.from(chunk.subarray(lastNewline + 1, read));
  }
  if (overlong) onLongLine(line + 1);
  else if (carry.length > 0) onLine(carry.toString("utf8"), line + 1, false);
}

/** One field while its files are read: what the job's metric, `train info` and a chart need of it. */
interface FieldScan {
  points: number;
  /** The highest step of any point. */
  lastStep: number;
  /** The last point written (kept as numbers: a point object per line and field is most of a large file's cost). */
  finalStep: number;
  finalValue: number;
  /** Points 0, `stride`, 2 `stride`, ...: at most `maxPoints` of them. */
  kept: MetricPoint[];
  stride: number;
}

interface SeriesScan {
  fields: Map<string, FieldScan>;
  skipped: SkippedMetric[];
  /** The fields whose last value written was not finite: no earlier value may stand for them. */
  endsNonFinite: Set<string>;
}

/**
 * Reads every OUT/metrics/*.jsonl file from start to end in bounded chunks,
 * keeping per field its last value, its extent and at most `maxPoints` of its
 * points (evenly spread: when they would be more, every other one goes and
 * only every second point from then on is kept). Memory stays bounded however
 * large the files grow.
 */
function scanSeries(outDir: string, maxPoints: number): SeriesScan {
  const scan: SeriesScan = { fields: new Map(), skipped: [], endsNonFinite: new Set() };
  // A Map, as field names are the script's: `__proto__` is a field like any other.
  const { fields } = scan;
  for (const name of metricFiles(outDir, ".jsonl")) {
    const file = `metrics/${name}`;
    let problems = 0;
    const skip = (skipped: SkippedMetric) => {
      problems += 1;
      if (problems <= MAX_SKIPPED_PER_FILE) scan.skipped.push(skipped);
    };
    let records = 0;
    const onLine = (raw: string, line: number, ended: boolean): void => {
      const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      let value: unknown;
      try {
        value = parseMetricsJson(text);
      } catch (error) {
        // A blank line is no record; asked only here, as a large file's lines are read at the speed of JSON.parse.
        if (ended && text.trim() !== "") skip({ file: `${file}:${line}`, reason: `not valid JSON (${describeError(error)})` });
        return;
      }
      const at = `${file}:${line}`;
      if (typeof value !== "object" || value === null || Array.isArray(value)) {
        skip({ file: at, reason: `${kindOf(value)}; expected an object of numbers such as {"step": 10, "loss": 0.25}` });
        return;
      }
      const record = value as Record<string, unknown>;
      const step = record.step ?? records;
      records += 1;
      if (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0) {
        skip({
          file: at,
          key: "step",
          reason: `${typeof step === "number" ? `the number ${step}` : kindOf(step)}; expected a whole number, 0 or more (the line is skipped)`,
        });
        return;
      }
      for (const key in record) {
        if (key === "step") continue;
        const item = record[key];
        if (nonFinite(item) !== undefined) {
          scan.endsNonFinite.add(key);
          skip({ file: at, key, reason: `${kindOf(item)}; expected a finite number` });
        } else if (typeof item === "number") {
          if (scan.endsNonFinite.size > 0) scan.endsNonFinite.delete(key);
          let field = fields.get(key);
          if (field === undefined) {
            field = { points: 0, lastStep: 0, finalStep: step, finalValue: item, kept: [], stride: 1 };
            fields.set(key, field);
          }
          if (field.points % field.stride === 0 && maxPoints > 0) {
            field.kept.push({ step, value: item });
            if (field.kept.length > maxPoints) {
              field.kept = field.kept.filter((_, index) => index % 2 === 0);
              field.stride *= 2;
            }
          }
          field.points += 1;
          if (step > field.lastStep) field.lastStep = step;
          field.finalStep = step;
          field.finalValue = item;
        } else {
          skip({ file: at, key, reason: `${kindOf(item)}; expected a number` });
        }
      }
    };
    const onLongLine = (line: number) =>
      skip({
        file: `${file}:${line}`,
        reason: `a line longer than ${MAX_SERIES_LINE_BYTES} bytes; expected one JSON object of numbers a line`,
      });
    const problem = readRegularFileLines(join(outDir, "metrics", name), onLine, onLongLine);
    if (problem !== undefined) {
      scan.skipped.push({ file, reason: problem });
      continue;
    }
    if (problems > MAX_SKIPPED_PER_FILE) {
      scan.skipped.push({ file, reason: `${problems - MAX_SKIPPED_PER_FILE} more problems not listed` });
    }
  }
  return scan;
}

/**
 * Reads a regular file line by line (see forEachLine), up to the size it had
 * when opened; the reason when it cannot. Opened without blocking and checked
 * on the open descriptor, as readRegularFile is.
 */
function readRegularFileLines(
  path: string,
  onLine: (text: string, line: number, ended: boolean) => void,
  onLongLine: (line: number) => void,
): string | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (error) {
    return `unreadable (${describeError(error)})`;
  }
  try {
    const stat = fstatSync(fd);
    if (!stat.isFile()) return "not a regular file";
    forEachLine(fd, stat.size, onLine, onLongLine);
    return undefined;
  } catch (error) {
    return `unreadable (${describeError(error)})`;
  } finally {
    closeSync(fd);
  }
}

/** A field's kept points, with its last one when thinning left that out. */
function keptPoints(field: FieldScan): MetricPoint[] {
  const lastKept = (field.kept.length - 1) * field.stride;
  return lastKept === field.points - 1 ? field.kept : [...field.kept, { step: field.finalStep, value: field.finalValue }];
}

function seriesOf(scan: SeriesScan): MetricSeries {
  const series: Record<string, MetricPoint[]> = {};
  const totals: Record<string, number> = {};
  for (const [key, field] of scan.fields) {
    const points = keptPoints(field);
    setMetric(series, key, points);
    if (points.length < field.points) setMetric(totals, key, field.points);
  }
  return Object.keys(totals).length === 0 ? { series, skipped: scan.skipped } : { series, totals, skipped: scan.skipped };
}

/**
 * The per-step series a job appended to OUT/metrics/*.jsonl: one JSON object
 * a line, with an optional whole `step` (else the line's place among the
 * file's records, from 0) and numeric fields. Safe to call while the job
 * still writes: a last line without its newline that is not yet valid JSON is
 * taken as half-written and left for the next read. With `maxPoints`, a field
 * of more points keeps at most that many, evenly spread, and its last
 * (`totals` says how many there are).
 */
export function readMetricSeries(outDir: string, options: { maxPoints?: number } = {}): MetricSeries {
  return seriesOf(scanSeries(outDir, options.maxPoints ?? Number.POSITIVE_INFINITY));
}

/**
 * The job's metrics: what its metrics/*.json files give, and for every other
 * field of its series, the last value logged.
 */
export function readMetrics(outDir: string): JobMetrics {
  return readAll(outDir, 0).metrics;
}

/**
 * The job's metrics and, from the same one read of its series files, each
 * field's extent (`train info`) and, with `maxPoints`, its points thinned to
 * at most that many, evenly spread, and the last (a chart).
 */
export function readMetricsAndSeries(
  outDir: string,
  maxPoints = 0,
): { metrics: JobMetrics; series: MetricSeries; extents: Record<string, SeriesExtent> } {
  const { metrics, scan } = readAll(outDir, maxPoints);
  const extents: Record<string, SeriesExtent> = {};
  for (const [key, field] of scan.fields) {
    setMetric(extents, key, { points: field.points, lastStep: field.lastStep });
  }
  return { metrics, series: maxPoints > 0 ? seriesOf(scan) : { series: {}, skipped: scan.skipped }, extents };
}

function readAll(outDir: string, maxPoints: number): { metrics: JobMetrics; scan: SeriesScan } {
  const metrics: JobMetrics = { values: {}, skipped: [] };
  // Names a .json file gave as NaN or an infinity: an earlier value of a series must not stand for them.
  const given = new Set<string>();
  for (const name of metricFiles(outDir, ".json")) {
    const file = `metrics/${name}`;
    const read = readRegularFile(join(outDir, "metrics", name), MAX_METRICS_FILE_BYTES);
    if ("reason" in read) {
      metrics.skipped.push({ file, reason: read.reason });
      continue;
    }
    let value: unknown;
    try {
      value = parseMetricsJson(read.text);
    } catch (error) {
      metrics.skipped.push({ file, reason: `not valid JSON (${describeError(error)})` });
      continue;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      metrics.skipped.push({ file, reason: `${kindOf(value)}; expected an object of metrics such as {"accuracy": 0.9}` });
      continue;
    }
    flatten(value as Record<string, unknown>, "", 1, file, metrics, given);
  }
  const scan = scanSeries(outDir, maxPoints);
  for (const [key, field] of scan.fields) {
    if (!Object.hasOwn(metrics.values, key) && !given.has(key) && !scan.endsNonFinite.has(key)) {
      setMetric(metrics.values, key, field.finalValue);
    }
  }
  metrics.skipped.push(...scan.skipped);
  return { metrics, scan };
}
