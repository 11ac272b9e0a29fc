/**
 * Bad input everywhere: a catalogue of malformed configs, stacks, bundles,
 * manifests, hyperparams files and CLI flag combinations. Each case runs the
 * built CLI on a copy of a project that already has state (one successful
 * `kaos up`), and asserts the exact message, exit status 1, and that the state
 * is exactly as before: the bytes of `.kaos/state.db` and every path under
 * `.kaos/`. Cases marked `fresh` also run on a project without `.kaos/`, which
 * must not be created.
 */
import { closeSync, cpSync, mkdtempSync, openSync, rmSync, statSync, truncateSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SCHEMA_VERSION } from "../src/core/state.js";
import { openRaw } from "./helpers/sqlite.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jobRows, runRows, stateFingerprint } from "./helpers/faults.js";
import { makeProject, runKaos, trivialSourceBundle, under, writeFiles, type FileMap, type Project } from "./helpers/rig.js";

const config = (pipeline: string, top = "") =>
  `import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n${top}  pipelines: {\n    p: ${pipeline},\n  },\n});\n`;
const PIPELINE = `{ source: "src", data: "data", hyperparams: "grid.json" }`;
const MANIFEST_PIPELINE = `{ source: "src", manifest: "m.jsonl", hyperparams: "grid.json" }`;
const stack = (body: string) => ({ "stacks/s.ts": `export default ${body};\n` });
const CLUSTER_STACK = `{ backend: "kubernetes", namespace: "pachyderm", pachyderm: { address: "http://pachd:1659" }, registry: { url: "r.example.com/ml" } }`;
const manifest = (...lines: string[]): FileMap => ({ "kaos.config.ts": config(MANIFEST_PIPELINE), "m.jsonl": `${lines.join("\n")}\n` });
/** A random search over `space`, one key a line: `search` is on line 2, `seed` and `samples` on 3, `space`'s first key on 6. */
const random = (space: string, draws = `"seed": 7, "samples": 3`) =>
  `{\n  "search": "random",\n  ${draws},\n  "space": {\n    "kernel": "rbf",\n    ${space}\n  }\n}\n`;
const LINE_EXAMPLE = `{"url": "https://example.com/train/a.csv", "path": "train/a.csv"}`;

const BASE: FileMap = {
  "kaos.config.ts": config(PIPELINE),
  "grid.json": JSON.stringify({ a: [1, 2] }),
  "data/value.txt": "v1",
  ...under("src", trivialSourceBundle(`#!/bin/sh\nmkdir -p "$1"\necho ok > "$1/done"\n`)),
};

interface Case {
  name: string;
  files?: FileMap | ((dir: string) => FileMap);
  remove?: string[];
  args: string[] | ((ids: { train: string; build: string }) => string[]);
  /** Exact text expected on stderr; `{dir}` stands for the project directory. */
  message: string | ((ids: { train: string; build: string }) => string);
  /** Also run on a project that has no `.kaos/` yet. */
  fresh?: boolean;
  /** Changes made to the copied project before the run, beyond `files`. */
  setup?: (dir: string) => void;
  /** The few cases found out only by planning compare the recorded runs and jobs instead of the bytes (planning refreshes the stat cache). */
  state?: "bytes" | "records";
}

