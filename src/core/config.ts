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
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as z from "zod";
import { KaosError, describeError } from "./errors.js";
import { isRandomSearch, MAX_SWEEP_JOBS, parseSpace, parseSpaceJson, spaceSize } from "./hyperparams.js";
import { findConfig } from "./layout.js";
import type { ResolvedConfig, ResolvedPipeline, ResolvedStack, StackConfig } from "./types.js";

export { MAX_SWEEP_JOBS };

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$/;
const MEMORY_PATTERN = /^(\d+(?:\.\d+)?)(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$/;
const MEMORY_FACTORS: Record<string, number> = {
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** Bytes of a Kubernetes-style quantity such as `512M` or `2Gi`; undefined when it is not one. */
export function parseMemory(value: string): number | undefined {
  const match = MEMORY_PATTERN.exec(value);
  if (!match) return undefined;
  const [, amount, suffix] = match;
  const factor = MEMORY_FACTORS[suffix ?? ""];
  if (amount === undefined || factor === undefined) return undefined;
  return Math.round(Number(amount) * factor);
}

const memorySchema = z
  .string({ error: 'expected a string such as "512M" or "2Gi"' })
  .refine((value) => parseMemory(value) !== undefined && (parseMemory(value) ?? 0) > 0, {
    error: 'expected a positive size with an SI or binary suffix (k, M, G, T, Ki, Mi, Gi, Ti), such as "512M" or "2Gi"',
  });

const resourcesSchema = z.strictObject({
  cpu: z
    .number({ error: "expected a number of cores such as 1 or 0.5" })
    .refine((n) => Number.isFinite(n) && n > 0, { error: "expected a positive number of cores (fractions allowed, such as 0.5)" })
    .optional(),
  memory: memorySchema.optional(),
  gpu: z
    .number({ error: "expected a whole number of GPUs" })
    .refine((n) => Number.isInteger(n) && n >= 0, { error: "expected a whole number of GPUs, 0 or more" })
    .optional(),
});

const pathSchema = z.string({ error: "expected a path relative to the config file" }).min(1, { error: "expected a non-empty path" });

const pipelineSchema = z
  .strictObject({
    source: pathSchema,
    data: pathSchema.optional(),
    manifest: pathSchema.optional(),
    hyperparams: z
      .union([pathSchema, z.record(z.string(), z.unknown()), z.array(z.unknown())], {
        error: "expected a path to a JSON file, an object of scalars and lists, a list of such grids, or a random search",
      })
      .optional(),
    resources: resourcesSchema.optional(),
    parallelism: z
      .number({ error: "expected a whole number of jobs, 1 or more" })
      .refine((n) => Number.isInteger(n) && n >= 1, { error: "expected a whole number of jobs, 1 or more" })
      .optional(),
  })
  .superRefine((pipeline, ctx) => {
    if (pipeline.data !== undefined && pipeline.manifest !== undefined) {
      ctx.addIssue({ code: "custom", path: ["manifest"], message: "`data` and `manifest` are exclusive: keep one of them" });
    } else if (pipeline.data === undefined && pipeline.manifest === undefined) {
      ctx.addIssue({
        code: "custom",
        path: [],
        message: "expected `data` (a local directory) or `manifest` (a manifest file), found neither",
      });
    }
  });

const configSchema = z.strictObject({
  workspace: z
    .string({ error: "expected a name" })
    .regex(NAME_PATTERN, { error: "expected a name of letters, digits, '-' and '_' (at most 63)" })
    .optional(),
  pipelines: z
    .record(z.string(), pipelineSchema, { error: "expected an object of pipelines, such as { svm: { source, data } }" })
    .superRefine((pipelines, ctx) => {
      const names = Object.keys(pipelines);
      if (names.length === 0) ctx.addIssue({ code: "custom", message: "expected at least one pipeline" });
      for (const name of names) {
        if (!NAME_PATTERN.test(name)) {
          ctx.addIssue({ code: "custom", path: [name], message: "expected a pipeline name of letters, digits, '-' and '_' (at most 63)" });
        }
      }
    }),
  allowFileUrls: z.array(pathSchema, { error: 'expected a list of directories, such as ["/datasets"]' }).optional(),
  watch: z
    .strictObject({
      debounceMs: z.number().int({ error: "expected whole milliseconds" }).min(0, { error: "expected 0 or more milliseconds" }).optional(),
      onChange: z.enum(["restart", "queue"], { error: 'expected "restart" or "queue"' }).optional(),
    })
    .optional(),
});

const tolerationSchema = z.strictObject({
  key: z.string().optional(),
  operator: z.enum(["Exists", "Equal"]).optional(),
  value: z.string().optional(),
  effect: z.enum(["NoSchedule", "PreferNoSchedule", "NoExecute"]).optional(),
  tolerationSeconds: z.number().int().optional(),
});

const envNameSchema = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, { error: "expected the name of an environment variable" });

const stackSchema = z.discriminatedUnion(
  "backend",
  [
    z.strictObject({
      backend: z.literal("local"),
      maxCpu: z.number().positive({ error: "expected a positive number of cores" }).optional(),
      maxMemory: memorySchema.optional(),
      dataViews: z
        .enum(["link", "copy"], {
          error:
            'expected "link" (a data bundle\'s own files, linked: nothing copied) or "copy" (a copy kaos owns: jobs cannot change your files)',
        })
        .optional(),
    }),
    z.strictObject({
      backend: z.literal("kubernetes"),
      namespace: z
        .string({ error: "expected a Kubernetes namespace name" })
        .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/, { error: "expected a Kubernetes namespace name (lowercase letters, digits, '-')" }),
      kubeContext: z.string().optional(),
      pachyderm: z.strictObject({
        address: z.url({ error: 'expected pachd\'s URL, such as "http://pachd.pachyderm.svc:30650"' }),
        tokenEnv: envNameSchema.optional(),
        project: z.string().optional(),
      }),
      registry: z.strictObject({
        url: z.string({ error: 'expected an image repository prefix such as "registry.example.com/ml"' }).min(1),
        secretName: z.string().optional(),
        usernameEnv: envNameSchema.optional(),
        passwordEnv: envNameSchema.optional(),
      }),
      gpu: z
        .strictObject({
          resourceName: z.string().optional(),
          nodeSelector: z.record(z.string(), z.string()).optional(),
          tolerations: z.array(tolerationSchema).optional(),
        })
        .optional(),
      pulumi: z
        .strictObject({
          backendUrl: z.string().optional(),
          stackName: z.string().optional(),
          passphraseEnv: envNameSchema.optional(),
        })
        .optional(),
      builderImage: z.string().optional(),
    }),
  ],
  { error: 'expected `backend: "local"` or `backend: "kubernetes"`' },
) satisfies z.ZodType<StackConfig>;

