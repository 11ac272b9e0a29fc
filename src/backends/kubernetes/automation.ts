/**
 * Runs the cluster program through Pulumi's Automation API: an inline
 * program in a LocalWorkspace whose state lives in a file backend under
 * `.kaos/pulumi` (or the stack's `pulumi.backendUrl`), with passphrase
 * secrets.
 *
 * The Pulumi CLI does the work; the SDK drives it through the
 * `PulumiCommand` that `PulumiCommand.get` returns (findPulumi). Tests hand
 * in a `PulumiCli` instead: a `PulumiExec` that sees the exact arguments and
 * environment the CLI would get (pulumi-runner.ts). What kaos reads of the
 * SDK beyond its typed API is listed in test/pulumi-sdk.test.ts.
 */
import type { ResourceChange, ResourceChanges } from "../../core/backend.js";
import { constants, readFileSync } from "node:fs";
import { access, mkdir, rm, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { basename, delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  CommandError,
  ConcurrentUpdateError,
  LocalWorkspace,
  PulumiCommand,
  type EngineEvent,
  type OpMap,
} from "@pulumi/pulumi/automation/index.js";
import { KaosError, describeError, errnoCode } from "../../core/errors.js";
import { temporaryPathFor } from "../../core/process-identity.js";
import { withoutColours } from "../../core/format.js";
import type { ResolvedConfig, ResolvedStack } from "../../core/types.js";
import { planCluster, type ClusterPipelineInput, type ClusterPlan } from "./cluster-plan.js";
import { dockerConfigFromEnv } from "./manifests.js";
import { clusterProgram } from "./program.js";
import { type ClusterSettings, PACHD_ADDRESS_ENV } from "./settings.js";
import { preflight, stableKubeconfig } from "./preflight.js";
import { assertValidSpecs } from "./render.js";
import { InjectedPulumiRunner, type PulumiCli } from "./pulumi-runner.js";

export type { PulumiCli, PulumiExec } from "./pulumi-runner.js";

export interface ClusterRunOptions {
  /**
   * The Pulumi CLI to drive; default the `pulumi` found on PATH (or in
   * ~/.pulumi/bin), as the SDK's PulumiCommand. Tests give a PulumiCli.
   */
  pulumi?: PulumiCommand | PulumiCli;
  /** Environment read for the token, the passphrase and registry credentials. Default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Pulumi's own progress output, as it comes. */
  onOutput?: (text: string) => void;
  /** Where the dynamic providers load their implementation from (tests). */
  implUrl?: string;
  /** Re-read every resource from the cluster first (Pulumi's refresh), so what went missing is created again. */
  refresh?: boolean;
  /** Check the kube context and pachd before Pulumi starts (default true; off in tests of the seam alone). */
  preflight?: boolean;
  /** Ctrl-C or SIGTERM: Pulumi is asked to stop (its own SIGINT), and the update ends as interrupted. */
  signal?: AbortSignal;
}

/** One resource step of a preview or an update, and their summary: the Backend's own types. */
export type ClusterChange = ResourceChange;
export type ClusterChangeSummary = ResourceChanges;

export const PULUMI_INSTALL_HINT =
  "install it: curl -fsSL https://get.pulumi.com | sh (or brew install pulumi), then rerun; " +
  "`kaos render --stack cluster -o DIR` works without it";

/** `pulumi preview` of the cluster program: what `up` would change. */
export async function previewCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  options: ClusterRunOptions = {},
): Promise<ClusterChangeSummary> {
  return runCluster("preview", config, stack, inputs, options);
}

/** `pulumi up` of the cluster program. */
export async function applyCluster(
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  options: ClusterRunOptions = {},
): Promise<ClusterChangeSummary> {
  return runCluster("up", config, stack, inputs, options);
}

