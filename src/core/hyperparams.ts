/**
 * Hyperparameter grids: a list value is a set of candidates, a scalar is fixed,
 * and the jobs are the Cartesian product of the lists.
 */
import { KaosError } from "./errors.js";
import type { HyperparamGrid, HyperparamScalar, HyperparamSet } from "./types.js";

function isScalar(value: unknown): value is HyperparamScalar {
  return value === null || typeof value === "string" || typeof value === "boolean" || (typeof value === "number" && Number.isFinite(value));
}

function kindOf(value: unknown): string {
  if (Array.isArray(value)) return "a list";
  if (value === null) return "null";
  if (typeof value === "number") return `the number ${value}`;
  if (typeof value === "bigint") return `the bigint ${value}n`;
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

/**
 * Params travel as JSON numbers, which are doubles: past 2^53 - 1 a whole
 * number no longer has a double of its own (12345678901234567891 would become
 * 12345678901234567000, and two different ones the same), so it is refused
 * rather than silently changed.
 */
const SAFE_LIMIT = `beyond ±${Number.MAX_SAFE_INTEGER}, where`;

function inexactWhole(value: unknown): value is number | bigint {
  return (typeof value === "number" && Number.isInteger(value) && !Number.isSafeInteger(value)) || typeof value === "bigint";
}

function inexactMessage(value: number | bigint): string {
  if (typeof value === "bigint") {
    return `the bigint ${value}n: params are passed as JSON, where a number is a double; write it as a string to keep every digit, such as "${value}"`;
  }
  return `the number ${value} is ${SAFE_LIMIT} a JavaScript number has already lost digits; write it as a string holding every digit`;
}

type KeyPath = (string | number)[];

function formatKeyPath(path: KeyPath): string {
  return path.map((key, index) => (typeof key === "number" ? `[${key}]` : `${index > 0 ? "." : ""}${JSON.stringify(key)}`)).join("");
}

/**
 * Every whole-number literal of a JSON text that a double cannot hold
 * exactly, with its key path and line. The text must already be valid JSON:
 * only the source text tells `12345678901234567891` (refused) from `1.5e20` (a
 * float like any other), and JSON.parse gives the numbers only.
 */
function inexactIntegerLiterals(text: string): { path: KeyPath; literal: string; line: number }[] {
  const found: { path: KeyPath; literal: string; line: number }[] = [];
  const frames: { list: boolean; index: number; key: string; expectingKey: boolean }[] = [];
  const number = /-?\d+(\.\d+)?([eE][+-]?\d+)?/y;
  let i = 0;
  while (i < text.length) {
    const char = text[i]!;
    const top = frames[frames.length - 1];
    if (char === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      if (top && !top.list && top.expectingKey) top.key = JSON.parse(text.slice(i, end + 1)) as string;
      i = end + 1;
    } else if (char === "{" || char === "[") {
      frames.push({ list: char === "[", index: 0, key: "", expectingKey: char === "{" });
      i += 1;
    } else if (char === "}" || char === "]") {
      frames.pop();
      i += 1;
    } else if (char === "," && top) {
      if (top.list) top.index += 1;
      else top.expectingKey = true;
      i += 1;
    } else if (char === ":" && top) {
      top.expectingKey = false;
      i += 1;
    } else if (char === "-" || (char >= "0" && char <= "9")) {
      number.lastIndex = i;
      const match = number.exec(text)!;
      if (match[1] === undefined && match[2] === undefined && !Number.isSafeInteger(Number(match[0]))) {
        const path = frames.map((frame) => (frame.list ? frame.index : frame.key));
        found.push({ path, literal: match[0], line: text.slice(0, i).split("\n").length });
      }
      i += match[0].length;
    } else {
      i += 1;
    }
  }
  return found;
}

/**
 * A hyperparams file's text: a grid as parseGrid checks it, and no whole
 * number that would lose digits. `file` names it in messages. A text that is
 * not JSON throws JSON.parse's SyntaxError.
 */
export function parseGridJson(text: string, file: string): HyperparamGrid {
  const value = JSON.parse(text) as unknown;
  const [inexact] = inexactIntegerLiterals(text);
  if (inexact !== undefined) {
    const at = inexact.path.length > 0 ? ` ${formatKeyPath(inexact.path)}:` : "";
    throw new KaosError(
      "HYPERPARAMS_INVALID",
      `${file}:${inexact.line}:${at} ${inexact.literal} is ${SAFE_LIMIT} a JSON number loses digits (it would become ${Number(inexact.literal)}); write it as a string to keep every digit: "${inexact.literal}"`,
    );
  }
  return checkGrid(value, file, false);
}

/**
 * Checks that `value` is an object of scalars and non-empty lists of scalars.
 * `where` names the source (a file or a key path) in messages.
 */
export function parseGrid(value: unknown, where: string): HyperparamGrid {
  return checkGrid(value, where, true);
}

/** Refuses an inexact whole number only when the value says so itself: a file's literals are checked on its text. */
function checkGrid(value: unknown, where: string, refuseInexact: boolean): HyperparamGrid {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new KaosError(
      "HYPERPARAMS_INVALID",
      `${where}: expected an object of scalars and lists such as {"kernel": ["linear", "poly"], "C": 1}, found ${kindOf(value)}`,
    );
  }
  const grid: HyperparamGrid = {};
  const refuse = (path: KeyPath, item: number | bigint) => {
    throw new KaosError("HYPERPARAMS_INVALID", `${where}: ${formatKeyPath(path)}: ${inexactMessage(item)}`);
  };
  for (const [key, candidate] of Object.entries(value)) {
    if (refuseInexact && inexactWhole(candidate)) refuse([key], candidate);
    if (Array.isArray(candidate)) {
      if (candidate.length === 0) {
        throw new KaosError(
          "HYPERPARAMS_INVALID",
          `${where}: "${key}": empty list of candidates; expected at least one value (or a scalar to fix it)`,
        );
      }
      candidate.forEach((item: unknown, index) => {
        if (refuseInexact && inexactWhole(item)) refuse([key, index], item);
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
      throw new KaosError("HYPERPARAMS_INVALID", `${where}: "${key}": expected a scalar or a list of scalars, found ${kindOf(candidate)}`);
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
