/**
 * The shapes of `kaos.config.ts` and of stack files, as zod schemas, and
 * their problems as `file:line: key.path: ...` lines. Loaded only when a
 * config or stack file is evaluated, not when its validated value is taken
 * from the config cache (config-cache.ts).
 */
import { readFileSync } from "node:fs";
import * as z from "zod";
import {
  IMAGE_REGISTRY_PATTERN,
  NAME_PATTERN,
  type PathKey,
  describeValue,
  formatPath,
  parseMemory,
  position,
  valueAt,
} from "./config-text.js";
import { MAX_DEBOUNCE_MS } from "./defaults.js";
import { KaosError } from "./errors.js";
import { similarName } from "./suggest.js";
import type { StackConfig } from "./types.js";

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
      debounceMs: z
        .number()
        .int({ error: "expected whole milliseconds" })
        .min(0, { error: "expected 0 or more milliseconds" })
        .max(MAX_DEBOUNCE_MS, { error: `expected at most ${MAX_DEBOUNCE_MS} milliseconds (about 24 days)` })
        .optional(),
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
      maxCpu: z
        .number({ error: "expected a positive number of cores" })
        .positive({ error: "expected a positive number of cores" })
        .optional(),
      maxMemory: memorySchema.optional(),
      dataViews: z
        .enum(["mount", "link", "copy"], {
          error:
            'expected "mount" (a data bundle\'s own folder, mounted read-only for each job: nothing copied), "link" (its own files, linked: nothing copied) or "copy" (a copy kaos owns: jobs cannot change your files)',
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
        // kaos speaks HTTP to pachd: "localhost:1659" parses as a URL of scheme "localhost:".
        address: z.url({ protocol: /^https?$/, error: 'expected pachd\'s http:// or https:// URL, such as "http://localhost:1659"' }),
        tokenEnv: envNameSchema.optional(),
        project: z
          .string()
          .regex(/^[A-Za-z0-9][A-Za-z0-9_-]*$/, {
            error: "expected a Pachyderm project name (letters, digits, '-' and '_', starting with a letter or digit)",
          })
          .optional(),
      }),
      registry: z.strictObject({
        url: z.string({ error: 'expected an image repository prefix such as "registry.example.com/ml"' }).regex(IMAGE_REGISTRY_PATTERN, {
          error:
            'expected an image repository prefix such as "registry.example.com/ml": a registry host, then lowercase path components, no scheme',
        }),
        secretName: z
          .string()
          .max(253, { error: "expected a Kubernetes secret name of at most 253 characters" })
          .regex(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/, {
            error: "expected a Kubernetes secret name (lowercase letters, digits, '-' and '.')",
          })
          .optional(),
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

/** A config as its schema leaves it: checked, but its paths not yet resolved. */
export type ParsedConfig = z.output<typeof configSchema>;

/** The object schema that `value` at `path` was checked against, through optionals, records and the stack's backends. */
function objectSchemaAt(schema: z.ZodType, value: unknown, path: readonly PathKey[]): z.ZodObject | undefined {
  let current: z.ZodType | undefined = schema;
  let found = value;
  for (let depth = 0; ; depth += 1) {
    while (current instanceof z.ZodOptional || current instanceof z.ZodDiscriminatedUnion) {
      if (current instanceof z.ZodOptional) {
        current = current.unwrap() as z.ZodType;
      } else {
        const { discriminator } = current.def;
        const tag = valueAt(found, [discriminator]);
        current = (current.options as z.ZodObject[]).find((option) => option.shape[discriminator]?.safeParse(tag).success);
      }
    }
    const key = path[depth];
    if (key === undefined) return current instanceof z.ZodObject ? current : undefined;
    if (current instanceof z.ZodObject && typeof key === "string") current = current.shape[key] as z.ZodType | undefined;
    else if (current instanceof z.ZodRecord) current = current.valueType as z.ZodType;
    else return undefined;
    found = valueAt(found, [key]);
  }
}

/** The key `unknown` was likely meant to be: a key of its object that was not given. */
function meantKey(unknown: string, object: z.ZodObject | undefined, given: unknown): string | undefined {
  if (object === undefined) return undefined;
  const present = typeof given === "object" && given !== null ? Object.keys(given) : [];
  return similarName(
    unknown,
    Object.keys(object.shape).filter((key) => !present.includes(key)),
  );
}

/** One line per problem: `file:line: key.path: what was found; what is expected`. */
function zodProblems(error: z.ZodError, file: string, value: unknown, schema: z.ZodType, prefix: readonly PathKey[] = []): string[] {
  let source: string | undefined;
  try {
    source = readFileSync(file, "utf8");
  } catch {
    source = undefined;
  }
  return error.issues.map((issue) => {
    if (issue.code === "unrecognized_keys") {
      const object = objectSchemaAt(schema, value, issue.path);
      const given = valueAt(value, issue.path);
      return issue.keys
        .map((key) => {
          const path = [...prefix, ...issue.path, key];
          const meant = meantKey(key, object, given);
          const advice = meant === undefined ? "check its spelling (see the config reference in the README)" : `did you mean "${meant}"?`;
          return `${position(file, source, path)}: ${formatPath(path)}: unknown key; ${advice}`;
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

export function validateConfig(value: unknown, file: string): ParsedConfig {
  // A config is parsed once per process: compiling zod's fast path would cost more than it saves.
  const parsed = configSchema.safeParse(value, { jitless: true });
  if (!parsed.success) {
    throw new KaosError("CONFIG_INVALID", `invalid config\n${zodProblems(parsed.error, file, value, configSchema).join("\n")}`);
  }
  return parsed.data;
}

export function validateStack(value: unknown, file: string): StackConfig {
  const parsed = stackSchema.safeParse(value, { jitless: true });
  if (!parsed.success) {
    throw new KaosError("STACK_INVALID", `invalid stack\n${zodProblems(parsed.error, file, value, stackSchema).join("\n")}`);
  }
  return parsed.data;
}
