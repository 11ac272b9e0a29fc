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

/** A series grows with every step logged, so its files may be larger than a .json file. */
export const MAX_METRICS_SERIES_BYTES = 64 << 20;

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
function setMetric(values: Record<string, MetricValue>, key: string, value: MetricValue): void {
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
  skipped: SkippedMetric[];
}

/**
 * The per-step series a job appended to OUT/metrics/*.jsonl: one JSON object
 * a line, with an optional whole `step` (else the line's place among the
 * file's records, from 0) and numeric fields. Safe to call while the job
 * still writes: a last line without its newline that is not yet valid JSON is
 * taken as half-written and left for the next read.
 */
export function readMetricSeries(outDir: string): MetricSeries {
  const { series, skipped } = readSeries(outDir);
  return { series, skipped };
}

/** The series, and the fields whose last value written was not finite: no earlier value may stand for them. */
function readSeries(outDir: string): MetricSeries & { endsNonFinite: Set<string> } {
  const result: MetricSeries & { endsNonFinite: Set<string> } = { series: {}, skipped: [], endsNonFinite: new Set() };
  // A Map, as field names are the script's: `__proto__` is a field like any other.
  const series = new Map<string, MetricPoint[]>();
  for (const name of metricFiles(outDir, ".jsonl")) {
    const file = `metrics/${name}`;
    const read = readRegularFile(join(outDir, "metrics", name), MAX_METRICS_SERIES_BYTES);
    if ("reason" in read) {
      result.skipped.push({ file, reason: read.reason });
      continue;
    }
    const lines = read.text.split("\n");
    const complete = read.text.endsWith("\n");
    let problems = 0;
    const skip = (skipped: SkippedMetric) => {
      problems += 1;
      if (problems <= MAX_SKIPPED_PER_FILE) result.skipped.push(skipped);
    };
    let records = 0;
    lines.forEach((raw, index) => {
      const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (text.trim() === "") return;
      const last = index === lines.length - 1;
      const at = `${file}:${index + 1}`;
      let value: unknown;
      try {
        value = parseMetricsJson(text);
      } catch (error) {
        if (!(last && !complete)) skip({ file: at, reason: `not valid JSON (${describeError(error)})` });
        return;
      }
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
      for (const [key, item] of Object.entries(record)) {
        if (key === "step") continue;
        if (nonFinite(item) !== undefined) {
          result.endsNonFinite.add(key);
          skip({ file: at, key, reason: `${kindOf(item)}; expected a finite number` });
        } else if (typeof item === "number") {
          result.endsNonFinite.delete(key);
          let points = series.get(key);
          if (points === undefined) {
            points = [];
            series.set(key, points);
          }
          points.push({ step, value: item });
        } else {
          skip({ file: at, key, reason: `${kindOf(item)}; expected a number` });
        }
      }
    });
    if (problems > MAX_SKIPPED_PER_FILE) {
      result.skipped.push({ file, reason: `${problems - MAX_SKIPPED_PER_FILE} more problems not listed` });
    }
  }
  result.series = Object.fromEntries(series);
  return result;
}

/**
 * The job's metrics: what its metrics/*.json files give, and for every other
 * field of its series, the last value logged.
 */
export function readMetrics(outDir: string): JobMetrics {
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
  const { series, skipped, endsNonFinite } = readSeries(outDir);
  for (const [key, points] of Object.entries(series)) {
    const last = points[points.length - 1];
    if (last !== undefined && !Object.hasOwn(metrics.values, key) && !given.has(key) && !endsNonFinite.has(key)) {
      setMetric(metrics.values, key, last.value);
    }
  }
  metrics.skipped.push(...skipped);
  return metrics;
}
