/**
 * Hyperparameter search spaces, and the jobs they expand to:
 * - a grid: a list value is a set of candidates, a scalar is fixed, and the
 *   jobs are the Cartesian product of the lists;
 * - a list of grids: the union of their combinations, each combination once;
 * - a seeded random search: `samples` distinct combinations drawn from
 *   per-parameter distributions.
 */
import { createHash } from "node:crypto";
import { KaosError } from "./errors.js";
import type { HyperparamGrid, HyperparamScalar, HyperparamSet, HyperparamSpace, RandomSearch, SearchDistribution } from "./types.js";

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

/** A mistake at a key path inside a search space; the caller names where the space came from. */
class SpaceProblem extends Error {
  constructor(
    readonly path: KeyPath,
    readonly detail: string,
  ) {
    super(detail);
  }
}

function fail(path: KeyPath, detail: string): never {
  throw new SpaceProblem(path, detail);
}

/**
 * Walks a JSON text (already known to be valid) and calls `visit` at the start
 * of every value with its key path (made only when asked) and line; `visit`
 * returns true to stop.
 * Only the text tells `12345678901234567891` from `1.5e20`, and only the text
 * has lines.
 */
function walkJsonText(
  text: string,
  visit: (path: () => KeyPath, line: number, start: number) => boolean | undefined,
  visitKey?: (path: () => KeyPath, line: number, firstLine: number | undefined) => boolean | undefined,
): void {
  const frames: { list: boolean; index: number; key: string; expectingKey: boolean; keyLines: Map<string, number> }[] = [];
  const number = /-?\d+(\.\d+)?([eE][+-]?\d+)?/y;
  const literal = /true|false|null/y;
  const pathHere = () => frames.map((frame) => (frame.list ? frame.index : frame.key));
  let line = 1;
  let i = 0;
  while (i < text.length) {
    const char = text[i]!;
    const top = frames[frames.length - 1];
    if (char === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      if (top && !top.list && top.expectingKey) {
        top.key = JSON.parse(text.slice(i, end + 1)) as string;
        if (visitKey?.(pathHere, line, top.keyLines.get(top.key))) return;
        if (!top.keyLines.has(top.key)) top.keyLines.set(top.key, line);
      } else if (visit(pathHere, line, i)) return;
      i = end + 1;
    } else if (char === "{" || char === "[") {
      if (visit(pathHere, line, i)) return;
      frames.push({ list: char === "[", index: 0, key: "", expectingKey: char === "{", keyLines: new Map() });
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
      if (visit(pathHere, line, i)) return;
      number.lastIndex = i;
      i += number.exec(text)![0].length;
    } else if (char === "t" || char === "f" || char === "n") {
      if (visit(pathHere, line, i)) return;
      literal.lastIndex = i;
      i += literal.exec(text)![0].length;
    } else {
      if (char === "\n") line += 1;
      i += 1;
    }
  }
}

/**
 * What JSON.parse does not tell of a JSON text, found in one walk: the first
 * whole-number literal that a double cannot hold exactly (JSON.parse gives the
 * numbers only), and the first key written twice in one object, with both
 * lines (JSON.parse keeps the last and drops the first without a word, so a
 * parameter written twice would lose the candidates written first).
 */
function textProblems(text: string): {
  inexact?: { path: KeyPath; literal: string; line: number };
  twice?: { path: KeyPath; line: number; firstLine: number };
} {
  const found: ReturnType<typeof textProblems> = {};
  const number = /-?\d+(\.\d+)?([eE][+-]?\d+)?/y;
  walkJsonText(
    text,
    (path, line, start) => {
      const char = text[start]!;
      if (char !== "-" && (char < "0" || char > "9")) return undefined;
      number.lastIndex = start;
      const match = number.exec(text)!;
      if (match[1] !== undefined || match[2] !== undefined || Number.isSafeInteger(Number(match[0]))) return undefined;
      found.inexact = { path: path(), literal: match[0], line };
      // Told before any key written twice, wherever that is: nothing further is needed.
      return true;
    },
    (path, line, firstLine) => {
      if (firstLine !== undefined && found.twice === undefined) found.twice = { path: path(), line, firstLine };
      return undefined;
    },
  );
  return found;
}

