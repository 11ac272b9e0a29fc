/**
 * A job's metrics: the JSON objects its script left in OUT/metrics/*.json.
 * Nested objects flatten to dotted names (`{"val": {"loss": 0.1}}` is
 * `val.loss`); whatever cannot be a metric (a list, null, a file that is not
 * JSON) is skipped and said why, never silently dropped nor passed off as a
 * metric.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { describeError } from "./errors.js";

/** Outputs are whatever the script left: a metrics file larger than this is not read. */
export const MAX_METRICS_FILE_BYTES = 16 << 20;

/** Objects nested deeper than this are skipped: the names would be unreadable, the recursion unbounded. */
const MAX_DEPTH = 16;

export type MetricValue = number | string | boolean;

export interface SkippedMetric {
  /** The file, relative to the job's output directory: `metrics/eval.json`. */
  file: string;
  /** The dotted name of the value skipped; absent when the whole file was. */
  key?: string;
  reason: string;
}

export interface JobMetrics {
  values: Record<string, MetricValue>;
  skipped: SkippedMetric[];
}

function kindOf(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

function flatten(value: Record<string, unknown>, prefix: string, depth: number, file: string, metrics: JobMetrics): void {
  for (const [name, item] of Object.entries(value)) {
    const key = `${prefix}${name}`;
    if (typeof item === "number" || typeof item === "string" || typeof item === "boolean") {
      metrics.values[key] = item;
    } else if (typeof item === "object" && item !== null && !Array.isArray(item)) {
      if (depth >= MAX_DEPTH) metrics.skipped.push({ file, key, reason: `nested deeper than ${MAX_DEPTH} levels` });
      else flatten(item as Record<string, unknown>, `${key}.`, depth + 1, file, metrics);
    } else {
      metrics.skipped.push({ file, key, reason: `${kindOf(item)}; expected a number (or a string, a boolean, an object of them)` });
    }
  }
}

export function readMetrics(outDir: string): JobMetrics {
  const metrics: JobMetrics = { values: {}, skipped: [] };
  const dir = join(outDir, "metrics");
  let names: string[];
  try {
    names = readdirSync(dir)
      .filter((name) => name.endsWith(".json"))
      .sort();
  } catch {
    return metrics;
  }
  for (const name of names) {
    const file = `metrics/${name}`;
    const path = join(dir, name);
    let value: unknown;
    try {
      // A FIFO would block the read forever, a link to /dev/zero never end it, a huge file exhaust memory.
      const stat = statSync(path);
      if (!stat.isFile()) {
        metrics.skipped.push({ file, reason: "not a regular file" });
        continue;
      }
      if (stat.size > MAX_METRICS_FILE_BYTES) {
        metrics.skipped.push({ file, reason: `${stat.size} bytes, more than ${MAX_METRICS_FILE_BYTES}` });
        continue;
      }
      const text = readFileSync(path, "utf8");
      try {
        value = JSON.parse(text) as unknown;
      } catch (error) {
        metrics.skipped.push({ file, reason: `not valid JSON (${describeError(error)})` });
        continue;
      }
    } catch (error) {
      metrics.skipped.push({ file, reason: `unreadable (${describeError(error)})` });
      continue;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      metrics.skipped.push({ file, reason: `${kindOf(value)}; expected an object of metrics such as {"accuracy": 0.9}` });
      continue;
    }
    flatten(value as Record<string, unknown>, "", 1, file, metrics);
  }
  return metrics;
}