async function runCluster(
  operation: "preview" | "up",
  config: ResolvedConfig,
  stack: ResolvedStack,
  inputs: readonly ClusterPipelineInput[],
  options: ClusterRunOptions,
): Promise<ClusterChangeSummary> {
  const env = options.env ?? process.env;
  const plan = await planCluster(config, stack, inputs);
  assertValidSpecs(plan);
  const pulumi = options.pulumi ?? (await findPulumi(env));
  const pulumiCommand = pulumi instanceof PulumiCommand ? pulumi : new InjectedPulumiRunner(pulumi).asPulumiCommand();
  const { settings } = plan;
  const envVars = pulumiEnv(plan, env);
  const secretValues = secretsIn(plan, env);

  await prepareDirectories(plan);
  let kubeconfig: string | undefined;
  let checked: ClusterChangeSummary["checked"];
  if (options.preflight !== false) {
    const found = await preflight(settings, env);
    kubeconfig = await stableKubeconfig(found.kube, settings.pulumi.workDir);
    checked = { kubeContext: found.kube.context, kubeServer: found.kube.server, pachdVersion: found.pachd };
  }
  const program = clusterProgram(plan, {
    env,
    ...(options.implUrl ? { implUrl: options.implUrl } : {}),
    ...(kubeconfig ? { kubeconfig } : {}),
  });
  const changes: ClusterChange[] = [];
  const steps: ClusterChange[] = [];
  const diagnostics: string[] = [];
  let summary: OpMap | undefined;
  const onEvent = (event: EngineEvent): void => {
    const step = event.resourcePreEvent?.metadata;
    if (step && !isBookkeeping(step.type, step.urn)) {
      const change = { op: step.op, type: step.type, name: resourceName(step.urn), urn: step.urn };
      steps.push(change);
      if (step.op !== "same" && step.op !== "read") changes.push(change);
    }
    const diagnostic = event.diagnosticEvent;
    if (diagnostic?.severity === "error") {
      const message = plainText(diagnostic.message);
      const line = diagnostic.urn && !isBookkeeping("", diagnostic.urn) ? `${resourceName(diagnostic.urn)}: ${message}` : message;
      if (message !== "" && !diagnostics.includes(line)) diagnostics.push(line);
    }
    if (event.summaryEvent) summary = event.summaryEvent.resourceChanges;
  };

  try {
    const workspaceStack = await LocalWorkspace.createOrSelectStack(
      { stackName: settings.pulumi.stackName, projectName: settings.pulumi.projectName, program },
      {
        workDir: settings.pulumi.workDir,
        pulumiCommand,
        envVars,
        secretsProvider: "passphrase",
        projectSettings: {
          name: settings.pulumi.projectName,
          runtime: "nodejs",
          // Pulumi starts the dynamic provider process here; it must resolve @pulumi/pulumi.
          main: packageRoot(),
          backend: { url: settings.pulumi.backendUrl },
        },
      },
    );
    const common = {
      onEvent,
      ...(options.refresh ? { refresh: true } : {}),
      ...(options.onOutput ? { onOutput: options.onOutput } : {}),
      ...(options.signal ? { signal: options.signal } : {}),
    };
    // The SDK listens for an abort only once a command started.
    throwIfInterrupted(options.signal, operation, settings);
    if (operation === "preview") await workspaceStack.preview(common);
    else {
      const apply = async (): Promise<void> => {
        if (ownsState(settings.pulumi.backendUrl) && !checkpointShowsNoPendingCreates(settings)) {
          await dropPendingCreates(pulumiCommand, settings, envVars, options.onOutput);
        }
        await workspaceStack.up(common);
      };
      try {
        await apply();
      } catch (error) {
        if (!(error instanceof ConcurrentUpdateError) || !ownsState(settings.pulumi.backendUrl)) throw error;
        // The state is kaos's own, and kaos holds the stack's writer lock: the
        // Pulumi lock is left by a CLI that was killed. Cancel it and go again.
        options.onOutput?.(
          `kaos: stack '${settings.pulumi.stackName}' was left locked by a Pulumi update that was killed; cancelling it (pulumi cancel) and applying again\n`,
        );
        changes.length = 0;
        steps.length = 0;
        diagnostics.length = 0;
        summary = undefined;
        await workspaceStack.cancel();
        throwIfInterrupted(options.signal, operation, settings);
        await apply();
      }
    }
  } catch (error) {
    // What the stopped providers said (connection reset, ...) is the interruption, not the cause.
    if (options.signal?.aborted && !(error instanceof KaosError)) throw interrupted(options.signal, operation, settings, error);
    throw pulumiError(error, operation, settings.pulumi, secretValues, diagnostics);
  }
  return { ...summarize(settings.pulumi.stackName, summary, changes, steps), ...(checked ? { checked } : {}) };
}

/**
 * A Pulumi CLI stopped at once (killed, or a second Ctrl-C) leaves the
 * resources it was creating as pending creates, which every later update
 * only warns about until a refresh resolves them. kaos's creates adopt what
 * a call that was cut off made, so they are dropped and created again. The
 * state goes through `stack export`/`import` as it is stored: secrets stay
 * encrypted.
 */
/**
 * Whether the stack's checkpoint in a file backend holds no pending create,
 * read from the file: the common case, told without starting the Pulumi CLI
 * for a `stack export`. False when the checkpoint cannot be read (a new stack,
 * a compressed one): the export then tells.
 */