/** The line where the value at `path` starts, or where its nearest written parent does (a missing key has no line of its own). */
function lineOfPath(text: string, path: KeyPath): number {
  let best = 1;
  let bestDepth = -1;
  walkJsonText(text, (pathHere, line) => {
    const at = pathHere();
    if (at.length > path.length || at.length <= bestDepth) return undefined;
    if (at.every((key, index) => key === path[index])) {
      best = line;
      bestDepth = at.length;
    }
    return bestDepth === path.length;
  });
  return best;
}

function problemText(path: KeyPath, detail: string): string {
  return path.length > 0 ? `${formatKeyPath(path)}: ${detail}` : detail;
}

/**
 * A hyperparams file's text: a search space as parseSpace checks it, and no
 * whole number that would lose digits. `file` names it in messages, with the
 * line. A text that is not JSON throws JSON.parse's SyntaxError.
 */
export function parseSpaceJson(text: string, file: string): HyperparamSpace {
  const value = JSON.parse(text) as unknown;
  const { inexact, twice } = textProblems(text);
  if (inexact !== undefined) {
    const at = inexact.path.length > 0 ? ` ${formatKeyPath(inexact.path)}:` : "";
    throw new KaosError(
      "HYPERPARAMS_INVALID",
      `${file}:${inexact.line}:${at} ${inexact.literal} is ${SAFE_LIMIT} a JSON number loses digits (it would become ${Number(inexact.literal)}); write it as a string to keep every digit: "${inexact.literal}"`,
    );
  }
  if (twice !== undefined) {
    throw new KaosError(
      "HYPERPARAMS_INVALID",
      `${file}:${twice.line}: ${formatKeyPath(twice.path)}: written twice in one object (first on line ${twice.firstLine}); JSON keeps only the last, so the first would be dropped without a word; expected each key once (a parameter's candidates in one list)`,
    );
  }
  try {
    return checkDraws(checkSpace(value, false));
  } catch (error) {
    if (!(error instanceof SpaceProblem)) throw error;
    throw new KaosError("HYPERPARAMS_INVALID", `${file}:${lineOfPath(text, error.path)}: ${problemText(error.path, error.detail)}`);
  }
}

/**
 * Checks that `value` is a search space: a grid (an object of scalars and
 * non-empty lists of scalars), a non-empty list of grids, or a random search.
 * `where` names the source (a file or a key path) in messages.
 */
export function parseSpace(value: unknown, where: string): HyperparamSpace {
  try {
    return checkDraws(checkSpace(value, true));
  } catch (error) {
    if (!(error instanceof SpaceProblem)) throw error;
    throw new KaosError("HYPERPARAMS_INVALID", `${where}: ${problemText(error.path, error.detail)}`);
  }
}

/** The most jobs one pipeline's space may expand to. */
export const MAX_SWEEP_JOBS = 100_000;

/**
 * A random search is drawn once here, where a space too narrow for its
 * samples can still be named with its file; the plan reuses the draws.
 * Past MAX_SWEEP_JOBS the config check refuses it before anything is drawn.
 */
function checkDraws(space: HyperparamSpace): HyperparamSpace {
  if (isRandomSearch(space) && space.samples <= MAX_SWEEP_JOBS) expandSpace(space);
  return space;
}

const GRID_EXAMPLE = `{"kernel": ["linear", "poly"], "C": 1}`;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** An object whose `search` key holds a string describes a search, not a grid. */
function isSearch(value: Record<string, unknown>): boolean {
  return typeof value.search === "string";
}

/**
 * Refuses an inexact whole number only when the value says so itself: a
 * file's literals are checked on its text.
 */
function checkSpace(value: unknown, refuseInexact: boolean): HyperparamSpace {
  if (Array.isArray(value)) {
    if (value.length === 0) fail([], `empty list of grids; expected at least one grid such as ${GRID_EXAMPLE}`);
    return value.map((grid: unknown, index) => {
      if (!isPlainObject(grid)) fail([index], `expected a grid such as ${GRID_EXAMPLE}, found ${kindOf(grid)}`);
      if (isSearch(grid)) fail([index, "search"], "a random search stands on its own; expected a grid in a list of grids");
      return checkGrid(grid, [index], refuseInexact);
    });
  }
  if (!isPlainObject(value)) {
    fail(
      [],
      `expected an object of scalars and lists such as ${GRID_EXAMPLE}, a list of such grids, or a random search, found ${kindOf(value)}`,
    );
  }
  return isSearch(value) ? checkRandomSearch(value, refuseInexact) : checkGrid(value, [], refuseInexact);
}