export { defineConfig, defineStack } from "../define.js";

export { CONFIG_FILE_NAMES, findConfig } from "./layout.js";
import { packageRoot, stackFileCandidates, stacksDirOf } from "./layout.js";
import { DEFAULT_STACK_NAME, WATCH_DEFAULTS } from "./defaults.js";

/** Where the package's own entry lives, so configs anywhere can `import { defineConfig } from "kaos-ml"`. */
function packageEntry(): string {
  const built = join(dirname(fileURLToPath(import.meta.url)), "define.js");
  return existsSync(built) ? built : join(packageRoot(), "src", "define.ts");
}

/** Evaluates a config or stack module and returns its default export. */
async function importModule(file: string, code: "CONFIG_LOAD" | "STACK_INVALID"): Promise<unknown> {
  // Required, not imported: importing jiti's CommonJS bundle from ESM makes
  // Node scan its source for exports first, a cost on every command.
  const { createJiti } = createRequire(import.meta.url)("jiti") as typeof import("jiti");
  const jiti = createJiti(import.meta.url, {
    alias: { "kaos-ml": packageEntry() },
    moduleCache: false,
    // Transpiled configs are cached by content, so an unchanged config loads without a compiler.
    fsCache: join(tmpdir(), "kaos-jiti"),
    interopDefault: true,
  });
  const expected =
    code === "CONFIG_LOAD" ? "`export default defineConfig({ pipelines: {...} })`" : "`export default defineStack({ backend: ... })`";
  let module: unknown;
  try {
    module = await jiti.import(file);
  } catch (error) {
    throw new KaosError(code, `${file}: could not be loaded: ${describeError(error)}`, {
      hint: "fix the error above; the file must `export default defineConfig({...})` (or `defineStack` for a stack)",
      cause: error,
    });
  }
  // Without this check a module of named exports would be validated as if it were the config.
  if (typeof module !== "object" || module === null || !("default" in module)) {
    throw new KaosError(code === "CONFIG_LOAD" ? "CONFIG_INVALID" : code, `${file}: has no default export; expected ${expected}`);
  }
  return (module as { default: unknown }).default;
}

