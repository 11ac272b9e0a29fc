import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { loadConfig, loadStack, locateKey, parseMemory } from "../src/core/config.js";
import { validateSourceBundle, pythonVersionOf } from "../src/core/bundle.js";
import { IMAGE_REGISTRY_PATTERN } from "../src/core/config-text.js";
import { KaosError } from "../src/core/errors.js";
import { makeProject, runKaos, trivialSourceBundle, under, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterEach(() => {
  while (projects.length > 0) projects.pop()?.remove();
});

function project(config: string, extra: Record<string, string> = {}, file = "kaos.config.ts"): Project {
  const made = makeProject({
    [file]: config,
    ...under("src", trivialSourceBundle("#!/bin/sh\necho ok\n")),
    "data/a.csv": "x\n1\n",
    "manifest.jsonl": '{"url": "http://127.0.0.1:1/a.csv", "path": "a.csv"}\n',
    "grid.json": '{"C": [1, 2]}',
    ...extra,
  });
  projects.push(made);
  return made;
}

/** A config whose svm pipeline has `body` inside it, so line numbers are predictable. */
function pipelineConfig(body: string): string {
  return `import { defineConfig } from "kaos-ml";\nexport default defineConfig({\n  pipelines: {\n    svm: {\n${body}\n    },\n  },\n});\n`;
}

async function configError(config: string, extra: Record<string, string> = {}): Promise<{ message: string; file: string }> {
  const made = project(config, extra);
  try {
    await loadConfig({ cwd: made.dir });
  } catch (error) {
    expect(error).toBeInstanceOf(KaosError);
    return { message: (error as KaosError).message, file: made.path("kaos.config.ts") };
  }
  throw new Error("expected the config to be rejected");
}

describe("config loading", () => {
  it("loads a TypeScript config that imports defineConfig from kaos, resolving paths against its directory", async () => {
    const made = project(
      pipelineConfig(
        `      source: "src",\n      data: "data",\n      hyperparams: "grid.json",\n      resources: { cpu: 0.5, memory: "512Mi", gpu: 0 },\n      parallelism: 3,`,
      ),
    );
    const config = await loadConfig({ cwd: made.dir });
    expect(config.file).toBe(made.path("kaos.config.ts"));
    expect(config.root).toBe(made.dir);
    expect(config.pipelines).toHaveLength(1);
    const [svm] = config.pipelines;
    expect(svm).toMatchObject({
      name: "svm",
      sourceDir: made.path("src"),
      data: { kind: "dir", dir: made.path("data") },
      hyperparams: { C: [1, 2] },
      hyperparamsFile: made.path("grid.json"),
      resources: { cpu: 0.5, memory: "512Mi", memoryBytes: 512 * 2 ** 20, gpu: 0 },
      parallelism: 3,
    });
    expect(config.watch).toEqual({ debounceMs: 200, onChange: "restart" });
  });

  it("loads .js, .mjs, .mts and .cts configs and finds the config in a parent directory", async () => {
    for (const file of ["kaos.config.js", "kaos.config.mjs", "kaos.config.mts", "kaos.config.cts"]) {
      const made = project(
        `export default { workspace: "w", pipelines: { p: { source: "src", manifest: "manifest.jsonl", hyperparams: { a: [1, 2, 3], b: "x" } } } };\n`,
        { "deep/er/x": "" },
        file,
      );
      const config = await loadConfig({ cwd: made.path("deep/er") });
      expect(config.file).toBe(made.path(file));
      expect(config.workspace).toBe("w");
      expect(config.pipelines[0]?.data).toEqual({ kind: "manifest", path: made.path("manifest.jsonl") });
      expect(config.pipelines[0]?.hyperparams).toEqual({ a: [1, 2, 3], b: "x" });
    }
  });

  it("loads CommonJS configs: `module.exports`, or `exports.default` as TypeScript writes it", async () => {
    const body = `{ workspace: "w", pipelines: { p: { source: "src", data: "data" } } }`;
    for (const [file, text] of [
      ["kaos.config.cjs", `const { defineConfig } = require("kaos-ml");\nmodule.exports = defineConfig(${body});\n`],
      ["kaos.config.js", `module.exports = ${body};\n`],
      ["kaos.config.cts", `import { defineConfig } from "kaos-ml";\nexport = defineConfig(${body});\n`],
      ["kaos.config.cjs", `Object.defineProperty(exports, "__esModule", { value: true });\nexports.default = ${body};\n`],
    ] as const) {
      const made = project(text, {}, file);
      const config = await loadConfig({ cwd: made.dir });
      expect(config.file, text).toBe(made.path(file));
      expect(config.workspace, text).toBe("w");
    }
    const empty = project(`const unused = 1;\n`, {}, "kaos.config.cjs");
    await expect(loadConfig({ cwd: empty.dir })).rejects.toThrow(
      `${empty.path("kaos.config.cjs")}: has no default export; expected \`export default defineConfig({ pipelines: {...} })\` (or \`module.exports = ...\` in CommonJS)`,
    );
  });

  it("takes the config names in vitest's order, TypeScript first, and refuses a folder with two of them", async () => {
    const made = project(`export default { workspace: "ts", pipelines: { p: { source: "src", data: "data" } } };\n`, {}, "kaos.config.cjs");
    expect((await loadConfig({ cwd: made.dir })).file).toBe(made.path("kaos.config.cjs"));
    made.write({ "kaos.config.ts": readFileSync(made.path("kaos.config.cjs"), "utf8") });
    const error = await loadConfig({ cwd: made.dir }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("CONFIG_AMBIGUOUS");
    expect((error as KaosError).message).toBe(
      `${made.path("kaos.config.ts")} and ${made.path("kaos.config.cjs")}: 2 files where kaos reads one`,
    );
    expect((error as KaosError).hint).toBe(
      "keep one: remove or rename the other (kaos.config.ts is looked for first), or name one with --config PATH",
    );
    expect((await loadConfig({ cwd: made.dir, configPath: "kaos.config.cjs" })).file).toBe(made.path("kaos.config.cjs"));
  });

  it("takes --config PATH and reports a missing one", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`));
    const config = await loadConfig({ cwd: "/", configPath: made.path("kaos.config.ts") });
    expect(config.root).toBe(made.dir);
    await expect(loadConfig({ cwd: made.dir, configPath: "nope.ts" })).rejects.toThrow(
      `--config nope.ts: no such file: ${made.path("nope.ts")}`,
    );
  });

  it("reports a config that does not load, naming the file", async () => {
    const { message, file } = await configError(`export default {{ broken`);
    expect(message).toContain(`${file}: could not be loaded:`);
  });

  it("a config that throws is reported with the line of the throw in the project's code", async () => {
    const { message, file } = await configError(
      `function dataDir(): string {\n  throw new Error("DATA_DIR is not set");\n}\nexport default { pipelines: { svm: { source: "src", data: dataDir() } } };\n`,
    );
    expect(message).toBe(`${file}: could not be loaded: DATA_DIR is not set\n  at ${file}:2`);
    const imported = await configError(`import { d } from "./lib";\nexport default { pipelines: { svm: { source: "src", data: d } } };\n`, {
      "lib.ts": `const env: Record<string, string> = {};\nexport const d = env.DATA.trim();\n`,
    });
    expect(imported.message).toMatch(
      new RegExp(
        `^${imported.file}: could not be loaded: Cannot read properties of undefined \\(reading 'trim'\\)\\n  at ${imported.file.replace("kaos.config.ts", "lib.ts")}:2$`,
      ),
    );
  });
});

describe("config validation names the file, line, key path, bad value and what is expected", () => {
  it("unknown keys", async () => {
    const { message, file } = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      paralelism: 2,`));
    expect(message).toBe(`invalid config\n${file}:7: pipelines.svm.paralelism: unknown key; did you mean "parallelism"?`);
  });

  it("an unknown key close to a known one is named with it", async () => {
    const field = await configError(pipelineConfig(`      sorce: "src",\n      data: "data",\n      resources: { CPU: 2 },`));
    expect(field.message).toBe(
      [
        "invalid config",
        `${field.file}:4: pipelines.svm.source: missing; expected a path relative to the config file`,
        `${field.file}:7: pipelines.svm.resources.CPU: unknown key; did you mean "cpu"?`,
        `${field.file}:5: pipelines.svm.sorce: unknown key; did you mean "source"?`,
      ].join("\n"),
    );
    const top = await configError(`export default {\n  pipeline: { svm: { source: "src", data: "data" } },\n  wach: {},\n};\n`);
    expect(top.message).toBe(
      [
        "invalid config",
        `${top.file}: pipelines: missing; expected an object of pipelines, such as { svm: { source, data } }`,
        `${top.file}:2: pipeline: unknown key; did you mean "pipelines"?`,
        `${top.file}:3: wach: unknown key; did you mean "watch"?`,
      ].join("\n"),
    );
  });

  it("a value that refers to itself is named, not followed forever", async () => {
    const { message, file } = await configError(
      `const grid: Record<string, unknown> = { C: [1, 2] };\ngrid.self = grid;\nexport default {\n  pipelines: { svm: { source: "src", data: "data", hyperparams: grid } },\n};\n`,
    );
    expect(message).toMatch(new RegExp(`^invalid config\\n${file}:4: pipelines\\.svm\\.hyperparams: "self": `));
  });

  it("missing source", async () => {
    const { message, file } = await configError(pipelineConfig(`      data: "data",`));
    expect(message).toBe(`invalid config\n${file}:4: pipelines.svm.source: missing; expected a path relative to the config file`);
  });

  it("both data and manifest", async () => {
    const { message, file } = await configError(
      pipelineConfig(`      source: "src",\n      data: "data",\n      manifest: "manifest.jsonl",`),
    );
    expect(message).toBe(
      `invalid config\n${file}:7: pipelines.svm.manifest: \`data\` and \`manifest\` are exclusive: keep one of them, found "manifest.jsonl"`,
    );
  });

  it("neither data nor manifest", async () => {
    const { message, file } = await configError(pipelineConfig(`      source: "src",`));
    expect(message).toBe(
      `invalid config\n${file}:4: pipelines.svm: expected \`data\` (a local directory) or \`manifest\` (a manifest file), found neither`,
    );
  });

  it("paths that do not exist", async () => {
    const made = project(pipelineConfig(`      source: "nosrc",\n      data: "nodata",\n      hyperparams: "nogrid.json",`));
    const error = await loadConfig({ cwd: made.dir }).catch((e: unknown) => e as KaosError);
    const file = made.path("kaos.config.ts");
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).message).toBe(
      [
        "invalid config",
        `${file}:5: pipelines.svm.source: no such directory: ${made.path("nosrc")}; expected a source bundle directory (Dockerfile and model/)`,
        `${file}:6: pipelines.svm.data: no such directory: ${made.path("nodata")}; expected a data bundle directory`,
        `${file}:7: pipelines.svm.hyperparams: no such file: ${made.path("nogrid.json")}; expected a JSON file holding a grid, a list of grids or a random search`,
      ].join("\n"),
    );
  });

  it("a manifest that does not exist", async () => {
    const { message, file } = await configError(pipelineConfig(`      source: "src",\n      manifest: "nothere.jsonl",`));
    expect(message).toContain(`${file}:6: pipelines.svm.manifest: no such file or directory:`);
  });

  it("memory without a valid SI or binary suffix", async () => {
    for (const memory of ["512", "2GB", "1.5 Gi", "lots"]) {
      const { message, file } = await configError(
        pipelineConfig(`      source: "src",\n      data: "data",\n      resources: { memory: "${memory}" },`),
      );
      expect(message).toBe(
        `invalid config\n${file}:7: pipelines.svm.resources.memory: expected a positive size with an SI or binary suffix (k, M, G, T, Ki, Mi, Gi, Ti), such as "512M" or "2Gi", found "${memory}"`,
      );
    }
  });

  it("negative or fractional GPU", async () => {
    for (const gpu of ["-1", "0.5"]) {
      const { message, file } = await configError(
        pipelineConfig(`      source: "src",\n      data: "data",\n      resources: { gpu: ${gpu} },`),
      );
      expect(message).toBe(
        `invalid config\n${file}:7: pipelines.svm.resources.gpu: expected a whole number of GPUs, 0 or more, found ${gpu}`,
      );
    }
  });

  it("non-positive cpu", async () => {
    for (const cpu of ["0", "-2"]) {
      const { message, file } = await configError(
        pipelineConfig(`      source: "src",\n      data: "data",\n      resources: { cpu: ${cpu} },`),
      );
      expect(message).toBe(
        `invalid config\n${file}:7: pipelines.svm.resources.cpu: expected a positive number of cores (fractions allowed, such as 0.5), found ${cpu}`,
      );
    }
    const { message } = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      resources: { cpu: "2" },`));
    expect(message).toContain(`pipelines.svm.resources.cpu: expected a number of cores such as 1 or 0.5, found "2"`);
  });

  it("a value JSON cannot write is shown as the code wrote it, not as something valid", async () => {
    for (const [cpu, found] of [
      ["2n", "2n"],
      ["() => 2", "a function"],
      ['Symbol("cores")', "Symbol(cores)"],
    ]) {
      const { message } = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      resources: { cpu: ${cpu} },`));
      expect(message, cpu).toContain(`pipelines.svm.resources.cpu: expected a number of cores such as 1 or 0.5, found ${found}`);
    }
    // JSON writes these three as null, which the code did not say.
    for (const parallelism of ["Infinity", "-Infinity", "NaN"]) {
      const { message } = await configError(
        pipelineConfig(`      source: "src",\n      data: "data",\n      parallelism: ${parallelism},`),
      );
      expect(message, parallelism).toContain(`pipelines.svm.parallelism: expected a whole number of jobs, 1 or more, found ${parallelism}`);
    }
  });

  it("a local stack's maxCpu that is not a positive finite number is named in kaos's words", async () => {
    for (const [maxCpu, found] of [
      ["Infinity", "Infinity"],
      ['"2"', '"2"'],
      ["0", "0"],
    ]) {
      const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
        "stacks/big.ts": `export default {\n  backend: "local",\n  maxCpu: ${maxCpu},\n};\n`,
      });
      const config = await loadConfig({ cwd: made.dir });
      await expect(loadStack(config, "big"), maxCpu).rejects.toThrow(
        `invalid stack\n${made.path("stacks/big.ts")}:3: maxCpu: expected a positive number of cores, found ${found}`,
      );
    }
  });

  it("parallelism below 1", async () => {
    for (const parallelism of ["0", "1.5"]) {
      const { message, file } = await configError(
        pipelineConfig(`      source: "src",\n      data: "data",\n      parallelism: ${parallelism},`),
      );
      expect(message).toBe(
        `invalid config\n${file}:7: pipelines.svm.parallelism: expected a whole number of jobs, 1 or more, found ${parallelism}`,
      );
    }
  });

  it("hyperparams that are not an object of scalars and lists", async () => {
    const inline = await configError(
      pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: { kernel: [{ a: 1 }] },`),
    );
    expect(inline.message).toBe(
      `invalid config\n${inline.file}:7: pipelines.svm.hyperparams: "kernel"[0]: expected a string, number, boolean or null, found an object`,
    );
    const nested = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: { kernel: { a: 1 } },`));
    expect(nested.message).toContain(`"kernel": expected a scalar or a list of scalars, found an object`);
    const fromFile = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: "bad.json",`), {
      "bad.json": "5",
    });
    expect(fromFile.message).toContain(
      `pipelines.svm.hyperparams: ${fromFile.file.replace("kaos.config.ts", "bad.json")}:1: expected an object of scalars and lists such as {"kernel": ["linear", "poly"], "C": 1}, a list of such grids, or a random search, found the number 5`,
    );
    const notJson = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: "bad.json",`), {
      "bad.json": "{degree: 3}",
    });
    expect(notJson.message).toContain(
      `bad.json:1:2: not valid JSON: found degree; expected a JSON value (keys and strings take double quotes; NaN and comments are not JSON)`,
    );
  });

  it("a hyperparams file that is not JSON, with the line and column of the mistake", async () => {
    // JSON.parse says only "Unexpected token '}'" for a trailing comma: nothing to find it by in a long file.
    const trailing = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: "grid.json",`), {
      "grid.json": '{\n  "degree": [3, 5],\n  "kernel": ["linear", "poly",]\n}\n',
    });
    const grid = trailing.file.replace("kaos.config.ts", "grid.json");
    expect(trailing.message).toBe(
      `invalid config\n${trailing.file}:7: pipelines.svm.hyperparams: ${grid}:3:31: not valid JSON: found ]; expected a value (JSON allows no comma after the last item)`,
    );
    const missingComma = await configError(pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: "grid.json",`), {
      "grid.json": '{\n  "degree": [3, 5]\n  "kernel": "poly"\n}\n',
    });
    expect(missingComma.message).toContain(
      `${missingComma.file.replace("kaos.config.ts", "grid.json")}:3:3: not valid JSON: found "kernel"; expected ',' before the next entry`,
    );
  });

  it("a hyperparams file with a byte order mark is read as the JSON after it; an empty one is named as empty", async () => {
    const body = `      source: "src",\n      data: "data",\n      hyperparams: "grid.json",`;
    const made = project(pipelineConfig(body), { "grid.json": '\uFEFF{"degree": [3, 5]}\n' });
    const [svm] = (await loadConfig({ cwd: made.dir })).pipelines;
    expect(svm?.hyperparams).toEqual({ degree: [3, 5] });
    const empty = await configError(pipelineConfig(body), { "grid.json": " \n" });
    expect(empty.message).toBe(
      `invalid config\n${empty.file}:7: pipelines.svm.hyperparams: ${empty.file.replace("kaos.config.ts", "grid.json")}: is empty; expected a JSON grid, a list of grids or a random search`,
    );
  });

  it("an empty list of candidates", async () => {
    const { message, file } = await configError(
      pipelineConfig(`      source: "src",\n      data: "data",\n      hyperparams: { degree: [], kernel: "poly" },`),
    );
    expect(message).toBe(
      `invalid config\n${file}:7: pipelines.svm.hyperparams: "degree": empty list of candidates; expected at least one value (or a scalar to fix it)`,
    );
  });

  it("a default export that is not an object, and no pipelines", async () => {
    const notObject = await configError(`export default 42;\n`);
    expect(notObject.message).toBe(
      `${notObject.file}: the default export is 42; expected \`export default defineConfig({ pipelines: {...} })\``,
    );
    const none = await configError(`export default { pipelines: {} };\n`);
    expect(none.message).toBe(`invalid config\n${none.file}:1: pipelines: expected at least one pipeline`);
  });

  it("a default export of null, nothing, a list, a function or a promise that rejects", async () => {
    const expected = "expected `export default defineConfig({ pipelines: {...} })`";
    for (const [text, found] of [
      ["export default null;\n", "null"],
      ["export default undefined;\n", "nothing"],
      ["export default [];\n", "[]"],
      ["export default Promise.resolve(null);\n", "null"],
    ] as const) {
      const { message, file } = await configError(text);
      expect(message, text).toBe(`${file}: the default export is ${found}; ${expected}`);
    }
    const fn = await configError(`export default () => ({ pipelines: {} });\n`);
    expect(fn.message).toBe(
      `${fn.file}: the default export is a function; ${expected}, the object itself rather than a function that returns it`,
    );
    const rejected = await configError(`export default Promise.reject(new Error("no secrets"));\n`);
    expect(rejected.message).toBe(`${rejected.file}: could not be loaded: no secrets\n  at ${rejected.file}:1`);
  });

  it("a stack whose default export is null or a function", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/none.ts": "export default null;\n",
      "stacks/fn.ts": `export default () => ({ backend: "local" });\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    await expect(loadStack(config, "none")).rejects.toThrow(
      `${made.path("stacks/none.ts")}: the default export is null; expected \`export default defineStack({ backend: ... })\``,
    );
    await expect(loadStack(config, "fn")).rejects.toThrow(
      `${made.path("stacks/fn.ts")}: the default export is a function; expected \`export default defineStack({ backend: ... })\`, the object itself rather than a function that returns it`,
    );
  });
});