function checkScalar(value: unknown, path: KeyPath, refuseInexact: boolean): HyperparamScalar {
  if (refuseInexact && inexactWhole(value)) fail(path, inexactMessage(value));
  if (!isScalar(value)) fail(path, `expected a string, number, boolean or null, found ${kindOf(value)}`);
  return value;
}

/** A non-empty list of distinct scalars. */
function checkCandidates(list: unknown[], path: KeyPath, refuseInexact: boolean, what: string): HyperparamScalar[] {
  if (list.length === 0) fail(path, `empty list of ${what}; expected at least one value (or a scalar to fix it)`);
  const candidates = list.map((item, index) => checkScalar(item, [...path, index], refuseInexact));
  if (new Set(candidates.map((item) => canonicalJson(item))).size !== candidates.length) {
    fail(path, `the same ${what === "candidates" ? "candidate" : "value"} is listed twice; expected distinct values`);
  }
  return candidates;
}

function checkGrid(value: Record<string, unknown>, at: KeyPath, refuseInexact: boolean): HyperparamGrid {
  const grid: HyperparamGrid = {};
  for (const [key, candidate] of Object.entries(value)) {
    const path = [...at, key];
    if (Array.isArray(candidate)) {
      grid[key] = checkCandidates(candidate, path, refuseInexact, "candidates");
    } else if (isScalar(candidate) || (refuseInexact && inexactWhole(candidate))) {
      grid[key] = checkScalar(candidate, path, refuseInexact);
    } else {
      fail(path, `expected a scalar or a list of scalars, found ${kindOf(candidate)}`);
    }
  }
  return grid;
}

const SEARCH_KEYS = ["search", "seed", "samples", "space"];
const DISTRIBUTIONS = ["uniform", "logUniform", "intRange", "choice"] as const;
type DistributionName = (typeof DISTRIBUTIONS)[number];
const SPACE_EXAMPLE = `{"C": {"logUniform": [0.01, 100]}, "kernel": {"choice": ["rbf", "poly"]}}`;

function checkRandomSearch(value: Record<string, unknown>, refuseInexact: boolean): RandomSearch {
  for (const key of Object.keys(value)) {
    if (!SEARCH_KEYS.includes(key)) fail([key], `unknown key of a random search; expected only ${SEARCH_KEYS.join(", ")}`);
  }
  if (value.search !== "random") {
    fail(["search"], `unknown search ${JSON.stringify(value.search)}; expected "random" (a grid has no "search" key)`);
  }
  const { seed, samples, space } = value;
  if (seed === undefined) fail(["seed"], "missing; expected a whole number such as 7, which fixes what is drawn");
  if (typeof seed !== "number" || !Number.isSafeInteger(seed)) {
    fail(["seed"], `expected a whole number such as 7, found ${kindOf(seed)}`);
  }
  if (samples === undefined) fail(["samples"], "missing; expected how many combinations to draw, such as 20");
  if (typeof samples !== "number" || !Number.isSafeInteger(samples) || samples < 1) {
    fail(["samples"], `expected a whole number of combinations, 1 or more, found ${kindOf(samples)}`);
  }
  if (space === undefined) fail(["space"], `missing; expected an object of parameters such as ${SPACE_EXAMPLE}`);
  if (!isPlainObject(space)) fail(["space"], `expected an object of parameters such as ${SPACE_EXAMPLE}, found ${kindOf(space)}`);
  const checked: RandomSearch["space"] = {};
  let distinct = 1;
  for (const [name, entry] of Object.entries(space)) {
    const path = ["space", name];
    if (Array.isArray(entry)) {
      checked[name] = checkCandidates(entry, path, refuseInexact, "values");
      distinct *= entry.length;
    } else if (isPlainObject(entry)) {
      const distribution = checkDistribution(entry, path, refuseInexact);
      checked[name] = distribution;
      distinct *=
        "choice" in distribution
          ? distribution.choice.length
          : "intRange" in distribution
            ? distribution.intRange[1] - distribution.intRange[0] + 1
            : Number.POSITIVE_INFINITY;
    } else {
      checked[name] = checkScalar(entry, path, refuseInexact);
    }
  }
  if (samples > distinct) {
    fail(
      ["samples"],
      `${samples} is more than the ${distinct} distinct combinations the space holds; expected at most ${distinct} (or widen the space)`,
    );
  }
  return { search: "random", seed, samples, space: checked };
}

