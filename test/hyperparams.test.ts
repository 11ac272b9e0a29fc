import { describe, expect, it } from "vitest";
import { KaosError } from "../src/core/errors.js";
import { defineConfig } from "../src/define.js";
import { canonicalJson, expandSpace, parseSpace, parseSpaceJson, spaceSize } from "../src/core/hyperparams.js";
import type { HyperparamSpace, RandomSearch } from "../src/core/types.js";

function problem(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    expect(error).toBeInstanceOf(KaosError);
    return (error as KaosError).message;
  }
  throw new Error("expected the space to be refused");
}

const search = (samples: number, seed = 7): RandomSearch => ({
  search: "random",
  seed,
  samples,
  space: {
    C: { logUniform: [0.01, 100] },
    gamma: { uniform: [0.001, 1] },
    degree: { intRange: [2, 6] },
    kernel: { choice: ["rbf", "poly"] },
    shrinking: [true, false],
    decision_function_shape: "ovr",
  },
});

describe("a single grid", () => {
  it("expands to the Cartesian product, keys sorted and the last varying fastest", () => {
    const grid = parseSpace({ kernel: ["linear", "poly"], C: [1, 10], tol: 0.001 }, "hyperparams");
    expect(expandSpace(grid)).toEqual([
      { C: 1, kernel: "linear", tol: 0.001 },
      { C: 1, kernel: "poly", tol: 0.001 },
      { C: 10, kernel: "linear", tol: 0.001 },
      { C: 10, kernel: "poly", tol: 0.001 },
    ]);
    expect(expandSpace(parseSpace({}, "hyperparams"))).toEqual([{}]);
  });
});

describe("a list of grids", () => {
  it("is the union of each grid's combinations, in the order written, each combination once", () => {
    const grids = parseSpace(
      [
        { kernel: ["linear"], C: [1, 10] },
        { kernel: ["poly"], degree: [3, 5], C: [1, 10] },
        { C: [10, 100], kernel: "linear" },
      ],
      "hyperparams",
    );
    expect(spaceSize(grids)).toBe(8);
    expect(expandSpace(grids)).toEqual([
      { C: 1, kernel: "linear" },
      { C: 10, kernel: "linear" },
      { C: 1, degree: 3, kernel: "poly" },
      { C: 1, degree: 5, kernel: "poly" },
      { C: 10, degree: 3, kernel: "poly" },
      { C: 10, degree: 5, kernel: "poly" },
      { C: 100, kernel: "linear" },
    ]);
  });

  it("names the grid and key of each mistake, with the line in a JSON file", () => {
    expect(problem(() => parseSpace([], "hyperparams"))).toBe(
      `hyperparams: empty list of grids; expected at least one grid such as {"kernel": ["linear", "poly"], "C": 1}`,
    );
    expect(problem(() => parseSpace([{ C: [1] }, 5], "hyperparams"))).toBe(
      `hyperparams: [1]: expected a grid such as {"kernel": ["linear", "poly"], "C": 1}, found the number 5`,
    );
    const text = `[\n  {"kernel": ["linear"]},\n  {\n    "kernel": ["poly"],\n    "degree": [3, {"a": 1}]\n  }\n]\n`;
    expect(problem(() => parseSpaceJson(text, "/p/grid.json"))).toBe(
      `/p/grid.json:5: [1]."degree"[1]: expected a string, number, boolean or null, found an object`,
    );
    expect(problem(() => parseSpaceJson(`[{"C": [1]}, {"search": "random"}]`, "/p/grid.json"))).toBe(
      `/p/grid.json:1: [1]."search": a random search stands on its own; expected a grid in a list of grids`,
    );
  });

  it("refuses a key written twice in one object of a JSON file, naming both lines, rather than dropping the first", () => {
    const twice = "written twice in one object";
    expect(problem(() => parseSpaceJson(`{\n  "lr": [0.1, 0.01],\n  "C": 1,\n  "lr": [0.001]\n}\n`, "/p/grid.json"))).toBe(
      `/p/grid.json:4: "lr": ${twice} (first on line 2); JSON keeps only the last, so the first would be dropped without a word; expected each key once (a parameter's candidates in one list)`,
    );
    expect(problem(() => parseSpaceJson(`[{"C": [1]},\n {"C": [2],\n  "C": [3]}]`, "/p/grid.json"))).toMatch(
      new RegExp(`^/p/grid.json:3: \\[1\\]\\."C": ${twice} \\(first on line 2\\)`),
    );
    expect(
      problem(() =>
        parseSpaceJson(`{"search": "random", "seed": 1, "samples": 2,\n "space": {"x": {"uniform": [0, 1]}}, "seed": 2}`, "/p/h.json"),
      ),
    ).toMatch(new RegExp(`^/p/h.json:2: "seed": ${twice} \\(first on line 1\\)`));
    // The same key in two objects is no repeat.
    expect(parseSpaceJson(`[{"C": [1]}, {"C": [2]}]`, "/p/grid.json")).toEqual([{ C: [1] }, { C: [2] }]);
  });

  it("tells a whole number that would lose digits before any key written twice, and the first of two keys written twice", () => {
    const text = `{\n  "C": [1],\n  "C": [2],\n  "gamma": [1],\n  "gamma": [2],\n  "seed": 12345678901234567891\n}\n`;
    expect(problem(() => parseSpaceJson(text, "/p/grid.json"))).toMatch(/^\/p\/grid\.json:6: "seed": 12345678901234567891 is beyond/);
    expect(problem(() => parseSpaceJson(text.replace("12345678901234567891", "1"), "/p/grid.json"))).toMatch(
      /^\/p\/grid\.json:3: "C": written twice in one object \(first on line 2\)/,
    );
  });
});

