/**
 * Finding, loading and validating `kaos.config.ts` and stack files.
 *
 * A config is code, so the types in types.ts only help the editor; everything
 * is checked again here and each problem is reported with the file, the line
 * where the key is written (when it can be found) and the key path.
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { basename, dirname, join, resolve, sep } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { cachedModuleValue } from "./config-cache.js";
import type { ParsedConfig } from "./config-schema.js";
import { NAME_PATTERN, type PathKey, describeValue, formatPath, parseMemory, position } from "./config-text.js";
import { type ErrorCode, KaosError, describeError } from "./errors.js";
import { isRandomSearch, MAX_SWEEP_JOBS, parseSpace, parseSpaceJson, spaceSize } from "./hyperparams.js";
import { stateDirOf } from "./layout.js";
import type { ResolvedConfig, ResolvedPipeline, ResolvedStack, StackConfig } from "./types.js";

export { MAX_SWEEP_JOBS };
export { locateKey, parseMemory } from "./config-text.js";

export { defineConfig, defineStack } from "../define.js";

export { CONFIG_FILE_NAMES, findConfig } from "./layout.js";
import { CONFIG_NAMES_TEXT, findConfigs, packageRoot, stackFilesOf, stackNames, stacksDirOf } from "./layout.js";
import { DEFAULT_STACK_NAME, WATCH_DEFAULTS } from "./defaults.js";

/** Where the package's own entry lives, so configs anywhere can `import { defineConfig } from "kaos-ml"`. */
function packageEntry(): string {
  const built = join(dirname(fileURLToPath(import.meta.url)), "define.js");
  return existsSync(built) ? built : join(packageRoot(), "src", "define.ts");
}

/**
 * Evaluates a module with jiti and answers what it exports. The file itself is
 * always transpiled by jiti, never imported by Node, whose module cache would
 * answer a second load in this process with the first text. What it imports
 * may still be: see `evaluateInThread`.
 */
async function evaluateModule(file: string): Promise<unknown> {
  // Required, not imported: importing jiti's CommonJS bundle from ESM makes
  // Node scan its source for exports first, a cost on every command.
  const { createJiti } = createRequire(import.meta.url)("jiti") as typeof import("jiti");
  const jiti = createJiti(import.meta.url, {
    alias: { "kaos-ml": packageEntry() },
    moduleCache: false,
    // Transpiled configs are cached by content, so an unchanged config loads without a compiler.
    fsCache: join(tmpdir(), "kaos-jiti"),
    interopDefault: false,
  });
  forgetRequiredFiles();
  return await jiti.evalModule(readFileSync(file, "utf8"), { filename: file, id: file, async: true, forceTranspile: true });
}

/**
 * Drops the CommonJS files outside node_modules that an earlier load in this
 * process required from Node's module cache, so that a config evaluated
 * again reads them again. ES modules it imports natively (jiti leaves `.mjs`,
 * and `.js` in a `"type": "module"` package, to Node) stay cached by Node for
 * the life of the thread.
 */
function forgetRequiredFiles(): void {
  const cache = createRequire(import.meta.url).cache;
  for (const path of Object.keys(cache)) if (!path.includes(`${sep}node_modules${sep}`)) delete cache[path];
}

/** What `defaultExport` answers for a module that exports no default. */
const NO_DEFAULT = Symbol("no default export");

/**
 * A module's default export as Node gives it: an ES module's `default` (jiti
 * marks what it transpiles from ES syntax with `__esModule`, as TypeScript
 * marks its CommonJS output); a CommonJS module's `module.exports`, which
 * exported nothing when it is still the empty object it started as.
 */
function defaultExport(module: unknown): unknown {
  if (typeof module !== "object" || module === null) return module;
  if ((module as { __esModule?: unknown }).__esModule === true) return "default" in module ? module.default : NO_DEFAULT;
  const isEmpty = Object.getPrototypeOf(module) === Object.prototype && Reflect.ownKeys(module).length === 0;
  return isEmpty ? NO_DEFAULT : module;
}

/**
 * Where in the project's own code `error` was thrown, as `FILE:LINE`: the
 * first frame of its stack in a file under `root` and outside node_modules.
 * jiti keeps the lines of the source it transpiles, not the columns of its first line.
 */