describe("stacks", () => {
  it("defaults to the local backend and loads stacks/NAME.ts", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/big.ts": `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", maxCpu: 8, maxMemory: "16Gi" });\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    expect(await loadStack(config, undefined)).toEqual({ name: "local", file: undefined, config: { backend: "local" } });
    expect(await loadStack(config, "big")).toEqual({
      name: "big",
      file: made.path("stacks/big.ts"),
      config: { backend: "local", maxCpu: 8, maxMemory: "16Gi" },
    });
  });

  it("loads a CommonJS stack file, and refuses two files of one stack", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/big.cjs": `const { defineStack } = require("kaos-ml");\nmodule.exports = defineStack({ backend: "local", maxCpu: 8 });\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    expect(await loadStack(config, "big")).toEqual({
      name: "big",
      file: made.path("stacks/big.cjs"),
      config: { backend: "local", maxCpu: 8 },
    });
    made.write({ "stacks/big.mts": `export default { backend: "local" };\n` });
    const error = await loadStack(config, "big").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).code).toBe("CONFIG_AMBIGUOUS");
    expect((error as KaosError).message).toBe(
      `${made.path("stacks/big.mts")} and ${made.path("stacks/big.cjs")}: 2 files where kaos reads one`,
    );
    expect((error as KaosError).hint).toBe("keep one: remove or rename the other (big.mts is looked for first)");
  });

  it("a stack file that does not exist", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`));
    const config = await loadConfig({ cwd: made.dir });
    await expect(loadStack(config, "prod")).rejects.toThrow(`--stack prod: no stack file ${made.path("stacks/prod.ts")}`);
  });

  it("a stack name close to an existing stack's is named with it, and the hint lists the stacks", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/local.ts": `export default { backend: "local" };\n`,
      "stacks/gpu-cluster.mts": `export default { backend: "local" };\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    const error = await loadStack(config, "locl").catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(KaosError);
    expect((error as KaosError).message).toBe(`--stack locl: no stack file ${made.path("stacks/locl.ts")}; did you mean "local"?`);
    expect((error as KaosError).hint).toBe(`the stacks in ${made.path("stacks")} are: gpu-cluster, local`);
  });

  it("an invalid stack names the key", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/gpu.ts": `export default {\n  backend: "kubernetes",\n  namespace: "Bad_NS",\n  pachyderm: { address: "http://pachd:30650" },\n  registry: { url: "r.example/ml" },\n};\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    await expect(loadStack(config, "gpu")).rejects.toThrow(
      `invalid stack\n${made.path("stacks/gpu.ts")}:3: namespace: expected a Kubernetes namespace name (lowercase letters, digits, '-'), found "Bad_NS"`,
    );
  });

  it("an unknown key close to one of the backend's own is named with it", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/big.ts": `export default {\n  backend: "local",\n  maxCPU: 8,\n  maxMemroy: "16Gi",\n  namespace: "ml",\n};\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    const file = made.path("stacks/big.ts");
    await expect(loadStack(config, "big")).rejects.toThrow(
      [
        "invalid stack",
        `${file}:3: maxCPU: unknown key; did you mean "maxCpu"?`,
        `${file}:4: maxMemroy: unknown key; did you mean "maxMemory"?`,
        `${file}:5: namespace: unknown key; check its spelling (see the config reference in the README)`,
      ].join("\n"),
    );
  });

  it("a kubernetes stack refuses names the API server or pachd would refuse, and a pachd address that is not http(s), naming each key", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/cluster.ts": `export default {
  backend: "kubernetes",
  namespace: "pachyderm",
  pachyderm: {
    address: "localhost:1659",
    project: "my project",
  },
  registry: { url: "r.example/ml", secretName: "Registry_Secret" },
};
`,
    });
    const config = await loadConfig({ cwd: made.dir });
    const file = made.path("stacks/cluster.ts");
    await expect(loadStack(config, "cluster")).rejects.toThrow(
      `invalid stack\n${file}:5: pachyderm.address: expected pachd's http:// or https:// URL, such as "http://localhost:1659", found "localhost:1659"\n` +
        `${file}:6: pachyderm.project: expected a Pachyderm project name (letters, digits, '-' and '_', starting with a letter or digit), found "my project"\n` +
        `${file}:8: registry.secretName: expected a Kubernetes secret name (lowercase letters, digits, '-' and '.'), found "Registry_Secret"`,
    );
  });

  it("a kubernetes stack refuses a registry.url that would give image references registries refuse, naming the key", async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/cluster.ts": `export default {
  backend: "kubernetes",
  namespace: "pachyderm",
  pachyderm: { address: "http://localhost:1659" },
  registry: {
    url: "https://registry.example.com/ML",
  },
};
`,
    });
    const config = await loadConfig({ cwd: made.dir });
    await expect(loadStack(config, "cluster")).rejects.toThrow(
      `invalid stack\n${made.path("stacks/cluster.ts")}:6: registry.url: expected an image repository prefix such as "registry.example.com/ml": a registry host, then lowercase path components, no scheme, found "https://registry.example.com/ML"`,
    );
  });

  it("a kubernetes stack's registry.url takes registry prefixes with a host, a port or localhost and lowercase paths, or Docker Hub paths; refuses schemes and uppercase paths", () => {
    for (const good of [
      "registry.example.com/ml",
      "Registry.Example.com/ml",
      "localhost:5000",
      "localhost",
      "r:5000/a/b",
      "[::1]:5000/x",
      "myuser",
      "ghcr.io/org/team_a/",
    ]) {
      expect(good).toMatch(IMAGE_REGISTRY_PATTERN);
    }
    for (const bad of [
      "https://registry.example.com/ml",
      "registry.example.com/ML",
      "MyUser",
      "registry.example.com/ml:tag",
      "registry.example.com//ml",
      "registry.example.com/-ml",
      "",
    ]) {
      expect(bad).not.toMatch(IMAGE_REGISTRY_PATTERN);
    }
  });

  it('dataViews takes "mount", "link" or "copy", and anything else names the key and every choice', async () => {
    const made = project(pipelineConfig(`      source: "src",\n      data: "data",`), {
      "stacks/isolated.ts": `export default { backend: "local", dataViews: "copy" };\n`,
      "stacks/bad.ts": `export default {\n  backend: "local",\n  dataViews: "reflink",\n};\n`,
    });
    const config = await loadConfig({ cwd: made.dir });
    expect((await loadStack(config, "isolated")).config).toEqual({ backend: "local", dataViews: "copy" });
    await expect(loadStack(config, "bad")).rejects.toThrow(
      `invalid stack\n${made.path("stacks/bad.ts")}:3: dataViews: expected "mount" (a data bundle's own folder, mounted read-only for each job: nothing copied), "link" (its own files, linked: nothing copied) or "copy" (a copy kaos owns: jobs cannot change your files), found "reflink"`,
    );
  });
});