const catalogue: Record<string, Case[]> = {
  "config files": [
    {
      name: "config with a syntax error",
      files: { "kaos.config.ts": "export default defineConfig({\n" },
      args: ["up"],
      message: "error: {dir}/kaos.config.ts: could not be loaded: ParseError",
    },
    {
      name: "config that throws",
      files: { "kaos.config.ts": `throw new Error("boom");\n` },
      args: ["plan"],
      message: "error: {dir}/kaos.config.ts: could not be loaded: boom\n  at {dir}/kaos.config.ts:1\nhint: fix the error above",
    },
    {
      name: "config whose default export is a number",
      files: { "kaos.config.ts": "export default 42;\n" },
      args: ["up"],
      message: "error: {dir}/kaos.config.ts: the default export is 42; expected `export default defineConfig({ pipelines: {...} })`",
    },
    {
      name: "config without a default export",
      files: { "kaos.config.ts": "export const pipelines = {};\n" },
      args: ["up"],
      message: "error: {dir}/kaos.config.ts: has no default export; expected `export default defineConfig({ pipelines: {...} })`",
      fresh: true,
    },
    {
      name: "misspelt top-level key",
      files: { "kaos.config.ts": config(PIPELINE).replace("pipelines:", "pipeline:") },
      args: ["up"],
      message:
        'error: invalid config\n{dir}/kaos.config.ts: pipelines: missing; expected an object of pipelines, such as { svm: { source, data } }\n{dir}/kaos.config.ts:4: pipeline: unknown key; did you mean "pipelines"?',
    },
    {
      name: "no pipelines",
      files: { "kaos.config.ts": `export default { pipelines: {} };\n` },
      args: ["plan"],
      message: "error: invalid config\n{dir}/kaos.config.ts:1: pipelines: expected at least one pipeline",
    },
    {
      name: "pipeline name with a space",
      files: { "kaos.config.ts": config(PIPELINE).replace("p: {", `"bad name": {`) },
      args: ["up"],
      message: "{dir}/kaos.config.ts:5: pipelines.bad name: expected a pipeline name of letters, digits, '-' and '_' (at most 63)",
    },
    {
      name: "misspelt pipeline key",
      files: { "kaos.config.ts": config(PIPELINE.replace("source", "sorce")) },
      args: ["up"],
      message:
        "{dir}/kaos.config.ts:5: pipelines.p.source: missing; expected a path relative to the config file\n{dir}/kaos.config.ts:5: pipelines.p.sorce: unknown key",
    },
    {
      name: "source directory missing",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"src"`, `"nosrc"`)) },
      args: ["up"],
      message:
        "{dir}/kaos.config.ts:5: pipelines.p.source: no such directory: {dir}/nosrc; expected a source bundle directory (Dockerfile and model/)",
      fresh: true,
    },
    {
      name: "source is a file",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"src"`, `"grid.json"`)) },
      args: ["up"],
      message: "pipelines.p.source: not a directory: {dir}/grid.json",
    },
    {
      name: "both data and manifest",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, manifest: "m.jsonl" }`)) },
      args: ["up"],
      message: "{dir}/kaos.config.ts:5: pipelines.p.manifest: `data` and `manifest` are exclusive: keep one of them",
    },
    {
      name: "neither data nor manifest",
      files: { "kaos.config.ts": config(`{ source: "src" }`) },
      args: ["up"],
      message: "{dir}/kaos.config.ts:5: pipelines.p: expected `data` (a local directory) or `manifest` (a manifest file), found neither",
    },
    {
      name: "data directory missing",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"data"`, `"nodata"`)) },
      args: ["up"],
      message: "pipelines.p.data: no such directory: {dir}/nodata; expected a data bundle directory",
    },
    {
      name: "manifest file missing",
      files: { "kaos.config.ts": config(MANIFEST_PIPELINE) },
      args: ["up"],
      message: "pipelines.p.manifest: no such file or directory: {dir}/m.jsonl; expected a manifest file or a directory of manifest files",
    },
    {
      name: "zero cores",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, resources: { cpu: 0 } }`)) },
      args: ["up"],
      message: "pipelines.p.resources.cpu: expected a positive number of cores (fractions allowed, such as 0.5), found 0",
    },
    {
      name: "cores as a word",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, resources: { cpu: "two" } }`)) },
      args: ["up"],
      message: `pipelines.p.resources.cpu: expected a number of cores such as 1 or 0.5, found "two"`,
    },
    {
      name: "memory with a disk-style suffix",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, resources: { memory: "2GB" } }`)) },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.resources.memory: expected a positive size with an SI or binary suffix (k, M, G, T, Ki, Mi, Gi, Ti), such as "512M" or "2Gi", found "2GB"`,
    },
    {
      name: "fractional GPUs",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, resources: { gpu: 1.5 } }`)) },
      args: ["up"],
      message: "pipelines.p.resources.gpu: expected a whole number of GPUs, 0 or more, found 1.5",
    },
    {
      name: "unknown resource",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, resources: { disk: "1Gi" } }`)) },
      args: ["up"],
      message: "pipelines.p.resources.disk: unknown key",
    },
    {
      name: "parallelism 0",
      files: { "kaos.config.ts": config(PIPELINE.replace(`}`, `, parallelism: 0 }`)) },
      args: ["up"],
      message: "pipelines.p.parallelism: expected a whole number of jobs, 1 or more, found 0",
    },
    {
      name: "workspace with a space",
      files: { "kaos.config.ts": config(PIPELINE, `  workspace: "my space",\n`) },
      args: ["up"],
      message: `{dir}/kaos.config.ts:4: workspace: expected a name of letters, digits, '-' and '_' (at most 63), found "my space"`,
    },
    {
      name: "watch.onChange unknown",
      files: { "kaos.config.ts": config(PIPELINE, `  watch: { onChange: "sometimes" },\n`) },
      args: ["up"],
      message: `{dir}/kaos.config.ts:4: watch.onChange: expected "restart" or "queue", found "sometimes"`,
    },
    {
      name: "negative watch.debounceMs",
      files: { "kaos.config.ts": config(PIPELINE, `  watch: { debounceMs: -1 },\n`) },
      args: ["up"],
      message: "{dir}/kaos.config.ts:4: watch.debounceMs: expected 0 or more milliseconds, found -1",
    },
    {
      name: "watch.debounceMs longer than a timer holds",
      files: { "kaos.config.ts": config(PIPELINE, `  watch: { debounceMs: 3000000000 },\n`) },
      args: ["up"],
      message: "{dir}/kaos.config.ts:4: watch.debounceMs: expected at most 2147483647 milliseconds (about 24 days), found 3000000000",
    },
    {
      name: "allowFileUrls naming a missing directory and a file",
      files: { "kaos.config.ts": config(PIPELINE, `  allowFileUrls: ["/no/such/datasets", "grid.json"],\n`) },
      args: ["up"],
      message:
        "error: invalid config\n{dir}/kaos.config.ts:4: allowFileUrls.0: no such directory: /no/such/datasets; expected a directory whose files manifests may read through file: URLs\n{dir}/kaos.config.ts:4: allowFileUrls.1: not a directory: {dir}/grid.json; expected a directory whose files manifests may read through file: URLs",
    },
    {
      name: "allowFileUrls as one string",
      files: { "kaos.config.ts": config(PIPELINE, `  allowFileUrls: "/datasets",\n`) },
      args: ["plan"],
      message: `{dir}/kaos.config.ts:4: allowFileUrls: expected a list of directories, such as ["/datasets"], found "/datasets"`,
    },
    {
      name: "resources the machine cannot give",
      files: {
        "kaos.config.ts": config(PIPELINE.replace(`}`, `, resources: { cpu: 4096 } }`)),
        "grid.json": JSON.stringify({ a: [1, 2, 3] }),
      },
      args: ["up"],
      message: "error: pipelines.p.resources: each job asks for 4096 cores, this machine gives kaos",
      state: "records",
    },
  ],
  hyperparams: [
    {
      name: "hyperparams file missing",
      remove: ["grid.json"],
      args: ["up"],
      message:
        "{dir}/kaos.config.ts:5: pipelines.p.hyperparams: no such file: {dir}/grid.json; expected a JSON file holding a grid, a list of grids or a random search",
      fresh: true,
    },
    {
      name: "hyperparams file not JSON",
      files: { "grid.json": "{nope" },
      args: ["up"],
      message:
        "pipelines.p.hyperparams: {dir}/grid.json:1:2: not valid JSON: found nope; expected a JSON value (keys and strings take double quotes; NaN and comments are not JSON)",
    },
    {
      name: "hyperparams file is a string",
      files: { "grid.json": `"C=1"` },
      args: ["plan"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:1: expected an object of scalars and lists such as {"kernel": ["linear", "poly"], "C": 1}, a list of such grids, or a random search, found a string`,
    },
    {
      name: "hyperparams empty list",
      files: { "grid.json": `{"a": []}` },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:1: "a": empty list of candidates; expected at least one value (or a scalar to fix it)`,
    },
    {
      name: "hyperparams object value",
      files: { "grid.json": `{"a": {"b": 1}}` },
      args: ["up"],
      message: `{dir}/grid.json:1: "a": expected a scalar or a list of scalars, found an object`,
    },
    {
      name: "hyperparams nested list",
      files: { "grid.json": `{"a": [[1]]}` },
      args: ["up"],
      message: `{dir}/grid.json:1: "a"[0]: expected a string, number, boolean or null, found a list`,
    },
    {
      name: "hyperparams candidate twice",
      files: { "grid.json": `{"a": [1, 1]}` },
      args: ["up"],
      message: `{dir}/grid.json:1: "a": the same candidate is listed twice; expected distinct values`,
    },
    {
      name: "hyperparams path is a directory",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `"data"`)) },
      args: ["up"],
      message:
        "pipelines.p.hyperparams: is a directory: {dir}/data; expected a JSON file holding a grid, a list of grids or a random search",
    },
    {
      name: "inline hyperparams with an empty list",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `{ lr: [] }`)) },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: "lr": empty list of candidates; expected at least one value (or a scalar to fix it)`,
    },
    {
      name: "a grid of a hundred million jobs",
      files: {
        "grid.json": JSON.stringify({
          a: Array.from({ length: 1000 }, (_, i) => i),
          b: Array.from({ length: 1000 }, (_, i) => i),
          c: Array.from({ length: 100 }, (_, i) => i),
        }),
      },
      args: ["plan"],
      message:
        "{dir}/kaos.config.ts:5: pipelines.p.hyperparams: the grid expands to 100000000 jobs; expected at most 100000 (is a list longer than meant?)",
      fresh: true,
    },
    {
      name: "hyperparams a number",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `5`)) },
      args: ["up"],
      message:
        "pipelines.p.hyperparams: expected a path to a JSON file, an object of scalars and lists, a list of such grids, or a random search, found 5",
    },
    // Past 2^53 a double skips whole numbers: kaos refuses rather than run a rounded seed (or call two seeds the same).
    {
      name: "hyperparams whole numbers beyond 2^53",
      files: { "grid.json": `{\n  "a": [1, 2],\n  "seed": [7, 12345678901234567891, 12345678901234567892]\n}\n` },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: {dir}/grid.json:3: "seed"[1]: 12345678901234567891 is beyond ±9007199254740991, where a JSON number loses digits (it would become 12345678901234567000); write it as a string to keep every digit: "12345678901234567891"`,
      fresh: true,
    },
    {
      name: "hyperparams negative scalar one past -(2^53 - 1)",
      files: { "grid.json": `{"offset": -9007199254740993, "fine": [9007199254740991, 1.5e300]}` },
      args: ["plan"],
      message: `{dir}/grid.json:1: "offset": -9007199254740993 is beyond ±9007199254740991, where a JSON number loses digits (it would become -9007199254740992); write it as a string to keep every digit: "-9007199254740993"`,
    },
    {
      name: "inline hyperparams number beyond 2^53",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `{ seed: [1, 98765432109876543210] }`)) },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: "seed"[1]: the number 98765432109876540000 is beyond ±9007199254740991, where a JavaScript number has already lost digits; write it as a string holding every digit`,
    },
    {
      name: "inline hyperparams bigint",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `{ seed: 98765432109876543210n }`)) },
      args: ["plan"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: "seed": the bigint 98765432109876543210n: params are passed as JSON, where a number is a double; write it as a string to keep every digit, such as "98765432109876543210"`,
    },
    {
      name: "hyperparams an empty list of grids",
      files: { "grid.json": "[]" },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: {dir}/grid.json:1: empty list of grids; expected at least one grid such as {"kernel": ["linear", "poly"], "C": 1}`,
      fresh: true,
    },
    {
      name: "hyperparams a list of grids holding a number",
      files: { "grid.json": `[\n  {"kernel": ["linear"], "C": [1, 10]},\n  3\n]\n` },
      args: ["plan"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:3: [1]: expected a grid such as {"kernel": ["linear", "poly"], "C": 1}, found the number 3`,
    },
    {
      name: "hyperparams a bad candidate in the second grid",
      files: { "grid.json": `[\n  {"kernel": ["linear"]},\n  {"kernel": ["poly"],\n   "degree": [3, []]}\n]\n` },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:4: [1]."degree"[1]: expected a string, number, boolean or null, found a list`,
    },
    {
      name: "inline list of grids with an empty one's list",
      files: { "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `[{ a: [1] }, { a: [] }]`)) },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: [1]."a": empty list of candidates; expected at least one value (or a scalar to fix it)`,
    },
    {
      name: "random search with an unknown distribution",
      files: { "grid.json": random(`"C": {"logNormal": [0, 1]}`) },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:6: "space"."C"."logNormal": unknown distribution; expected one of "uniform", "logUniform", "intRange", "choice", such as {"uniform": [0, 1]}`,
      fresh: true,
    },
    {
      name: "random search with low above high",
      files: { "grid.json": random(`"gamma": {"uniform": [1, 0.001]}`) },
      args: ["plan"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:6: "space"."gamma"."uniform": low 1 is above high 0.001; expected [low, high] with low <= high`,
    },
    {
      name: "random search with a logUniform bound at 0",
      files: { "grid.json": random(`"C": {"logUniform": [0, 100]}`) },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:6: "space"."C"."logUniform": low 0 is not above 0, and a logarithm is drawn; expected bounds above 0 such as [0.001, 10] (or "uniform")`,
    },
    {
      name: "random search with an intRange of floats",
      files: { "grid.json": random(`"degree": {"intRange": [2.5, 6]}`) },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:6: "space"."degree"."intRange"[0]: expected a whole number, found the number 2.5`,
    },
    {
      name: "random search with samples not a positive whole number",
      files: { "grid.json": random(`"C": 1`, `"seed": 7, "samples": 0`) },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:3: "samples": expected a whole number of combinations, 1 or more, found the number 0`,
    },
    {
      name: "random search with a fractional seed",
      files: { "grid.json": random(`"C": 1`, `"seed": 1.5, "samples": 3`) },
      args: ["plan"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:3: "seed": expected a whole number such as 7, found the number 1.5`,
    },
    {
      name: "random search with more samples than the space holds",
      files: { "grid.json": random(`"C": {"choice": [1, 2]}`, `"seed": 7, "samples": 3`) },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:3: "samples": 3 is more than the 2 distinct combinations the space holds; expected at most 2 (or widen the space)`,
    },
    {
      name: "random search of an unknown kind",
      files: { "grid.json": random(`"C": 1`).replace(`"random"`, `"bayesian"`) },
      args: ["up"],
      message: `pipelines.p.hyperparams: {dir}/grid.json:2: "search": unknown search "bayesian"; expected "random" (a grid has no "search" key)`,
    },
    {
      name: "inline random search with a misspelt key",
      files: {
        "kaos.config.ts": config(PIPELINE.replace(`"grid.json"`, `{ search: "random", seed: 7, samples: 2, spaces: { C: [1, 2] } }`)),
      },
      args: ["up"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: "spaces": unknown key of a random search; expected only search, seed, samples, space`,
    },
    {
      name: "inline random search of a million samples",
      files: {
        "kaos.config.ts": config(
          PIPELINE.replace(`"grid.json"`, `{ search: "random", seed: 7, samples: 1000000, space: { C: { uniform: [0, 1] } } }`),
        ),
      },
      args: ["plan"],
      message: `{dir}/kaos.config.ts:5: pipelines.p.hyperparams: samples asks for 1000000 jobs; expected at most 100000`,
      fresh: true,
    },
  ],
  "source bundles": [
    {
      name: "source bundle without a Dockerfile",
      remove: ["src/Dockerfile"],
      args: ["up"],
      message:
        "error: pipelines.p.source: invalid source bundle {dir}/src\n{dir}/src/Dockerfile: missing; expected the Dockerfile that builds the training image",
      fresh: true,
    },
    {
      name: "source bundle without train",
      remove: ["src/model/train"],
      args: ["plan"],
      message: "{dir}/src/model/train: missing; expected the executable training script",
    },
    {
      name: "train not executable",
      files: { "src/model/train": { content: "#!/bin/sh\n", mode: 0o644 } },
      args: ["up"],
      message: "{dir}/src/model/train: not executable; run `chmod +x {dir}/src/model/train`",
    },
    {
      name: "source bundle without requirements.txt",
      remove: ["src/model/requirements.txt"],
      args: ["up"],
      message: "{dir}/src/model/requirements.txt: missing; expected the Python requirements (may be empty)",
    },
    {
      name: "source bundle without model/",
      remove: ["src/model"],
      args: ["up"],
      message: "{dir}/src/model/: missing; expected a model/ directory with requirements.txt and an executable train\n",
    },
  ],
  "manifests and locks": [
    {
      name: "manifest line not JSON",
      files: manifest("{nope"),
      args: ["up"],
      message: `error: {dir}/m.jsonl:1: invalid JSON (Expected property name or '}' in JSON at position 1 (line 1 column 2)) — expected one JSON object per line, like ${LINE_EXAMPLE}`,
      fresh: true,
    },
    {
      name: "manifest line is an array",
      files: manifest(`{"url": "http://x/a", "path": "a"}`, "[1]"),
      args: ["plan"],
      message: `error: {dir}/m.jsonl:2: line is an array — expected a JSON object like ${LINE_EXAMPLE}`,
    },
    {
      name: "manifest path escaping with ..",
      files: manifest(`{"url": "http://x/a", "path": "train/../../a"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:1: unsafe path "train/../../a" (has a '..' segment) — expected a relative path inside the data directory, such as "train/a.csv"`,
    },
    {
      name: "manifest absolute path",
      files: manifest(`{"url": "http://x/a", "path": "/etc/passwd"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:1: unsafe path "/etc/passwd" (is absolute)`,
    },
    {
      name: "manifest unknown key",
      files: manifest(`{"url": "http://x/a", "path": "a", "md5": "x"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:1: unknown key "md5" — expected only "url", "path", "sha256" and "size"`,
    },
    {
      name: "manifest without url",
      files: manifest(`{"url": "http://x/a", "path": "a"}`, `{"path": "b"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:2: missing "url" — expected a string URL with scheme http, https or file`,
    },
    {
      name: "manifest ftp URL",
      files: manifest(`{"url": "ftp://x/a", "path": "a"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:1: "url" has unsupported scheme "ftp" — expected http, https or file`,
    },
    {
      name: "manifest short sha256",
      files: manifest(`{"url": "http://x/a", "path": "a", "sha256": "abc"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:1: "sha256" "abc" is not 64 hex digits — expected the SHA-256 of the file's content in hex`,
    },
    {
      name: "manifest negative size",
      files: manifest(`{"url": "http://x/a", "path": "a", "size": -1}`),
      args: ["up"],
      message: `{dir}/m.jsonl:1: "size" -1 is not a non-negative integer — expected the file's length in bytes`,
    },
    {
      name: "manifest path twice",
      files: manifest(`{"url": "http://x/a", "path": "a"}`, `{"url": "http://x/b", "path": "a"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:2: duplicate path "a" (first at {dir}/m.jsonl:1) — expected each path once`,
    },
    {
      name: "manifest file inside a file",
      files: manifest(`{"url": "http://x/a", "path": "a"}`, `{"url": "http://x/b", "path": "a/b"}`),
      args: ["up"],
      message: `{dir}/m.jsonl:2: path "a/b" puts a file inside "a", which {dir}/m.jsonl:1 lists as a file — expected each path to be either a file or a folder, not both`,
    },
    {
      name: "manifest file URL reading a host file",
      files: manifest(`{"url": "file:///etc/shadow", "path": "s.txt"}`),
      args: ["up"],
      message: `error: {dir}/m.jsonl:1: "url" file:///etc/shadow may not be read: /etc/shadow is outside the project {dir}\nhint: expected a file inside the project {dir}; to read from another directory, list it in allowFileUrls in {dir}/kaos.config.ts`,
      fresh: true,
    },
    {
      name: "empty manifest",
      files: { ...manifest(), "m.jsonl": "\n\n" },
      args: ["up"],
      message: `error: {dir}/m.jsonl: the manifest has no entries — expected at least one line like ${LINE_EXAMPLE}`,
    },
    {
      name: "lock not JSON",
      files: { ...manifest(`{"url": "http://x/a", "path": "a"}`), "m.jsonl.lock": "{bad" },
      args: ["up"],
      message:
        "error: {dir}/m.jsonl.lock: the lock is not valid JSON (Expected property name or '}' in JSON at position 1 (line 1 column 2))\nhint: Delete {dir}/m.jsonl.lock and run again",
    },
    {
      name: "lock of another version",
      files: { ...manifest(`{"url": "http://x/a", "path": "a"}`), "m.jsonl.lock": `{"version": 2, "entries": {}}` },
      args: ["plan"],
      message: "error: {dir}/m.jsonl.lock: the lock is invalid at version: Invalid input: expected 1",
    },
  ],
  stacks: [
    {
      name: "stack file missing",
      args: ["up", "--stack", "nope"],
      message:
        'error: --stack nope: no stack file {dir}/stacks/nope.ts\nhint: create it with `export default defineStack({ backend: "local" })`',
      fresh: true,
    },
    {
      name: "stack name with a path",
      args: ["up", "--stack", "../x"],
      message: "error: --stack ../x: expected a stack name of letters, digits, '-' and '_' (the file stacks/NAME.ts)",
    },
    {
      name: "stack with an unknown backend",
      files: stack(`{ backend: "cloud" }`),
      args: ["up", "--stack", "s"],
      message: `error: invalid stack\n{dir}/stacks/s.ts:1: backend: expected \`backend: "local"\` or \`backend: "kubernetes"\`, found "cloud"`,
    },
    {
      name: "stack with negative maxCpu",
      files: stack(`{ backend: "local", maxCpu: -1 }`),
      args: ["plan", "--stack", "s"],
      message: "{dir}/stacks/s.ts:1: maxCpu: expected a positive number of cores, found -1",
    },
    {
      name: "stack with a misspelt key",
      files: stack(`{ backend: "local", maxMem: "1Gi" }`),
      args: ["up", "--stack", "s"],
      message: "{dir}/stacks/s.ts:1: maxMem: unknown key",
    },
    {
      name: "stack with a syntax error",
      files: { "stacks/s.ts": "export default { backend: \n" },
      args: ["up", "--stack", "s"],
      message: "error: {dir}/stacks/s.ts: could not be loaded: ParseError",
    },
    {
      name: "stack without a default export",
      files: { "stacks/s.ts": `export const backend = "local";\n` },
      args: ["up", "--stack", "s"],
      message: "error: {dir}/stacks/s.ts: has no default export; expected `export default defineStack({ backend: ... })`",
    },
    {
      name: "kubernetes stack without a namespace",
      files: stack(`{ backend: "kubernetes", pachyderm: { address: "http://pachd:30650" }, registry: { url: "r.example.com/ml" } }`),
      args: ["up", "--stack", "s"],
      message: "error: invalid stack\n{dir}/stacks/s.ts: namespace: missing; expected a Kubernetes namespace name",
    },
    {
      name: "render of a local stack",
      files: stack(`{ backend: "local" }`),
      args: ["render", "--stack", "s", "-o", "out"],
      message: "error: --stack s: stack uses the local backend; `kaos render` needs a kubernetes stack",
    },
  ],
  "state files": [
    {
      name: "state.db that is not a database",
      files: { ".kaos/state.db": "this is not SQLite\n".repeat(300) },
      args: ["up"],
      message:
        "error: {dir}/.kaos/state.db is not a readable kaos state database (file is not a database); move it away (mv {dir}/.kaos/state.db {dir}/.kaos/state.db.broken) and run kaos again",
    },
    {
      name: "state.db that is not a database, read by train list",
      files: { ".kaos/state.db": "this is not SQLite\n".repeat(300) },
      args: ["train", "list"],
      message: "error: {dir}/.kaos/state.db is not a readable kaos state database (file is not a database)",
    },
    {
      name: "state.db written by a newer kaos",
      setup: (dir) => setUserVersion(dir, 99),
      args: ["up"],
      message: `error: {dir}/.kaos/state.db has state schema version 99, newer than this kaos understands (${SCHEMA_VERSION}); upgrade kaos to use it`,
    },
    {
      name: "state.db damaged in the middle, found before any write",
      setup: (dir) => damageMiddle(dir),
      args: ["up"],
      message: "error: {dir}/.kaos/state.db is not a readable kaos state database (",
    },
    {
      name: "state.db damaged in the middle, a no-op plan included",
      setup: (dir) => damageMiddle(dir),
      args: ["plan"],
      message: "error: {dir}/.kaos/state.db is not a readable kaos state database (",
    },
    {
      name: "state.db emptied while job folders remain",
      setup: (dir) => truncateSync(join(dir, ".kaos", "state.db"), 0),
      args: ["up"],
      message: "error: {dir}/.kaos/state.db is empty (0 bytes): the record of earlier runs is lost, while {dir}/.kaos/jobs still holds ",
    },
    {
      name: "state.db emptied, read by train list",
      setup: (dir) => truncateSync(join(dir, ".kaos", "state.db"), 0),
      args: ["train", "list"],
      message:
        "hint: kaos does not start afresh on its own. To do so, move the file away (mv {dir}/.kaos/state.db {dir}/.kaos/state.db.empty) and run kaos again",
    },
    {
      name: "state.db written by a newer kaos, read by train list",
      setup: (dir) => setUserVersion(dir, 99),
      args: ["train", "list", "--json"],
      message: `has state schema version 99, newer than this kaos understands (${SCHEMA_VERSION})`,
    },
  ],
  "CLI flags": [
    {
      name: "unknown command",
      args: ["frobnicate"],
      message: "error: unknown command 'frobnicate'\n(run with --help for usage)",
      fresh: true,
    },
    { name: "unknown option", args: ["up", "--frobnicate"], message: "error: unknown option '--frobnicate'" },
    {
      name: "extra argument to up",
      args: ["up", "extra"],
      message: "error: too many arguments for 'up'. Expected 0 arguments but got 1: extra.",
    },
    {
      name: "--config that does not exist",
      args: ["--config", "nope.ts", "up"],
      message: "error: --config nope.ts: no such file: {dir}/nope.ts",
    },
    {
      name: "no config anywhere",
      remove: ["kaos.config.ts"],
      args: ["plan"],
      message: "error: no kaos.config.ts (or .mts, .cts, .js, .mjs, .cjs) found in {dir} or any parent directory",
    },
    {
      name: "deploy without a source",
      args: ["train", "deploy", "-d", "data"],
      message: "error: required option '-s, --source <dir>' not specified",
    },
    { name: "deploy without data", args: ["train", "deploy", "-s", "src"], message: "error: expected -d/--data DIR or -m/--manifest PATH" },
    {
      name: "deploy with data and manifest",
      args: ["train", "deploy", "-s", "src", "-d", "data", "-m", "m.jsonl"],
      message: "error: -d/--data and -m/--manifest are exclusive: give one of them",
    },
    {
      name: "deploy with negative cores",
      args: ["train", "deploy", "-s", "src", "-d", "data", "--cpu", "-1"],
      message: `error: option '--cpu <n>' argument '-1' is invalid. --cpu: expected a positive number, found "-1"`,
    },
    {
      name: "deploy with fractional GPUs",
      args: ["train", "deploy", "-s", "src", "-d", "data", "--gpu", "1.5"],
      message: `--gpu: expected a whole number, 0 or more, found "1.5"`,
    },
    {
      name: "deploy with parallelism 0",
      args: ["train", "deploy", "-s", "src", "-d", "data", "-p", "0"],
      message: `--parallelism: expected a whole number, 1 or more, found "0"`,
    },
    {
      name: "deploy with a memory word",
      args: ["train", "deploy", "-s", "src", "-d", "data", "--memory", "lots"],
      message: "error: --memory lots: expected a size with an SI or binary suffix such as 512M or 2Gi",
    },
    {
      name: "deploy with a missing hyperparams file",
      args: ["train", "deploy", "-s", "src", "-d", "data", "-h", "nope.json"],
      message:
        "error: invalid flags\n-h/--hyperparams: no such file: {dir}/nope.json; expected a JSON file holding a grid, a list of grids or a random search",
      fresh: true,
    },
    {
      name: "deploy with a bad pipeline name",
      args: ["train", "deploy", "-s", "src", "-d", "data", "-n", "bad name"],
      message: `error: invalid flags\n-n/--name "bad name": expected a pipeline name of letters, digits, '-' and '_' (at most 63)`,
    },
    {
      name: "deploy of a bundle without train",
      remove: ["src/model/train"],
      args: ["train", "deploy", "-s", "src", "-d", "data"],
      message: "error: -s/--source: invalid source bundle {dir}/src\n{dir}/src/model/train: missing",
    },
    {
      name: "deploy of a bad manifest",
      files: { "m.jsonl": `{"url": "http://x/a", "path": "../a"}\n` },
      args: ["train", "deploy", "-s", "src", "-m", "m.jsonl"],
      message: `error: {dir}/m.jsonl:1: unsafe path "../a" (has a '..' segment)`,
      fresh: true,
    },
    {
      name: "list with limit 0",
      args: ["train", "list", "--limit", "0"],
      message: `--limit: expected a whole number, 1 or more, found "0"`,
    },
    { name: "logs without a job", args: ["train", "logs"], message: "error: missing required argument 'job'" },
    {
      name: "logs of an unknown job",
      args: ["train", "logs", "zzzz"],
      message: "error: no job matches 'zzzz'\nhint: `kaos train list` shows the job ids",
      fresh: true,
    },
    { name: "logs of an empty job id", args: ["train", "logs", " "], message: "error: a job id is empty" },
    { name: "info with a job id of other characters", args: ["train", "info", "../../etc"], message: "error: no job matches '../../etc'" },
    {
      name: "info sorted by an unknown metric",
      args: (ids) => ["train", "info", ids.train, "-s", "accuracy"],
      message: `-s accuracy: no job of this sweep has a numeric metric "accuracy"; expected one of: (none recorded)`,
    },
    {
      name: "info --asc without a metric",
      args: ["train", "info", "--asc"],
      message: "error: --asc goes with -s/--sort METRIC",
      fresh: true,
    },
    { name: "compare --asc without a metric", args: ["train", "compare", "--asc"], message: "error: --asc goes with -s/--sort METRIC" },
    {
      name: "info of a job with --pipeline",
      args: (ids) => ["train", "info", ids.train, "--pipeline", "p"],
      message: "error: --pipeline names the sweep to show without a job; a job is shown with its own pipeline's sweep",
    },
    {
      name: "get of a build job",
      args: (ids) => ["train", "get", ids.build, "-o", "x"],
      message: (ids) => `error: job ${ids.build} is a build job; expected a train job, which has outputs`,
    },
    {
      name: "get into a non-empty directory",
      files: { "taken/file": "x" },
      args: (ids) => ["train", "get", ids.train, "-o", "taken"],
      message: "error: {dir}/taken already exists and is not empty; expected a new or empty directory",
    },
    {
      name: "get into a file",
      files: { "taken.txt": "x" },
      args: (ids) => ["train", "get", ids.train, "-o", "taken.txt"],
      message: "error: {dir}/taken.txt is a file; expected a new or empty directory",
    },
    {
      name: "get into kaos's state directory",
      args: (ids) => ["train", "get", ids.train, "-o", ".kaos/got"],
      message: "error: -o {dir}/.kaos/got: inside {dir}/.kaos, kaos's state directory; expected a new or empty directory outside it",
    },
    {
      name: "get into a link into kaos's state directory",
      files: { "state-link": { symlink: ".kaos/jobs" } },
      args: (ids) => ["train", "get", ids.train, "-o", "state-link/got"],
      message: "error: -o {dir}/state-link/got: inside {dir}/.kaos, kaos's state directory",
    },
    {
      name: "get into an empty -o (an unset shell variable)",
      args: (ids) => ["train", "get", ids.train, "-o", ""],
      message: "error: -o: expected a new or empty directory, found an empty value",
    },
    {
      name: "kill of a finished job",
      args: (ids) => ["train", "kill", ids.train],
      message: (ids) => `error: job ${ids.train} is succeeded; only a queued or running job can be killed`,
    },
    { name: "kill of an unknown job", args: ["train", "kill", "zz"], message: "error: no job matches 'zz'", fresh: true },
    {
      name: "watch with an unknown --on-change",
      args: ["watch", "--on-change", "sometimes"],
      message: "error: option '--on-change <mode>' argument 'sometimes' is invalid. Allowed choices are restart, queue.",
    },
    {
      name: "watch --poll-interval without --poll",
      args: ["watch", "--poll-interval", "100"],
      message: "error: --poll-interval goes with --poll",
    },
    {
      name: "watch with a negative debounce",
      args: ["watch", "--debounce", "-5"],
      message: `--debounce: expected a whole number, 0 or more, found "-5"`,
    },
    {
      name: "watch with a debounce longer than a timer holds",
      args: ["watch", "--debounce", "2147483648"],
      message: `--debounce: expected at most 2147483647 (milliseconds, about 24 days), found "2147483648"`,
    },
    { name: "render without a stack", args: ["render", "-o", "out"], message: "error: required option '--stack <name>' not specified" },
    {
      name: "render into a file",
      files: stack(CLUSTER_STACK),
      args: ["render", "--stack", "s", "-o", "kaos.config.ts"],
      message: "error: {dir}/kaos.config.ts is a file; expected a directory",
      fresh: true,
    },
    {
      name: "render under a file",
      files: stack(CLUSTER_STACK),
      args: ["render", "--stack", "s", "-o", "kaos.config.ts/out"],
      message: "error: {dir}/kaos.config.ts is a file; expected a directory",
      fresh: true,
    },
    {
      name: "render into an empty -o",
      files: stack(CLUSTER_STACK),
      args: ["render", "--stack", "s", "-o", ""],
      message: "error: -o: expected a directory, found an empty value",
      fresh: true,
    },
    {
      name: "render into kaos's state directory",
      files: stack(CLUSTER_STACK),
      args: ["render", "--stack", "s", "-o", ".kaos/out"],
      message: "error: -o {dir}/.kaos/out: inside {dir}/.kaos, kaos's state directory; expected a directory outside it",
    },
    {
      name: "template with a misspelt name",
      args: ["template", "get", "--name", "mnst"],
      message: `error: --name mnst: no such template; did you mean "mnist"? expected one of: mnist`,
      fresh: true,
    },
    {
      name: "template with an empty name",
      args: ["template", "get", "--name", ""],
      message: "error: --name: found an empty value; expected a template name, one of: mnist",
      fresh: true,
    },
    {
      name: "compare of a misspelt pipeline",
      args: ["train", "compare", "P"],
      message: `error: no pipeline "P" in {dir}/kaos.config.ts; did you mean "p"? expected one of: p`,
    },
    {
      name: "template into kaos's state directory",
      args: ["template", "get", "--name", "mnist", "-o", ".kaos/mnist"],
      message: "error: -o {dir}/.kaos/mnist: inside {dir}/.kaos, kaos's state directory",
    },
    {
      name: "template into an empty -o",
      args: ["template", "get", "--name", "mnist", "-o", ""],
      message: "error: -o: expected a directory (new, empty, or without the template's files), found an empty value",
      fresh: true,
    },
    {
      name: "template that does not exist",
      args: ["template", "get", "--name", "nope"],
      message: "error: --name nope: no such template; expected one of: mnist",
    },
    {
      name: "plan --detailed-exitcode on a bad config still exits 1",
      files: { "grid.json": "{" },
      args: ["plan", "--detailed-exitcode", "--json"],
      message: "pipelines.p.hyperparams: {dir}/grid.json:1:2: not valid JSON: expected '}' to close the object",
    },
  ],
};
const cases = Object.values(catalogue).flat();

const dirs: string[] = [];
let seeded: Project;
let ids: { train: string; build: string };

beforeAll(async () => {
  seeded = makeProject(BASE, "kaos-bad-seed-");
  const up = await runKaos(["up"], { cwd: seeded.dir });
  if (up.code !== 0) throw new Error(`seeding kaos up failed:\n${up.stderr}`);
  const rows = jobRows(seeded.dir);
  ids = { train: rows.find((row) => row.stage === "train")!.id, build: rows.find((row) => row.stage === "build")!.id };
}, 120_000);

afterAll(() => {
  seeded?.remove();
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function prepare(entry: Case, withState: boolean): string {
  const dir = mkdtempSync(join(tmpdir(), "kaos-bad-"));
  dirs.push(dir);
  if (withState) cpSync(seeded.dir, dir, { recursive: true, verbatimSymlinks: true });
  else writeFiles(dir, BASE);
  for (const path of entry.remove ?? []) rmSync(join(dir, path), { recursive: true, force: true });
  const files = typeof entry.files === "function" ? entry.files(dir) : entry.files;
  if (files) writeFiles(dir, files);
  entry.setup?.(dir);
  return dir;
}

function setUserVersion(dir: string, version: number): void {
  const db = openRaw(join(dir, ".kaos", "state.db"));
  db.exec(`PRAGMA user_version = ${version}`);
  db.close();
}

/** Overwrites the pages in the middle of state.db, past its header, as a failing disk or a stray `dd` would. */
function damageMiddle(dir: string): void {
  const file = join(dir, ".kaos", "state.db");
  const { size } = statSync(file);
  const pageSize = 4096;
  const fd = openSync(file, "r+");
  try {
    const middlePage = Math.max(1, Math.floor(size / pageSize / 2));
    writeSync(fd, Buffer.alloc(2 * pageSize, 0xa5), 0, 2 * pageSize, middlePage * pageSize);
  } finally {
    closeSync(fd);
  }
}

function records(dir: string): unknown {
  return { jobs: jobRows(dir), runs: runRows(dir) };
}

async function check(entry: Case, withState: boolean): Promise<void> {
  const dir = prepare(entry, withState);
  const before = stateFingerprint(dir);
  const recordsBefore = entry.state === "records" ? records(dir) : undefined;
  const args = typeof entry.args === "function" ? entry.args(ids) : entry.args;
  const message = (typeof entry.message === "function" ? entry.message(ids) : entry.message).replaceAll("{dir}", dir);
  const result = await runKaos(args, { cwd: dir, timeoutMs: 60_000 });
  const context = `${entry.name} (${withState ? "with state" : "fresh"}): kaos ${args.join(" ")}\nstderr:\n${result.stderr}`;
  expect(result.stderr, context).toContain(message);
  expect(result.stderr, context).not.toContain("internal error");
  expect(result.code, context).toBe(1);
  const after = stateFingerprint(dir);
  if (!withState) {
    expect(after.exists, `${context}\n.kaos/ was created`).toBe(false);
  } else if (entry.state === "records") {
    expect(records(dir), context).toEqual(recordsBefore);
    expect(after.files, context).toEqual(before.files);
  } else {
    expect(after, context).toEqual(before);
  }
}

/** Runs the checks a few at a time: each is a separate kaos process. */
async function pool<T>(items: T[], width: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const failures: unknown[] = [];
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) {
        const item = items[next++]!;
        await work(item).catch((error: unknown) => failures.push(error));
      }
    }),
  );
  if (failures.length > 0) throw failures[0];
}

describe("bad input: exact message, exit status 1, state untouched", () => {
  it(`has a catalogue of at least 40 cases (${cases.length})`, () => {
    expect(cases.length).toBeGreaterThanOrEqual(40);
    expect(new Set(cases.map((entry) => entry.name)).size).toBe(cases.length);
  });

  for (const [group, slice] of Object.entries(catalogue)) {
    it(`${group}: ${slice.length} cases on a project with state`, async () => {
      await pool(slice, 3, (entry) => check(entry, true));
    }, 120_000);
  }

  const fresh = cases.filter((entry) => entry.fresh);
  it(`${fresh.length} cases on a project without .kaos/ create none`, async () => {
    await pool(fresh, 3, (entry) => check(entry, false));
  }, 120_000);
});