type PathKey = PropertyKey;

/**
 * Best effort: the line of `file` where the last key of `path` is written,
 * found by looking for each key in turn after the previous one.
 */
export function locateKey(source: string, path: readonly PathKey[]): number | undefined {
  let offset = 0;
  let found = false;
  for (const key of path) {
    if (typeof key !== "string") continue;
    const escaped = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const pattern = new RegExp(`(?:^|[\\s{,])(?:${escaped}|"${escaped}"|'${escaped}')\\s*:`, "g");
    pattern.lastIndex = offset;
    const match = pattern.exec(source);
    if (!match) break;
    offset = match.index + match[0].length;
    found = true;
  }
  if (!found) return undefined;
  return source.slice(0, offset).split("\n").length;
}

function formatPath(path: readonly PathKey[]): string {
  return path.map((key) => String(key)).join(".");
}

function describeValue(value: unknown): string {
  if (value === undefined) return "nothing";
  try {
    const text = JSON.stringify(value);
    if (text === undefined) return String(value);
    return text.length > 60 ? `${text.slice(0, 57)}...` : text;
  } catch {
    return String(value);
  }
}

function valueAt(root: unknown, path: readonly PathKey[]): unknown {
  let current = root;
  for (const key of path) {
    if (typeof current !== "object" || current === null) return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

/** Where in `file` a key path is: `file:line` when the line can be found, else the file. */
function position(file: string, source: string | undefined, path: readonly PathKey[]): string {
  const line = source === undefined ? undefined : locateKey(source, path);
  return line === undefined ? file : `${file}:${line}`;
}

/** One line per problem: `file:line: key.path: what was found; what is expected`. */
function zodProblems(error: z.ZodError, file: string, value: unknown, prefix: readonly PathKey[] = []): string[] {
  let source: string | undefined;
  try {
    source = readFileSync(file, "utf8");
  } catch {
    source = undefined;
  }
  return error.issues.map((issue) => {
    if (issue.code === "unrecognized_keys") {
      return issue.keys
        .map((key) => {
          const path = [...prefix, ...issue.path, key];
          return `${position(file, source, path)}: ${formatPath(path)}: unknown key; check its spelling (see the config reference in the README)`;
        })
        .join("\n");
    }
    const path = [...prefix, ...issue.path];
    const found = valueAt(value, issue.path);
    const where = position(file, source, path);
    const name = path.length === 0 ? "(top level)" : formatPath(path);
    if (found === undefined && issue.code === "invalid_type") {
      return `${where}: ${name}: missing; ${issue.message}`;
    }
    if (issue.code === "custom" && issue.path.length > 0 && (found === undefined || typeof found === "object")) {
      return `${where}: ${name}: ${issue.message}`;
    }
    return `${where}: ${name}: ${issue.message}, found ${describeValue(found)}`;
  });
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
export function resolveConfig(value: unknown, file: string): ResolvedConfig {
  // A config is parsed once per process: compiling zod's fast path would cost more than it saves.
  const parsed = configSchema.safeParse(value, { jitless: true });
  if (!parsed.success) {
    throw new KaosError("CONFIG_INVALID", `invalid config\n${zodProblems(parsed.error, file, value).join("\n")}`);
  }
  const config = parsed.data;
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
          `${state === "missing" ? "no such file" : "is a directory"}: ${hyperparamsFile}; expected a JSON file holding an object of scalars and lists`,
        );
      } else {
        try {
          hyperparams = parseSpaceJson(readFileSync(hyperparamsFile, "utf8"), hyperparamsFile);
        } catch (error) {
          if (error instanceof SyntaxError) {
            problem(at("hyperparams"), `${hyperparamsFile}: not valid JSON (${error.message}); expected an object of scalars and lists`);
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

/** Finds (or takes `explicit`), loads and validates the config. */
export async function loadConfig(options: { cwd: string; configPath?: string | undefined }): Promise<ResolvedConfig> {
  let file: string | undefined;
  if (options.configPath !== undefined) {
    file = resolve(options.cwd, options.configPath);
    if (checkFile(file) !== "ok") {
      throw new KaosError("CONFIG_NOT_FOUND", `--config ${options.configPath}: no such file: ${file}`);
    }
  } else {
    file = findConfig(options.cwd);
    if (file === undefined) {
      throw new KaosError("CONFIG_NOT_FOUND", `no kaos.config.ts found in ${resolve(options.cwd)} or any parent directory`, {
        hint: "create one (see `kaos template get --name mnist` for a complete example) or pass --config PATH",
      });
    }
  }
  const value = await importModule(file, "CONFIG_LOAD");
  if (typeof value !== "object" || value === null) {
    throw new KaosError(
      "CONFIG_INVALID",
      `${file}: the default export is ${describeValue(value)}; expected \`export default defineConfig({ pipelines: {...} })\``,
    );
  }
  return resolveConfig(value, file);
}

/** The built-in stack used when `--stack` is not given. */
export const DEFAULT_STACK: ResolvedStack = { name: DEFAULT_STACK_NAME, file: undefined, config: { backend: "local" } };

/** Loads `stacks/NAME.ts` (or .mts/.js/.mjs) beside the config; without a name, the local backend. */
export async function loadStack(config: Pick<ResolvedConfig, "root">, name: string | undefined): Promise<ResolvedStack> {
  if (name === undefined) return DEFAULT_STACK;
  if (!NAME_PATTERN.test(name)) {
    throw new KaosError("USAGE", `--stack ${name}: expected a stack name of letters, digits, '-' and '_' (the file stacks/NAME.ts)`);
  }
  const dir = stacksDirOf(config.root);
  const candidates = stackFileCandidates(config.root, name);
  const file = candidates.find((candidate) => checkFile(candidate) === "ok");
  if (file === undefined) {
    if (name === DEFAULT_STACK_NAME) return DEFAULT_STACK;
    throw new KaosError("STACK_NOT_FOUND", `--stack ${name}: no stack file ${join(dir, `${name}.ts`)}`, {
      hint: `create it with \`export default defineStack({ backend: "local" })\` or pick an existing stack in ${dir}`,
    });
  }
  const value = await importModule(file, "STACK_INVALID");
  const parsed = stackSchema.safeParse(value, { jitless: true });
  if (!parsed.success) {
    throw new KaosError("STACK_INVALID", `invalid stack\n${zodProblems(parsed.error, file, value).join("\n")}`);
  }
  return { name, file, config: parsed.data };
}

/** The config and the stack a command works on. */
export async function loadProject(options: {
  cwd: string;
  configPath?: string | undefined;
  stackName?: string | undefined;
}): Promise<{ config: ResolvedConfig; stack: ResolvedStack }> {
  const config = await loadConfig({ cwd: options.cwd, configPath: options.configPath });
  const stack = await loadStack(config, options.stackName);
  return { config, stack };
}