describe("a random search", () => {
  it("draws the same jobs from the same seed, floats at 6 significant digits and within their bounds", () => {
    const jobs = expandSpace(parseSpace(search(50), "hyperparams"));
    expect(jobs).toHaveLength(50);
    expect(expandSpace(parseSpace(search(50), "hyperparams"))).toEqual(jobs);
    expect(new Set(jobs.map((params) => canonicalJson(params))).size).toBe(50);
    for (const params of jobs) {
      expect(Object.keys(params)).toEqual(["C", "decision_function_shape", "degree", "gamma", "kernel", "shrinking"]);
      expect(params.C).toBeGreaterThanOrEqual(0.01);
      expect(params.C).toBeLessThanOrEqual(100);
      expect(params.gamma).toBeGreaterThanOrEqual(0.001);
      expect(params.gamma).toBeLessThanOrEqual(1);
      expect([2, 3, 4, 5, 6]).toContain(params.degree);
      expect(["rbf", "poly"]).toContain(params.kernel);
      expect([true, false]).toContain(params.shrinking);
      expect(params.decision_function_shape).toBe("ovr");
      for (const float of [params.C, params.gamma] as number[]) expect(Number(float.toPrecision(6))).toBe(float);
    }
    // The draws spread over the space rather than sticking to one corner.
    expect(new Set(jobs.map((params) => params.degree)).size).toBe(5);
    expect(jobs.some((params) => (params.C as number) < 1) && jobs.some((params) => (params.C as number) > 1)).toBe(true);
    expect(expandSpace(parseSpace(search(50, 8), "hyperparams"))).not.toEqual(jobs);
  });

  it("gives the same params on any machine: the draws are fixed by SHA-256, not by the platform", () => {
    expect(expandSpace(parseSpace(search(2), "hyperparams"))).toEqual([
      { C: 0.534371, decision_function_shape: "ovr", degree: 2, gamma: 0.817901, kernel: "rbf", shrinking: true },
      { C: 0.013692, decision_function_shape: "ovr", degree: 4, gamma: 0.878166, kernel: "rbf", shrinking: true },
    ]);
  });

  it("keeps the first N samples as a prefix of the first N + k", () => {
    const small = expandSpace(parseSpace(search(5), "hyperparams"));
    const large = expandSpace(parseSpace(search(12), "hyperparams"));
    expect(large.slice(0, 5)).toEqual(small);
  });

  it("draws distinct combinations until `samples`, and refuses more than a discrete space holds", () => {
    const discrete = (samples: number): RandomSearch => ({
      search: "random",
      seed: 1,
      samples,
      space: { a: [1, 2, 3], b: { intRange: [0, 1] } },
    });
    const all = expandSpace(parseSpace(discrete(6), "hyperparams"));
    expect(new Set(all.map((params) => canonicalJson(params))).size).toBe(6);
    expect(problem(() => parseSpace(discrete(7), "hyperparams"))).toBe(
      `hyperparams: "samples": 7 is more than the 6 distinct combinations the space holds; expected at most 6 (or widen the space)`,
    );
    const narrow: RandomSearch = { search: "random", seed: 1, samples: 5, space: { x: { uniform: [1, 1.00001] } } };
    expect(problem(() => parseSpace(narrow, "hyperparams"))).toMatch(
      /^hyperparams: "samples": 1100 draws gave only \d distinct combinations of the 5 asked: rounded to 6 significant digits, the space holds fewer/,
    );
  });

  it("is written inline in kaos.config.ts as the README shows it, and type-checks there", () => {
    const config = defineConfig({
      pipelines: {
        grids: {
          source: "src",
          data: "data",
          hyperparams: [
            { kernel: ["linear"], C: [1, 10] },
            { kernel: ["poly"], degree: [3, 5], C: [1, 10] },
          ],
        },
        random: {
          source: "src",
          data: "data",
          hyperparams: {
            search: "random",
            seed: 7,
            samples: 20,
            space: {
              C: { logUniform: [0.01, 100] },
              gamma: { uniform: [0.001, 1] },
              degree: { intRange: [2, 6] },
              kernel: { choice: ["rbf", "poly"] },
              shrinking: [true, false],
              decision_function_shape: "ovr",
            },
          },
        },
      },
    });
    expect(expandSpace(parseSpace(config.pipelines.grids?.hyperparams, "hyperparams"))).toHaveLength(6);
    expect(expandSpace(parseSpace(config.pipelines.random?.hyperparams, "hyperparams"))).toHaveLength(20);
  });

  it("is told from a grid by its `search` key and typed for kaos.config.ts", () => {
    const inline: HyperparamSpace = { search: "random", seed: 3, samples: 2, space: { lr: { logUniform: [1e-4, 1e-1] }, layers: [1, 2] } };
    expect(expandSpace(parseSpace(inline, "hyperparams"))).toHaveLength(2);
    expect(spaceSize(inline)).toBe(2);
  });

  it("names the key path of every mistake, and its line in a JSON file", () => {
    const file = (space: string, extra = `"seed": 7, "samples": 3`) =>
      problem(() => parseSpaceJson(`{\n  "search": "random",\n  ${extra},\n  "space": {\n    ${space}\n  }\n}\n`, "/p/h.json"));
    expect(file(`"C": {"logNormal": [0, 1]}`)).toBe(
      `/p/h.json:5: "space"."C"."logNormal": unknown distribution; expected one of "uniform", "logUniform", "intRange", "choice", such as {"uniform": [0, 1]}`,
    );
    expect(file(`"C": {"uniform": [2, 1]}`)).toBe(
      `/p/h.json:5: "space"."C"."uniform": low 2 is above high 1; expected [low, high] with low <= high`,
    );
    expect(file(`"C": {"logUniform": [0, 100]}`)).toBe(
      `/p/h.json:5: "space"."C"."logUniform": low 0 is not above 0, and a logarithm is drawn; expected bounds above 0 such as [0.001, 10] (or "uniform")`,
    );
    expect(file(`"d": {"intRange": [2, 6.5]}`)).toBe(
      `/p/h.json:5: "space"."d"."intRange"[1]: expected a whole number, found the number 6.5`,
    );
    expect(file(`"d": {"intRange": [2]}`)).toBe(
      `/p/h.json:5: "space"."d"."intRange": expected [low, high], two whole numbers such as [2, 6], found a list`,
    );
    expect(file(`"k": {"choice": []}`)).toBe(
      `/p/h.json:5: "space"."k"."choice": empty list of values; expected at least one value (or a scalar to fix it)`,
    );
    expect(file(`"k": {"choice": ["a"], "uniform": [0, 1]}`)).toBe(
      `/p/h.json:5: "space"."k": "choice" and "uniform" together; expected one distribution per parameter`,
    );
    expect(file(`"k": {}`)).toBe(
      `/p/h.json:5: "space"."k": an empty object; expected one of "uniform", "logUniform", "intRange", "choice", such as {"uniform": [0, 1]}`,
    );
    expect(file(`"C": 1`, `"seed": 7, "samples": 2.5`)).toBe(
      `/p/h.json:3: "samples": expected a whole number of combinations, 1 or more, found the number 2.5`,
    );
    expect(file(`"C": 1`, `"seed": 7, "samples": 0`)).toBe(
      `/p/h.json:3: "samples": expected a whole number of combinations, 1 or more, found the number 0`,
    );
    expect(file(`"C": 1`, `"seed": "7", "samples": 1`)).toBe(`/p/h.json:3: "seed": expected a whole number such as 7, found a string`);
    expect(file(`"C": 1`, `"samples": 1`)).toBe(
      `/p/h.json:1: "seed": missing; expected a whole number such as 7, which fixes what is drawn`,
    );
    expect(file(`"C": 1`, `"seed": 1, "samples": 1, "n_iter": 4`)).toBe(
      `/p/h.json:3: "n_iter": unknown key of a random search; expected only search, seed, samples, space`,
    );
    expect(problem(() => parseSpaceJson(`{"search": "bayes", "seed": 1, "samples": 1, "space": {}}`, "/p/h.json"))).toBe(
      `/p/h.json:1: "search": unknown search "bayes"; expected "random" (a grid has no "search" key)`,
    );
    expect(problem(() => parseSpace({ search: "random", seed: 1, samples: 1, space: [1] }, "hyperparams"))).toBe(
      `hyperparams: "space": expected an object of parameters such as {"C": {"logUniform": [0.01, 100]}, "kernel": {"choice": ["rbf", "poly"]}}, found a list`,
    );
  });
});
