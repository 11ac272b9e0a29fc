/**
 * Hyperparameter grids: a list value is a set of candidates, a scalar is fixed,
 * and the jobs are the Cartesian product of the lists.
 */
import { KaosError } from "./errors.js";
import type { HyperparamGrid, HyperparamScalar, HyperparamSet } from "./types.js";

function isScalar(value: unknown): value is HyperparamScalar {
  return (
    value === null ||
    typeof value === "string" ||
    typeof value === "boolean" ||
    (typeof value === "number" && Number.isFinite(value))
  );
}

function kindOf(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  if (typeof value === "number") return `the number ${value}`;
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/**
 * Checks that `value` is an object of scalars and non-empty lists of scalars.
 * `where` names the source (a file or a key path) in messages.
 */
export function parseGrid(value: unknown, where: string): HyperparamGrid {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new KaosError(
      "HYPERPARAMS_INVALID",
      `${where}: expected an object of scalars and lists such as {"kernel": ["linear", "poly"], "C": 1}, found ${kindOf(value)}`,
    );
  }
  const grid: HyperparamGrid = {};
  for (const [key, candidate] of Object.entries(value)) {
    if (Array.isArray(candidate)) {
      if (candidate.length === 0) {
        throw new KaosError("HYPERPARAMS_INVALID", `${where}: "${key}": empty list of candidates; expected at least one value (or a scalar to fix it)`);
      }
      candidate.forEach((item: unknown, index) => {
        if (!isScalar(item)) {
          throw new KaosError(
            "HYPERPARAMS_INVALID",
            `${where}: "${key}"[${index}]: expected a string, number, boolean or null, found ${kindOf(item)}`,
          );
        }
      });
      const seen = new Set(candidate.map((item) => canonicalJson(item)));
      if (seen.size !== candidate.length) {
        throw new KaosError("HYPERPARAMS_INVALID", `${where}: "${key}": the same candidate is listed twice; expected distinct values`);
      }
      grid[key] = candidate as HyperparamScalar[];
    } else if (isScalar(candidate)) {
      grid[key] = candidate;
    } else {
      throw new KaosError(
        "HYPERPARAMS_INVALID",
        `${where}: "${key}": expected a scalar or a list of scalars, found ${kindOf(candidate)}`,
      );
    }
  }
  return grid;
}

/**
 * JSON with object keys sorted at every level, so that the same params give the
 * same text (and so the same job key) whatever order they were written in.
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item)).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const entries = Object.keys(value)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`);
    return `{${entries.join(",")}}`;
  }
  if (typeof value === "number" && !Number.isFinite(value)) {
    throw new TypeError(`cannot encode ${value} as JSON`);
  }
  return JSON.stringify(value) ?? "null";
}

/** Number of jobs a grid expands to. */
export function gridSize(grid: HyperparamGrid): number {
  return Object.values(grid).reduce<number>((total, value) => total * (Array.isArray(value) ? value.length : 1), 1);
}

/**
 * The Cartesian product, in a stable order: keys sorted, candidates in the
 * order written, the last key varying fastest. An empty grid gives one `{}`.
 */
export function expandGrid(grid: HyperparamGrid): HyperparamSet[] {
  const keys = Object.keys(grid).sort();
  let combinations: HyperparamSet[] = [{}];
  for (const key of keys) {
    const value = grid[key];
    const candidates: HyperparamScalar[] = Array.isArray(value) ? value : [value ?? null];
    const next: HyperparamSet[] = [];
    for (const combination of combinations) {
      for (const candidate of candidates) next.push({ ...combination, [key]: candidate });
    }
    combinations = next;
  }
  return combinations;
}