function checkDistribution(entry: Record<string, unknown>, path: KeyPath, refuseInexact: boolean): SearchDistribution {
  const keys = Object.keys(entry);
  const expected = `expected one of ${DISTRIBUTIONS.map((name) => JSON.stringify(name)).join(", ")}, such as {"uniform": [0, 1]}`;
  if (keys.length === 0) fail(path, `an empty object; ${expected}`);
  const unknown = keys.find((key) => !(DISTRIBUTIONS as readonly string[]).includes(key));
  if (unknown !== undefined) fail([...path, unknown], `unknown distribution; ${expected}`);
  if (keys.length > 1)
    fail(path, `${keys.map((key) => JSON.stringify(key)).join(" and ")} together; expected one distribution per parameter`);
  const name = keys[0] as DistributionName;
  const at = [...path, name];
  const bounds = entry[name];
  if (name === "choice") {
    if (!Array.isArray(bounds)) fail(at, `expected a list of values such as ["rbf", "poly"], found ${kindOf(bounds)}`);
    return { choice: checkCandidates(bounds, at, refuseInexact, "values") };
  }
  const whole = name === "intRange";
  const shape = whole ? "[low, high], two whole numbers such as [2, 6]" : "[low, high], two numbers such as [0.01, 100]";
  if (!Array.isArray(bounds) || bounds.length !== 2) fail(at, `expected ${shape}, found ${kindOf(bounds)}`);
  bounds.forEach((bound: unknown, index) => {
    if (refuseInexact && inexactWhole(bound)) fail([...at, index], inexactMessage(bound));
    if (typeof bound !== "number" || !Number.isFinite(bound) || (whole && !Number.isSafeInteger(bound))) {
      fail([...at, index], `expected ${whole ? "a whole number" : "a number"}, found ${kindOf(bound)}`);
    }
  });
  const [low, high] = bounds as [number, number];
  if (low > high) fail(at, `low ${low} is above high ${high}; expected [low, high] with low <= high`);
  if (name === "logUniform" && low <= 0) {
    fail(at, `low ${low} is not above 0, and a logarithm is drawn; expected bounds above 0 such as [0.001, 10] (or "uniform")`);
  }
  if (name === "uniform") return { uniform: [low, high] };
  if (name === "logUniform") return { logUniform: [low, high] };
  return { intRange: [low, high] };
}