function checkpointShowsNoPendingCreates(settings: ClusterSettings): boolean {
  const { backendUrl, projectName, stackName } = settings.pulumi;
  try {
    const file = join(fileURLToPath(backendUrl), ".pulumi", "stacks", projectName, `${stackName}.json`);
    const state = JSON.parse(readFileSync(file, "utf8")) as { checkpoint?: { latest?: { pending_operations?: { type?: string }[] } } };
    return !(state.checkpoint?.latest?.pending_operations ?? []).some((operation) => operation.type === "creating");
  } catch {
    return false;
  }
}

async function dropPendingCreates(
  command: PulumiCommand,
  settings: ClusterSettings,
  envVars: Record<string, string>,
  onOutput: ((text: string) => void) | undefined,
): Promise<void> {
  // `run` is in the SDK's JavaScript, not its types (test/pulumi-sdk.test.ts checks it is there).
  const pulumi = command as unknown as { run(args: string[], cwd: string, env: Record<string, string>): Promise<{ stdout: string }> };
  const { stackName, workDir } = settings.pulumi;
  const stackArgs = ["--stack", stackName, "--non-interactive"];
  const exported = await pulumi.run(["stack", "export", ...stackArgs], workDir, envVars);
  const state = JSON.parse(exported.stdout) as {
    deployment?: { pending_operations?: { type?: string; resource?: { urn?: string } }[] };
  };
  const pending = state.deployment?.pending_operations ?? [];
  const creates = pending.filter((operation) => operation.type === "creating");
  if (state.deployment === undefined || creates.length === 0) return;
  onOutput?.(
    `kaos: stack '${stackName}' holds ${creates.length} create(s) an interrupted update left pending (${creates.map((operation) => resourceName(operation.resource?.urn ?? "")).join(", ")}); creating them again\n`,
  );
  state.deployment.pending_operations = pending.filter((operation) => operation.type !== "creating");
  const file = temporaryPathFor(join(workDir, "pending-creates.json"));
  await writeFile(file, JSON.stringify(state), { mode: 0o600 });
  try {
    await pulumi.run(["stack", "import", "--file", file, ...stackArgs], workDir, envVars);
  } finally {
    await rm(file, { force: true });
  }
}

function throwIfInterrupted(signal: AbortSignal | undefined, operation: "preview" | "up", settings: ClusterSettings): void {
  if (signal?.aborted) throw interrupted(signal, operation, settings, undefined);
}

function interrupted(signal: AbortSignal, operation: "preview" | "up", settings: ClusterSettings, cause: unknown): KaosError {
  const why = signal.reason instanceof Error ? signal.reason.message : "interrupted";
  const command = `kaos ${operation === "up" ? "up" : "plan"} --stack ${settings.stack}`;
  return new KaosError(
    "PULUMI_FAILED",
    `pulumi ${operation} of stack '${settings.pulumi.stackName}' was ${why}: Pulumi stopped it part way`,
    {
      hint:
        operation === "up"
          ? `run \`${command}\` again to finish: what was applied is kept, and a Pulumi lock left behind is cancelled by itself`
          : `run \`${command}\` again`,
      cause,
    },
  );
}

/**
 * The counts are those of the listed steps, so that they add up to the list:
 * Pulumi's own summary also counts the stack and its default providers.
 */
function summarize(stack: string, summary: OpMap | undefined, changes: ClusterChange[], steps: ClusterChange[]): ClusterChangeSummary {
  const count = (op: keyof OpMap): number => (steps.length > 0 ? steps.filter((step) => step.op === op).length : (summary?.[op] ?? 0));
  return {
    stack,
    create: count("create"),
    update: count("update"),
    delete: count("delete"),
    replace: count("replace"),
    same: count("same"),
    resources: changes,
  };
}

/** The stack itself and Pulumi's default providers: Pulumi's bookkeeping, not something kaos declares. */
function isBookkeeping(type: string, urn: string): boolean {
  const urnType = urn.split("::")[2] ?? "";
  const kind = type !== "" ? type : urnType;
  return kind === "pulumi:pulumi:Stack" || (kind.startsWith("pulumi:providers:") && resourceName(urn).startsWith("default"));
}

function resourceName(urn: string): string {
  return urn.split("::").pop() ?? urn;
}

/** Pulumi's messages carry ANSI escapes or its own `<{%reset%}>` colour tags. */
function plainText(message: string): string {
  return withoutColours(message)
    .replace(/<\{%[^%]*%\}>/g, "")
    .trim();
}

/** kaos's own file backend under .kaos/pulumi, which no one but kaos (holding its writer lock) updates. */
function ownsState(backendUrl: string): boolean {
  return backendUrl.startsWith("file://");
}