describe("source bundle contract", () => {
  it("names each missing piece", () => {
    const made = makeProject({ "src/model/train": "#!/bin/sh\n" });
    projects.push(made);
    const error = (() => {
      try {
        validateSourceBundle(made.path("src"), "pipelines.svm.source");
      } catch (e) {
        return e as KaosError;
      }
      throw new Error("expected a failure");
    })();
    expect(error.code).toBe("BUNDLE_INVALID");
    expect(error.message).toBe(
      [
        `pipelines.svm.source: invalid source bundle ${made.path("src")}`,
        `${made.path("src/Dockerfile")}: missing; expected the Dockerfile that builds the training image`,
        `${made.path("src/model/requirements.txt")}: missing; expected the Python requirements (may be empty)`,
        `${made.path("src/model/train")}: not executable; run \`chmod +x ${made.path("src/model/train")}\``,
      ].join("\n"),
    );
  });

  it("accepts a complete bundle and reads the Python version from the Dockerfile", () => {
    const made = makeProject(
      under("src", trivialSourceBundle("#!/bin/sh\n", { dockerfile: "# build\nFROM docker.io/library/python:3.12-slim AS base\n" })),
    );
    projects.push(made);
    expect(validateSourceBundle(made.path("src"), "x").pythonVersion).toBe("3.12");
    expect(pythonVersionOf("FROM ubuntu:22.04\n")).toBeUndefined();
  });
});