/**
 * JSON with object keys sorted at every level (by code unit, digits-only keys
 * too) and no whitespace, so that the same params give the same text (and so
 * the same job key) whatever order they were written in. Keys whose value is
 * undefined are left out, as JSON.stringify leaves them out; in an array an
 * undefined is null. Job keys, grid keys, the applied record and the cluster's
 * pipeline specs are all written with it.
 */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => canonicalJson(item)).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const record = value as Record<string, unknown>;
    const entries = Object.keys(record)
      .filter((key) => record[key] !== undefined)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${canonicalJson(record[key])}`);
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

/** Most jobs a space expands to: a list of grids may give fewer, once combinations found twice count once. */
export function spaceSize(space: HyperparamSpace): number {
  if (Array.isArray(space)) return space.reduce((total, grid) => total + gridSize(grid), 0);
  return isRandomSearch(space) ? space.samples : gridSize(space);
}

export function isRandomSearch(space: HyperparamSpace): space is RandomSearch {
  return !Array.isArray(space) && space.search === "random" && typeof space.space === "object";
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

/**
 * The union of the grids' combinations, in the order written: each grid's
 * own order, a combination already given by an earlier grid left out.
 */
export function expandGrids(grids: HyperparamGrid[]): HyperparamSet[] {
  const seen = new Set<string>();
  const combinations: HyperparamSet[] = [];
  for (const grid of grids) {
    for (const combination of expandGrid(grid)) {
      const canonical = canonicalJson(combination);
      if (seen.has(canonical)) continue;
      seen.add(canonical);
      combinations.push(combination);
    }
  }
  return combinations;
}

/** Floats drawn are kept to this many significant digits: params JSON then reads the same on every machine. */
export const SAMPLE_DIGITS = 6;

/**
 * The uniform number in [0, 1) of one parameter in one draw: 53 bits of
 * SHA-256 over the seed, the draw's number and the parameter's name. Each is
 * its own stream, so a draw never depends on the ones before it nor on the
 * other parameters, and the same inputs give the same number everywhere.
 */
function unitDraw(seed: number, draw: number, name: string): number {
  const digest = createHash("sha256").update(`kaos random v1\0${seed}\0${draw}\0${name}`).digest();
  return (digest.readUInt32BE(0) * 2 ** 21 + (digest.readUInt32BE(4) >>> 11)) / 2 ** 53;
}

function roundSample(value: number, low: number, high: number): number {
  return Math.min(high, Math.max(low, Number(value.toPrecision(SAMPLE_DIGITS))));
}

function drawValue(entry: RandomSearch["space"][string], unit: number): HyperparamScalar {
  if (Array.isArray(entry)) return entry[Math.min(entry.length - 1, Math.floor(unit * entry.length))] ?? null;
  if (typeof entry !== "object" || entry === null) return entry;
  if ("choice" in entry) return entry.choice[Math.min(entry.choice.length - 1, Math.floor(unit * entry.choice.length))] ?? null;
  if ("intRange" in entry) {
    const [low, high] = entry.intRange;
    return Math.min(high, low + Math.floor(unit * (high - low + 1)));
  }
  if ("uniform" in entry) {
    const [low, high] = entry.uniform;
    return roundSample(low + unit * (high - low), low, high);
  }
  const [low, high] = entry.logUniform;
  return roundSample(Math.exp(Math.log(low) + unit * (Math.log(high) - Math.log(low))), low, high);
}

/** Draws past this many per sample asked mean the space is too narrow for `samples` distinct combinations. */
const DRAWS_PER_SAMPLE = 20;

/**
 * The first `samples` distinct combinations of the draws 0, 1, 2, ...: the
 * same search gives the same jobs, and raising `samples` keeps them as a
 * prefix and adds new ones after.
 */
function sampleRandomSearch(search: RandomSearch): HyperparamSet[] {
  const names = Object.keys(search.space).sort();
  const seen = new Set<string>();
  const combinations: HyperparamSet[] = [];
  const limit = search.samples * DRAWS_PER_SAMPLE + 1000;
  for (let draw = 0; combinations.length < search.samples; draw += 1) {
    if (draw >= limit) {
      fail(
        ["samples"],
        `${limit} draws gave only ${combinations.length} distinct combinations of the ${search.samples} asked: rounded to ${SAMPLE_DIGITS} significant digits, the space holds fewer; widen a range or lower samples`,
      );
    }
    const combination: HyperparamSet = {};
    for (const name of names) combination[name] = drawValue(search.space[name] ?? null, unitDraw(search.seed, draw, name));
    const canonical = canonicalJson(combination);
    if (seen.has(canonical)) continue;
    seen.add(canonical);
    combinations.push(combination);
  }
  return combinations;
}

const expanded = new WeakMap<object, HyperparamSet[]>();

/**
 * The jobs' params of a space, in a stable order. Remembered per space, as
 * the config check expands a space once and the plan again.
 */
export function expandSpace(space: HyperparamSpace): HyperparamSet[] {
  const known = expanded.get(space);
  if (known !== undefined) return known;
  let combinations: HyperparamSet[];
  try {
    combinations = Array.isArray(space) ? expandGrids(space) : isRandomSearch(space) ? sampleRandomSearch(space) : expandGrid(space);
  } catch (error) {
    if (!(error instanceof SpaceProblem)) throw error;
    throw new KaosError("HYPERPARAMS_INVALID", `hyperparams: ${problemText(error.path, error.detail)}`);
  }
  expanded.set(space, combinations);
  return combinations;
}