/**
 * What the Pulumi CLI (and the provider process it starts) gets on top of
 * kaos's own environment: where the state is, the secrets passphrase, and
 * the Pachyderm token under its own name. Nothing secret goes in arguments.
 */
export function pulumiEnv(plan: ClusterPlan, env: NodeJS.ProcessEnv): Record<string, string> {
  const { settings } = plan;
  const passphrase = env[settings.pulumi.passphraseEnv];
  if ((passphrase === undefined || passphrase === "") && dockerConfigFromEnv(settings, env) !== undefined) {
    throw new KaosError(
      "STACK_INVALID",
      `stack '${settings.stack}' puts registry credentials in a Kubernetes secret, which Pulumi keeps encrypted in its state, but ${settings.pulumi.passphraseEnv} is not set`,
      {
        hint: `export ${settings.pulumi.passphraseEnv}=<a passphrase you keep>, or create the secret yourself and unset ${settings.registry.usernameEnv}/${settings.registry.passwordEnv}`,
      },
    );
  }
  const vars: Record<string, string> = {
    PULUMI_BACKEND_URL: settings.pulumi.backendUrl,
    // kaos keeps no other secret in the state: an empty passphrase is allowed then.
    PULUMI_CONFIG_PASSPHRASE: passphrase ?? "",
    PULUMI_SKIP_UPDATE_CHECK: "true",
    [PACHD_ADDRESS_ENV]: settings.pachyderm.address,
  };
  const token = env[settings.pachyderm.tokenEnv];
  if (token !== undefined && token !== "") vars[settings.pachyderm.tokenEnv] = token;
  return vars;
}

function secretsIn(plan: ClusterPlan, env: NodeJS.ProcessEnv): string[] {
  const { settings } = plan;
  const names = [settings.pachyderm.tokenEnv, settings.pulumi.passphraseEnv, settings.registry.passwordEnv];
  return names.flatMap((name) => {
    const value = name === undefined ? undefined : env[name];
    return value !== undefined && value.length >= 4 ? [value] : [];
  });
}

async function prepareDirectories(plan: ClusterPlan): Promise<void> {
  const { pulumi } = plan.settings;
  await mkdir(pulumi.workDir, { recursive: true });
  if (pulumi.backendUrl.startsWith("file://")) await mkdir(fileURLToPath(pulumi.backendUrl), { recursive: true });
}

/** The directory whose node_modules holds @pulumi/pulumi (kaos's package root, or the project that installed it). */
export function packageRoot(): string {
  const entry = createRequire(import.meta.url).resolve("@pulumi/pulumi");
  // .../node_modules/@pulumi/pulumi/index.js -> the directory holding node_modules
  return dirname(dirname(dirname(dirname(entry))));
}

/**
 * The Pulumi CLI on PATH, else in the default install location
 * (~/.pulumi/bin, where the install script puts it); PULUMI_MISSING otherwise.
 * The SDK checks its version.
 */
export async function findPulumi(env: NodeJS.ProcessEnv = process.env): Promise<PulumiCommand> {
  const candidates = (env["PATH"] ?? "")
    .split(delimiter)
    .filter((dir) => dir !== "")
    .map((dir) => join(dir, "pulumi"));
  candidates.push(join(env["HOME"] ?? homedir(), ".pulumi", "bin", "pulumi"));
  let found: string | undefined;
  for (const candidate of candidates) {
    try {
      await access(candidate, constants.X_OK);
      found = candidate;
      break;
    } catch {
      // not here
    }
  }
  if (found === undefined) {
    throw new KaosError(
      "PULUMI_MISSING",
      "the Pulumi CLI is required for stack 'cluster' (and every kubernetes stack), and `pulumi` is not on PATH",
      {
        hint: PULUMI_INSTALL_HINT,
      },
    );
  }
  const binDir = dirname(found);
  try {
    // PulumiCommand.get runs `<root>/bin/pulumi version` (or the `pulumi` on
    // this process's PATH) and checks it against the SDK's minimum.
    return basename(binDir) === "bin" ? await PulumiCommand.get({ root: dirname(binDir) }) : await PulumiCommand.get();
  } catch (error) {
    const message = describeError(error);
    if (errnoCode(error) === "ENOENT" || /ENOENT/.test(message)) {
      throw new KaosError("PULUMI_MISSING", `the Pulumi CLI at ${found} could not be started`, { hint: PULUMI_INSTALL_HINT });
    }
    throw new KaosError("PULUMI_FAILED", `the Pulumi CLI at ${found} is not usable: ${firstLine(message)}`, {
      hint: "upgrade it: curl -fsSL https://get.pulumi.com | sh (or brew upgrade pulumi)",
      cause: error,
    });
  }
}