function thrownAt(error: unknown, root: string): string | undefined {
  if (!(error instanceof Error) || typeof error.stack !== "string") return undefined;
  for (const frame of error.stack.matchAll(/^\s+at (?:.* \()?(\S+?):(\d+):(\d+)\)?$/gm)) {
    const [, location = "", line] = frame;
    let path: string;
    try {
      path = location.startsWith("file:") ? fileURLToPath(location) : location;
    } catch {
      continue;
    }
    if (path.startsWith(`${root}${sep}`) && !path.includes(`${sep}node_modules${sep}`)) return `${path}:${line}`;
  }
  return undefined;
}

/** Evaluates a config or stack module and returns its default export, awaited when it is a promise: an object. */
async function importModule(file: string, code: "CONFIG_LOAD" | "STACK_INVALID"): Promise<object> {
  const expected =
    code === "CONFIG_LOAD" ? "`export default defineConfig({ pipelines: {...} })`" : "`export default defineStack({ backend: ... })`";
  const invalid = code === "CONFIG_LOAD" ? "CONFIG_INVALID" : code;
  let value: unknown;
  try {
    const written = defaultExport(await evaluateModule(file));
    // Without this check a module of named exports would be validated as if it were the config.
    if (written === NO_DEFAULT) {
      const commonJs = /\.c[jt]s$/.test(file) ? " (or `module.exports = ...` in CommonJS)" : "";
      throw new KaosError(invalid, `${file}: has no default export; expected ${expected}${commonJs}`);
    }
    // A promise is awaited here, so that one that rejects is told as a file that does not load.
    value = await written;
  } catch (error) {
    if (error instanceof KaosError) throw error;
    const at = thrownAt(error, dirname(file));
    throw new KaosError(code, `${file}: could not be loaded: ${describeError(error)}${at === undefined ? "" : `\n  at ${at}`}`, {
      hint: "fix the error above; the file must `export default defineConfig({...})` (or `defineStack` for a stack)",
      cause: error,
    });
  }
  if (typeof value === "function") {
    throw new KaosError(
      invalid,
      `${file}: the default export is a function; expected ${expected}, the object itself rather than a function that returns it`,
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new KaosError(invalid, `${file}: the default export is ${describeValue(value)}; expected ${expected}`);
  }
  return value;
}

function checkDirectory(path: string): "missing" | "not-dir" | "ok" {
  try {
    return statSync(path).isDirectory() ? "ok" : "not-dir";
  } catch {
    return "missing";
  }
}

function checkFile(path: string): "missing" | "dir" | "ok" {
  try {
    return statSync(path).isDirectory() ? "dir" : "ok";
  } catch {
    return "missing";
  }
}

/** Validates a loaded config value and resolves its paths against the config's directory. */
export async function resolveConfig(value: unknown, file: string): Promise<ResolvedConfig> {
  const { validateConfig } = await import("./config-schema.js");
  return await resolveParsedConfig(validateConfig(value, file), file);
}

/**
 * Resolves a validated config's paths against the config's directory, and
 * checks what they name. Not kept in the config cache: the directories and the
 * hyperparameter file are looked at on every load.
 */
async function resolveParsedConfig(config: ParsedConfig, file: string): Promise<ResolvedConfig> {
  const root = dirname(file);
  let source: string | undefined;
  try {
    source = readFileSync(file, "utf8");
  } catch {
    source = undefined;
  }
  const problems: string[] = [];
  const problem = (path: readonly PathKey[], message: string) => {
    problems.push(`${position(file, source, path)}: ${formatPath(path)}: ${message}`);
  };

  const pipelines: ResolvedPipeline[] = [];
  for (const [name, pipeline] of Object.entries(config.pipelines)) {
    const at = (...keys: string[]) => ["pipelines", name, ...keys];
    const sourceDir = resolve(root, pipeline.source);
    const sourceState = checkDirectory(sourceDir);
    if (sourceState !== "ok") {
      problem(
        at("source"),
        `${sourceState === "missing" ? "no such directory" : "not a directory"}: ${sourceDir}; expected a source bundle directory (Dockerfile and model/)`,
      );
    }
    let data: ResolvedPipeline["data"] | undefined;
    if (pipeline.data !== undefined) {
      const dir = resolve(root, pipeline.data);
      const state = checkDirectory(dir);
      if (state !== "ok")
        problem(at("data"), `${state === "missing" ? "no such directory" : "not a directory"}: ${dir}; expected a data bundle directory`);
      data = { kind: "dir", dir };
    } else if (pipeline.manifest !== undefined) {
      const path = resolve(root, pipeline.manifest);
      if (!existsSync(path))
        problem(at("manifest"), `no such file or directory: ${path}; expected a manifest file or a directory of manifest files`);
      data = { kind: "manifest", path };
    }
    let hyperparams: ResolvedPipeline["hyperparams"] = {};
    let hyperparamsFile: string | undefined;
    if (typeof pipeline.hyperparams === "string") {
      hyperparamsFile = resolve(root, pipeline.hyperparams);
      const state = checkFile(hyperparamsFile);
      if (state !== "ok") {
        problem(
          at("hyperparams"),
          `${state === "missing" ? "no such file" : "is a directory"}: ${hyperparamsFile}; expected a JSON file holding a grid, a list of grids or a random search`,
        );
      } else {
        let text: string | undefined;
        try {
          // A byte order mark, as some Windows editors write, is no part of the JSON (RFC 8259 lets a parser ignore it).
          text = readFileSync(hyperparamsFile, "utf8").replace(/^\uFEFF/, "");
          hyperparams = parseSpaceJson(text, hyperparamsFile);
        } catch (error) {
          if (error instanceof SyntaxError && text?.trim() === "") {
            problem(at("hyperparams"), `${hyperparamsFile}: is empty; expected a JSON grid, a list of grids or a random search`);
          } else if (error instanceof SyntaxError && text !== undefined) {
            const { jsonSyntaxProblem } = await import("./json-syntax.js");
            const syntax = jsonSyntaxProblem(text);
            problem(
              at("hyperparams"),
              syntax === undefined
                ? `${hyperparamsFile}: not valid JSON (${error.message}); expected a grid, a list of grids or a random search`
                : `${hyperparamsFile}:${syntax.line}:${syntax.column}: not valid JSON: ${syntax.detail}`,
            );
          } else {
            problem(at("hyperparams"), describeError(error));
          }
        }
      }
    } else if (pipeline.hyperparams !== undefined) {
      try {
        hyperparams = parseSpace(pipeline.hyperparams, formatPath(at("hyperparams")));
      } catch (error) {
        // problem() names the key already.
        problem(at("hyperparams"), describeError(error).replace(`${formatPath(at("hyperparams"))}: `, ""));
      }
    }
    const combinations = spaceSize(hyperparams);
    if (combinations > MAX_SWEEP_JOBS) {
      // Expanding it would exhaust memory long before anything ran.
      const what = Array.isArray(hyperparams)
        ? `the grids expand to ${combinations} jobs; expected at most ${MAX_SWEEP_JOBS} (is a list longer than meant?)`
        : isRandomSearch(hyperparams)
          ? `samples asks for ${combinations} jobs; expected at most ${MAX_SWEEP_JOBS}`
          : `the grid expands to ${combinations} jobs; expected at most ${MAX_SWEEP_JOBS} (is a list longer than meant?)`;
      problem(at("hyperparams"), what);
    }
    const memory = pipeline.resources?.memory;
    pipelines.push({
      name,
      sourceDir,
      data: data ?? { kind: "dir", dir: root },
      hyperparams,
      hyperparamsFile,
      resources: {
        cpu: pipeline.resources?.cpu ?? 1,
        memory,
        memoryBytes: memory === undefined ? undefined : parseMemory(memory),
        gpu: pipeline.resources?.gpu ?? 0,
      },
      parallelism: pipeline.parallelism ?? 1,
    });
  }
  const allowFileUrls = (config.allowFileUrls ?? []).map((entry, index) => {
    const dir = resolve(root, entry);
    const state = checkDirectory(dir);
    if (state !== "ok") {
      problem(
        ["allowFileUrls", index],
        `${state === "missing" ? "no such directory" : "not a directory"}: ${dir}; expected a directory whose files manifests may read through file: URLs`,
      );
    }
    return dir;
  });
  if (problems.length > 0) {
    throw new KaosError("CONFIG_INVALID", `invalid config\n${problems.join("\n")}`);
  }
  return {
    file,
    root,
    workspace:
      config.workspace ??
      (basename(root)
        .replace(/[^A-Za-z0-9_-]/g, "-")
        .replace(/^[^A-Za-z0-9]+/, "") ||
        "kaos"),
    pipelines,
    watch: { ...WATCH_DEFAULTS, ...config.watch },
    ...(allowFileUrls.length > 0 ? { allowFileUrls } : {}),
  };
}

/** What a config or a stack module is evaluated into, and kept in the config cache as. */
type ModuleKind = "config" | "stack";
type ModuleValue<K extends ModuleKind> = K extends "config" ? ParsedConfig : StackConfig;

/** Evaluates and validates config or stack module `file`, in this thread. */
export async function evaluatedValue<K extends ModuleKind>(kind: K, file: string): Promise<ModuleValue<K>> {
  const value = await importModule(file, kind === "config" ? "CONFIG_LOAD" : "STACK_INVALID");
  const { validateConfig, validateStack } = await import("./config-schema.js");
  return (kind === "config" ? validateConfig(value, file) : validateStack(value, file)) as ModuleValue<K>;
}

/** What the config thread is asked: `evaluatedValue(kind, file)`. */
export interface ConfigThreadQuestion {
  kind: ModuleKind;
  file: string;
}

/**
 * The config thread's answer: the value, when it is plain data (which crosses
 * threads exactly); the expected failure, to be thrown again as it was; or
 * that the value must be made in the calling thread.
 */
export type ConfigThreadAnswer =
  | { value: unknown }
  | { error: { code: ErrorCode; message: string; hint: string | undefined } }
  | { unexpected: string }
  | { notPlainData: true };

/**
 * `evaluatedValue` in a worker thread of its own (config-worker.ts), ended
 * once it answers. Node's ES module loader keeps every module it loaded for
 * the life of its thread, and offers no way to forget one; a thread that ends
 * takes them all with it. So a process that evaluates a config again and
 * again (`kaos watch`) sees the current text of every module the config
 * imports, however it is loaded, and holds no module of an earlier load.
 */
async function evaluateInThread<K extends ModuleKind>(kind: K, file: string): Promise<ModuleValue<K>> {
  // Loaded here, not imported: worker_threads costs every command that never starts a thread.
  const { Worker } = process.getBuiltinModule("node:worker_threads");
  const question: ConfigThreadQuestion = { kind, file };
  // The config sees the arguments kaos was started with, as it does in this thread.
  const options = { workerData: question, argv: process.argv.slice(2) };
  const compiled = new URL("./config-worker.js", import.meta.url);
  let worker: import("node:worker_threads").Worker;
  if (existsSync(fileURLToPath(compiled))) worker = new Worker(compiled, options);
  else {
    // The sources run directly (tests run src/*.ts): the worker's TypeScript goes through jiti.
    const source = fileURLToPath(new URL("./config-worker.ts", import.meta.url));
    const jiti = pathToFileURL(createRequire(import.meta.url).resolve("jiti")).href;
    const bootstrap = `import(${JSON.stringify(jiti)}).then((jiti) => jiti.createJiti(${JSON.stringify(source)}).import(${JSON.stringify(source)}));`;
    worker = new Worker(bootstrap, { ...options, eval: true });
  }
  const answer = await new Promise<ConfigThreadAnswer>((resolveAnswer, reject) => {
    worker.once("message", resolveAnswer);
    // Whatever the config left running (a timer, a server) ends with the thread.
    worker.on("error", (error) =>
      reject(new KaosError("CONFIG_LOAD", `${file}: could not be loaded: ${describeError(error)}`, { cause: error })),
    );
    worker.once("exit", (code) =>
      reject(
        new KaosError("CONFIG_LOAD", `${file}: could not be loaded: it ended the process (exit code ${code})`, {
          hint: "a config only computes its value: remove what exits (process.exit) or ends the process",
        }),
      ),
    );
  }).finally(() => void worker.terminate());
  if ("value" in answer) return answer.value as ModuleValue<K>;
  if ("error" in answer) throw new KaosError(answer.error.code, answer.error.message, { hint: answer.error.hint });
  if ("unexpected" in answer) throw new Error(answer.unexpected);
  return await evaluatedValue(kind, file);
}

/**
 * How a module is evaluated: in this thread, or (`isolated`) in a thread of
 * its own, for a process that loads the config more than once.
 */
function evaluator(isolated: boolean | undefined): <K extends ModuleKind>(kind: K, file: string) => Promise<ModuleValue<K>> {
  return isolated === true ? evaluateInThread : evaluatedValue;
}

/**
 * Finds (or takes `explicit`), loads and validates the config. `isolated`
 * evaluates it in a thread of its own (see `evaluateInThread`).
 */
export async function loadConfig(options: {
  cwd: string;
  configPath?: string | undefined;
  isolated?: boolean | undefined;
}): Promise<ResolvedConfig> {
  let file: string | undefined;
  if (options.configPath !== undefined) {
    file = resolve(options.cwd, options.configPath);
    if (checkFile(file) !== "ok") {
      throw new KaosError("CONFIG_NOT_FOUND", `--config ${options.configPath}: no such file: ${file}`);
    }
  } else {
    const found = findConfigs(options.cwd);
    file = found[0];
    if (file === undefined) {
      throw new KaosError("CONFIG_NOT_FOUND", `no ${CONFIG_NAMES_TEXT} found in ${resolve(options.cwd)} or any parent directory`, {
        hint: "create one (see `kaos template get --name mnist` for a complete example) or pass --config PATH",
      });
    }
    if (found.length > 1) throw ambiguous(found, "--config PATH");
  }
  const configFile = file;
  const evaluate = evaluator(options.isolated);
  const parsed = await cachedModuleValue("config", configFile, stateDirOf(dirname(configFile)), () => evaluate("config", configFile));
  return await resolveParsedConfig(parsed, configFile);
}

/** Two or more module files where one is read: which one was meant cannot be told, and the other would be silently ignored. */
function ambiguous(files: string[], otherwise?: string): KaosError {
  const [first = "", ...others] = files;
  return new KaosError("CONFIG_AMBIGUOUS", `${files.join(" and ")}: ${files.length} files where kaos reads one`, {
    hint: `keep one: remove or rename ${others.length === 1 ? "the other" : "the others"} (${basename(first)} is looked for first)${otherwise === undefined ? "" : `, or name one with ${otherwise}`}`,
  });
}

/** The built-in stack used when `--stack` is not given. */
export const DEFAULT_STACK: ResolvedStack = { name: DEFAULT_STACK_NAME, file: undefined, config: { backend: "local" } };

/**
 * Loads `stacks/NAME.ts` (or another module extension) beside the config; without a name, the local backend.
 * `isolated` evaluates it in a thread of its own (see `evaluateInThread`).
 */
export async function loadStack(
  config: Pick<ResolvedConfig, "root">,
  name: string | undefined,
  options: { isolated?: boolean | undefined } = {},
): Promise<ResolvedStack> {
  if (name === undefined) return DEFAULT_STACK;
  if (!NAME_PATTERN.test(name)) {
    throw new KaosError("USAGE", `--stack ${name}: expected a stack name of letters, digits, '-' and '_' (the file stacks/NAME.ts)`);
  }
  const dir = stacksDirOf(config.root);
  const found = stackFilesOf(config.root, name);
  const file = found[0];
  if (found.length > 1) throw ambiguous(found);
  if (file === undefined) {
    if (name === DEFAULT_STACK_NAME) return DEFAULT_STACK;
    const names = stackNames(config.root);
    const { similarName } = await import("./suggest.js");
    const meant = similarName(name, names);
    throw new KaosError(
      "STACK_NOT_FOUND",
      `--stack ${name}: no stack file ${join(dir, `${name}.ts`)}${meant === undefined ? "" : `; did you mean "${meant}"?`}`,
      {
        hint:
          names.length === 0
            ? `create it with \`export default defineStack({ backend: "local" })\``
            : meant === undefined
              ? `create it with \`export default defineStack({ backend: "local" })\`, or pick one of the stacks in ${dir}: ${names.join(", ")}`
              : `the stacks in ${dir} are: ${names.join(", ")}`,
      },
    );
  }
  const evaluate = evaluator(options.isolated);
  const stackConfig = await cachedModuleValue("stack", file, stateDirOf(config.root), () => evaluate("stack", file));
  return { name, file, config: stackConfig };
}

/** The config and the stack a command works on; `isolated`, see `evaluateInThread`. */
export async function loadProject(options: {
  cwd: string;
  configPath?: string | undefined;
  stackName?: string | undefined;
  isolated?: boolean | undefined;
}): Promise<{ config: ResolvedConfig; stack: ResolvedStack }> {
  const config = await loadConfig({ cwd: options.cwd, configPath: options.configPath, isolated: options.isolated });
  const stack = await loadStack(config, options.stackName, { isolated: options.isolated });
  return { config, stack };
}