describe("small parsers", () => {
  it("parses memory quantities like Kubernetes", () => {
    expect(parseMemory("512M")).toBe(512e6);
    expect(parseMemory("2Gi")).toBe(2 * 2 ** 30);
    expect(parseMemory("1.5Gi")).toBe(1.5 * 2 ** 30);
    expect(parseMemory("100")).toBeUndefined();
    expect(parseMemory("1gi")).toBeUndefined();
  });

  it("locates a key path in source text", () => {
    const text = `{\n  pipelines: {\n    a: { source: "x" },\n    b: {\n      "source": "y",\n    },\n  },\n}`;
    expect(locateKey(text, ["pipelines", "b", "source"])).toBe(5);
    expect(locateKey(text, ["pipelines", "a", "source"])).toBe(3);
    expect(locateKey(text, ["nothing"])).toBeUndefined();
  });
});

describe("the config cache", () => {
  /** `kaos plan --json` with jiti reporting what it loads: `evaluated` says whether any module was. */
  async function plan(made: Project, args: string[] = [], env: Record<string, string> = {}) {
    const result = await runKaos(["plan", "--json", ...args], { cwd: made.dir, env: { JITI_DEBUG: "1", ...env } });
    // jiti writes its debug lines to stdout.
    const evaluated = result.stdout.includes("[jiti]");
    if (result.code !== 0) return { code: result.code, stderr: result.stderr, evaluated, jobs: -1 };
    const json = result.stdout
      .split("\n")
      .filter((line) => !line.includes("[jiti]"))
      .join("\n");
    const parsed = JSON.parse(json) as { pipelines: { jobs: unknown[] }[] };
    return { code: result.code, stderr: result.stderr, evaluated, jobs: parsed.pipelines[0]!.jobs.length };
  }

  function cachedProject(config: string, extra: Record<string, string> = {}, file = "kaos.config.ts"): Project {
    const made = project(config, extra, file);
    mkdirSync(made.path(".kaos"));
    return made;
  }

  const helperConfig = `import { defineConfig } from "kaos-ml";
import { grid } from "./grid-helper";

export default defineConfig({
  pipelines: {
    svm: { source: "src", data: "data", hyperparams: grid },
  },
});
`;

  it("evaluates an unchanged config once, and sees an edit of it, of a module it imports and of the stack file", async () => {
    const made = cachedProject(helperConfig, {
      "grid-helper.ts": `export const grid = { C: [1, 2] };\n`,
      "stacks/dev.ts": `import { defineStack } from "kaos-ml";\nexport default defineStack({ backend: "local", maxCpu: 2 });\n`,
    });
    expect(await plan(made, ["--stack", "dev"])).toMatchObject({ code: 0, evaluated: true, jobs: 2 });
    expect(await plan(made, ["--stack", "dev"])).toMatchObject({ code: 0, evaluated: false, jobs: 2 });

    made.write({ "grid-helper.ts": `export const grid = { C: [1, 2, 3] };\n` });
    expect(await plan(made, ["--stack", "dev"])).toMatchObject({ code: 0, evaluated: true, jobs: 3 });

    made.write({ "kaos.config.ts": helperConfig.replace("hyperparams: grid", "hyperparams: { ...grid, kernel: ['rbf', 'linear'] }") });
    expect(await plan(made, ["--stack", "dev"])).toMatchObject({ code: 0, evaluated: true, jobs: 6 });
    expect(await plan(made, ["--stack", "dev"])).toMatchObject({ code: 0, evaluated: false, jobs: 6 });

    made.write({
      "stacks/dev.ts": `import { defineStack } from "kaos-ml";\nexport default defineStack({\n  backend: "local",\n  maxCpu: -1,\n});\n`,
    });
    const badStack = await plan(made, ["--stack", "dev"]);
    expect(badStack.code).toBe(1);
    expect(badStack.stderr).toContain(`${made.path("stacks/dev.ts")}:4: maxCpu: expected a positive number of cores`);

    made.write({ "kaos.config.ts": helperConfig.replace("hyperparams: grid", "hyperparams: grid,\n      paralelism: 2") });
    const badConfig = await plan(made);
    expect(badConfig.code).toBe(1);
    expect(badConfig.stderr).toContain(`${made.path("kaos.config.ts")}:7: pipelines.svm.paralelism: unknown key`);
  });

  it("finds a CommonJS kaos.config.cjs that requires kaos-ml and a helper, keeps its value, and sees an edit of the helper", async () => {
    const config = `const { defineConfig } = require("kaos-ml");
const { grid } = require("./grid-helper.cjs");

module.exports = defineConfig({
  pipelines: {
    svm: { source: "src", data: "data", hyperparams: grid },
  },
});
`;
    const made = cachedProject(config, { "grid-helper.cjs": `exports.grid = { C: [1, 2] };\n` }, "kaos.config.cjs");
    expect(await plan(made)).toMatchObject({ code: 0, evaluated: true, jobs: 2 });
    expect(await plan(made)).toMatchObject({ code: 0, evaluated: false, jobs: 2 });
    made.write({ "grid-helper.cjs": `exports.grid = { C: [1, 2, 3] };\n` });
    expect(await plan(made)).toMatchObject({ code: 0, evaluated: true, jobs: 3 });
    expect(await plan(made)).toMatchObject({ code: 0, evaluated: false, jobs: 3 });

    made.write({ "kaos.config.cjs": config.replace("hyperparams: grid", "hyperparams: grid,\n    paralelism: 2") });
    const bad = await plan(made);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(`${made.path("kaos.config.cjs")}:7: pipelines.svm.paralelism: unknown key`);
  });

  it("refuses a folder with two config files, naming both, rather than running one of them", async () => {
    const made = cachedProject(`export default { pipelines: { svm: { source: "src", data: "data" } } };\n`, {}, "kaos.config.mjs");
    expect(await plan(made)).toMatchObject({ code: 0, jobs: 1 });
    made.write({ "kaos.config.ts": `export default { pipelines: { other: { source: "src", data: "data" } } };\n` });
    const both = await plan(made);
    expect(both.code).toBe(1);
    expect(both.stderr).toBe(
      `error: ${made.path("kaos.config.ts")} and ${made.path("kaos.config.mjs")}: 2 files where kaos reads one\n` +
        "hint: keep one: remove or rename the other (kaos.config.ts is looked for first), or name one with --config PATH\n",
    );
    expect(await plan(made, ["-c", "kaos.config.mjs"])).toMatchObject({ code: 0, jobs: 1 });
  });

  it("ignores and rewrites a cache file that is corrupt or from another kaos", async () => {
    const made = cachedProject(helperConfig, { "grid-helper.ts": `export const grid = { C: [1, 2] };\n` });
    const cacheFile = made.path(".kaos", "config-cache.json");
    expect(await plan(made)).toMatchObject({ evaluated: true, jobs: 2 });
    const written = readFileSync(cacheFile, "utf8");

    writeFileSync(cacheFile, written.slice(0, written.length / 2));
    expect(await plan(made)).toMatchObject({ evaluated: true, jobs: 2 });
    expect(readFileSync(cacheFile, "utf8")).toBe(written);

    const other = JSON.parse(written) as { kaos: string; entries: Record<string, { value: { pipelines: { svm: object } } }> };
    other.kaos = "0.0.1|1|1";
    for (const entry of Object.values(other.entries)) entry.value.pipelines.svm = { source: "src", data: "data" };
    writeFileSync(cacheFile, JSON.stringify(other));
    expect(await plan(made)).toMatchObject({ evaluated: true, jobs: 2 });
    expect(readFileSync(cacheFile, "utf8")).toBe(written);
  });

  it("keeps the value of a config that reads the environment under the environment, and never one that reads the clock", async () => {
    const made = cachedProject(
      pipelineConfig(`      source: "src", data: "data",\n      hyperparams: { C: process.env.KAOS_TEST_C === "two" ? [1, 2] : [1] },`),
    );
    expect(await plan(made, [], { KAOS_TEST_C: "one" })).toMatchObject({ evaluated: true, jobs: 1 });
    expect(await plan(made, [], { KAOS_TEST_C: "two" })).toMatchObject({ evaluated: true, jobs: 2 });
    expect(await plan(made, [], { KAOS_TEST_C: "two" })).toMatchObject({ evaluated: false, jobs: 2 });

    made.write({
      "kaos.config.ts": pipelineConfig(`      source: "src", data: "data",\n      hyperparams: { C: [new Date(0).getTime()] },`),
    });
    expect(await plan(made)).toMatchObject({ evaluated: true, jobs: 1 });
    expect(await plan(made)).toMatchObject({ evaluated: true, jobs: 1 });
  });
});
