/**
 * One canonicalJson writes job keys, grid keys, the applied record and the
 * cluster's pipeline specs. Its two former versions are kept here verbatim,
 * so the test shows each former caller gets the same text as before.
 */
import { afterEach, describe, expect, it } from "vitest";
import { planCluster } from "../src/backends/kubernetes/cluster-plan.js";
import { canonicalJson, expandSpace, parseSpace } from "../src/core/hyperparams.js";
import { jobKeyOf } from "../src/core/plan.js";
import { makeClusterProject, type ClusterProject } from "./fixtures/kubernetes/project.js";

/** What src/core/hyperparams.ts had: job keys, grid keys and the applied record were written with it. */
function formerCoreCanonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((item) => formerCoreCanonicalJson(item)).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const entries = Object.keys(value)
      .sort()
      .map((key) => `${JSON.stringify(key)}:${formerCoreCanonicalJson((value as Record<string, unknown>)[key])}`);
    return `{${entries.join(",")}}`;
  }
  if (typeof value === "number" && !Number.isFinite(value)) throw new TypeError(`cannot encode ${value} as JSON`);
  return JSON.stringify(value) ?? "null";
}

/** What src/backends/kubernetes/canonical.ts had: the cluster's specs and params files were written with it. */
function formerClusterCanonicalJson(value: unknown): string {
  const sortKeys = (inner: unknown): unknown => {
    if (Array.isArray(inner)) return inner.map(sortKeys);
    if (inner === null || typeof inner !== "object") return inner;
    const record = inner as Record<string, unknown>;
    const sorted: Record<string, unknown> = {};
    for (const key of Object.keys(record).sort()) if (record[key] !== undefined) sorted[key] = sortKeys(record[key]);
    return sorted;
  };
  return JSON.stringify(sortKeys(value));
}

const projects: ClusterProject[] = [];
afterEach(() => {
  for (const project of projects.splice(0)) project.remove();
});

describe("canonicalJson", () => {
  it("gives the recorded keys' text exactly as before: params, grids, the applied record, job keys", () => {
    const spaces = [
      { lr: [0.1, 0.01, 1e-7], layers: [2, 3], name: ["a", 'quo"te', "ü"], flag: [true, false], none: [null] },
      [{ b: [1, 2] }, { a: [3], b: [4] }],
      { search: "random", samples: 7, seed: 3, space: { lr: { logUniform: [0.0001, 0.1] }, depth: { choice: [1, 2, 3] } } },
      { "10": [1], "2": [2], a: [3], B: [4] },
    ];
    for (const raw of spaces) {
      const space = parseSpace(raw, "hyperparams");
      expect(canonicalJson(space)).toBe(formerCoreCanonicalJson(space));
      for (const params of expandSpace(space)) {
        expect(canonicalJson(params)).toBe(formerCoreCanonicalJson(params));
        const keys = { env: "e".repeat(64), source: "s".repeat(64), data: "d".repeat(64) };
        expect(jobKeyOf(keys, params)).toMatch(/^[0-9a-f]{64}$/);
      }
    }
    const applied = { svm: { envKey: "e", sourceKey: "s", dataKey: null, params: [{ C: 1, kernel: "poly" }, {}] } };
    expect(canonicalJson(applied)).toBe(formerCoreCanonicalJson(applied));
    // Digits-only keys sort by code unit, as they always did for keys.
    expect(canonicalJson({ "10": 1, "2": 2, a: 3 })).toBe('{"10":1,"2":2,"a":3}');
    expect(() => canonicalJson({ lr: Number.NaN })).toThrow(/cannot encode NaN/);
  });

  it("gives the cluster's pipeline specs and params files their text exactly as before", async () => {
    const made = makeClusterProject([
      { name: "svm", grid: { degree: [3, 5], kernel: ["linear", "poly"] } },
      { name: "cnn", gpu: 2, manifest: true, memory: "4Gi", cpu: 3.5, parallelism: 4 },
      { name: "plain" },
    ]);
    projects.push(made);
    const plan = await planCluster(made.config, made.stack, made.inputs);
    const specs = plan.pipelines.flatMap((p) => p.specs);
    expect(specs.length).toBeGreaterThan(0);
    for (const spec of specs) {
      expect(spec.json).toBe(formerClusterCanonicalJson(spec.spec));
      expect(canonicalJson(JSON.parse(spec.json))).toBe(spec.json);
    }
    for (const input of made.inputs)
      for (const job of input.jobs) expect(canonicalJson(job.params)).toBe(formerClusterCanonicalJson(job.params));
    // Undefined members are left out, as the cluster's version and JSON.stringify leave them out.
    const sparse = { b: undefined, a: [1, undefined], c: { d: undefined } };
    expect(canonicalJson(sparse)).toBe(formerClusterCanonicalJson(sparse));
  });
});