/** Maps what the SDK throws to kaos errors; secrets are masked in everything shown. */
export function pulumiError(
  error: unknown,
  operation: string,
  pulumiSettings: { stackName: string; backendUrl: string; workDir: string; passphraseEnv: string },
  secrets: readonly string[],
  diagnostics: readonly string[] = [],
): KaosError {
  if (error instanceof KaosError) return error;
  const stack = pulumiSettings.stackName;
  const mask = (text: string): string => secrets.reduce((masked, secret) => masked.split(secret).join("***"), text);
  if (error instanceof ConcurrentUpdateError) {
    return new KaosError("STATE_LOCKED", `another Pulumi update of stack '${stack}' is running, or one was killed and left its lock`, {
      hint:
        `wait for it to finish; if it was killed, cancel it: cd ${pulumiSettings.workDir} && ` +
        `PULUMI_BACKEND_URL=${pulumiSettings.backendUrl} pulumi cancel --stack ${stack} --yes, then rerun`,
      cause: error,
    });
  }
  if (error instanceof CommandError) {
    const result = commandOutcome(error);
    const stderr = mask(result?.stderr ?? "");
    if (result !== undefined && result.err !== "" && (/ENOENT/.test(result.err) || /ENOENT/.test(stderr))) {
      return new KaosError("PULUMI_MISSING", "the Pulumi CLI could not be started", { hint: PULUMI_INSTALL_HINT });
    }
    if (/incorrect passphrase|passphrase must be set|PULUMI_CONFIG_PASSPHRASE/i.test(stderr)) {
      return new KaosError(
        "PASSPHRASE_INVALID",
        `the passphrase in ${pulumiSettings.passphraseEnv} does not unlock stack '${stack}' (${firstLine(plainText(stderr.replace(/^error:\s*/m, "")))})`,
        {
          hint: `export ${pulumiSettings.passphraseEnv} with the passphrase the stack was created with${pulumiSettings.passphraseEnv === "PULUMI_CONFIG_PASSPHRASE" ? "" : " (kaos hands it to Pulumi as PULUMI_CONFIG_PASSPHRASE)"}`,
          cause: error,
        },
      );
    }
    const output = stderr.trim() !== "" ? stderr : mask(result?.stdout ?? "");
    // The engine's error diagnostics say what failed; the end of the output is
    // usually Pulumi's outputs and resource counts.
    const detail = diagnostics.length > 0 ? diagnostics.map(mask).join("\n") : (diagnosticsSection(output) ?? lastLines(output, 15));
    return new KaosError("PULUMI_FAILED", `pulumi ${operation} failed for stack '${stack}' (exit ${result?.code ?? "unknown"})`, {
      hint: detail === "" ? undefined : detail,
      cause: error,
    });
  }
  return new KaosError("PULUMI_FAILED", `pulumi ${operation} failed for stack '${stack}': ${mask(describeError(error))}`, { cause: error });
}

/**
 * How a Pulumi command ended, read from its CommandError's message: the SDK
 * words it `code: N\n stdout: ...\n stderr: ...\n err?: ...\n` and keeps the
 * parts themselves private. Undefined when the message is worded otherwise.
 */
export function commandOutcome(error: Error): { code: number; stdout: string; stderr: string; err: string } | undefined {
  const match = /^code: (-?\d+)\n stdout: ([\s\S]*?)\n stderr: ([\s\S]*)\n err\?: ([\s\S]*)\n$/.exec(error.message);
  if (match === null) return undefined;
  return { code: Number(match[1]), stdout: match[2] ?? "", stderr: match[3] ?? "", err: match[4] ?? "" };
}

/** The `Diagnostics:` block of Pulumi's text output, without what follows it. */
function diagnosticsSection(text: string): string | undefined {
  const lines = plainText(text).split("\n");
  const start = lines.findIndex((line) => /^Diagnostics:\s*$/.test(line.trim()));
  if (start < 0) return undefined;
  const end = lines.findIndex((line, index) => index > start && /^(Outputs|Resources|Duration|Policies):/.test(line.trim()));
  const section = lastLines(lines.slice(start + 1, end < 0 ? undefined : end).join("\n"), 30);
  return section === "" ? undefined : section;
}

function lastLines(text: string, count: number): string {
  return text
    .split("\n")
    .map((line) => line.trimEnd())
    .filter((line) => line !== "")
    .slice(-count)
    .join("\n");
}

function firstLine(text: string): string {
  return text.split("\n")[0] ?? text;
}
