/**
 * The commands behind the CLI: each one loads what it needs and hands over to
 * the shared flow in engine.ts. Exit statuses: 0 success, 1 any failure, 2 for
 * `plan --detailed-exitcode` with changes pending.
 */
import { once } from "node:events";
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { loadConfig, loadProject, loadStack, parseMemory, resolveConfig } from "../core/config.js";
import { CONFIG_NAMES_TEXT, findConfig, findConfigOfState, jobPaths, stateDirOf } from "../core/layout.js";
import { destinationDir } from "../core/destination.js";
import { KaosError, describeError } from "../core/errors.js";
import {
  listRecords,
  type JobListFilter,
  type JobListing,
  type LogEnd,
  type RecordedJobInfo,
  type RemoteJobInfo,
  type ResourceChanges,
  type UpOutcome,
} from "../core/backend.js";
import type { Session } from "../core/engine.js";
import { readMetrics, type MetricValue, type SkippedMetric } from "../core/metrics.js";
import type { SweepRow, SweepRowJson } from "../core/sweep.js";
import { colors, isInteractive, printJson, table } from "./output.js";
import { PrintedLines, runLine } from "./run-lines.js";
import { invocationKey, processStartNs, traceUpToDate } from "./invocation.js";
import {
  displayLine,
  displayMessage,
  displayText,
  formatDuration,
  metricNumberText,
  paramValueText,
  paramsText,
  plural,
  quoteText,
} from "../core/format.js";
import { StateStore, type JobRecord, type JobState } from "../core/state.js";
import { originTag } from "../core/process-identity.js";
import type { ResolvedConfig, ResolvedStack } from "../core/types.js";
import { WATCH_DEFAULTS } from "../core/defaults.js";
import { EXIT, exitWhilePlanning, onStopRequest, type StopReason } from "./exit.js";

// The engine (hashing, planning, the backends) loads only for commands that run
// it, so the read-only commands start fast.
const engine = () => import("./engine-modules.js");

/** Opens the project's store and the stack's backend, made by the backend registry. */
async function openBackendSession(config: ResolvedConfig, stack: ResolvedStack, options: { readonly?: boolean } = {}): Promise<Session> {
  const { openSession, createBackend } = await engine();
  return openSession(config, stack, createBackend, options);
}

/**
 * For commands that hash: the hashing threads boot (tens of milliseconds of
 * module loading each) while this thread loads the config and the engine.
 */
async function startHashing(): Promise<void> {
  const { startHashWorkers } = await engine();
  startHashWorkers();
}

interface Common {
  config?: string;
}

/**
 * Ctrl-C (and SIGTERM) cancel the run cleanly; a second Ctrl-C exits at once; a lost reader stops it without a word.
 * `stopAtOnce` is asked first: when it answers true, it has stopped kaos itself.
 */
function interruptSignal(stopAtOnce: (why: StopReason) => boolean = () => false): { signal: AbortSignal; dispose(): void } {
  const controller = new AbortController();
  const dispose = onStopRequest((why) => {
    if (stopAtOnce(why)) return;
    if (why !== "output closed") {
      process.stderr.write(`\n${why}: stopping running jobs (press Ctrl-C again to exit at once)\n`);
    }
    controller.abort(new KaosError("JOBS_FAILED", why));
  });
  return { signal: controller.signal, dispose };
}

type RunOutcome = Extract<UpOutcome, { kind: "run" }>;

function upJson(outcome: RunOutcome, stack: string) {
  return {
    stack,
    runId: outcome.runId,
    succeeded: outcome.result.succeeded,
    cancelled: outcome.result.cancelled,
    pipelines: outcome.result.pipelines,
  };
}

/** `2 succeeded, 0 failed, 0 cancelled, 10 reused`: a run's jobs. */
function jobCounts(outcome: RunOutcome): string {
  const jobs = outcome.result.pipelines.flatMap((p) => p.jobs);
  const ran = jobs.filter((job) => !job.reused);
  const count = (state: string) => ran.filter((job) => job.state === state).length;
  const reused = jobs.length - ran.length;
  return `${count("succeeded")} succeeded, ${count("failed")} failed, ${count("cancelled")} cancelled, ${reused} reused`;
}

function summarize(outcome: RunOutcome): string {
  const failedStages = outcome.result.pipelines.flatMap((p) =>
    Object.entries(p.stages)
      .filter(([, stage]) => stage.state === "failed")
      // A reason of several lines (a manifest's failed entries) keeps them: they are kaos's own, with control characters escaped.
      .map(([name, stage]) => `${p.name} ${name}${stage.jobId ? ` (${stage.jobId})` : ""}: ${displayMessage(stage.reason ?? "failed")}`),
  );
  const lines = [runLine(outcome.runId, jobCounts(outcome)), ...failedStages.map((line) => `failed: ${line}`)];
  return lines.join("\n");
}

/** What applying changed outside kaos, for people: Pulumi's counts and each resource that changes. */
function changesLines(changes: ResourceChanges): string {
  const checked = changes.checked
    ? `kube context ${changes.checked.kubeContext} (${changes.checked.kubeServer}) answers; pachd ${changes.checked.pachdVersion}\n`
    : "";
  const head = `${checked}Pulumi (stack ${changes.stack}): ${changes.create} to create, ${changes.update} to update, ${changes.replace} to replace, ${changes.delete} to delete, ${changes.same} unchanged`;
  return [head, ...changes.resources.map((change) => `  ${change.op.padEnd(8)} ${change.type}  ${change.name}`)].join("\n");
}

/** Runs a plan to completion with progress, and prints its result. */
async function runApply(
  config: ResolvedConfig,
  stack: ResolvedStack,
  options: { force?: boolean; refresh?: boolean; json?: boolean; config?: string | undefined; command: string },
): Promise<number> {
  const { checkInputs, createReporter, planJson, recordUpToDate } = await engine();
  const manifests = checkInputs(config);
  const session = await openBackendSession(config, stack);
  let planning = false;
  const interrupt = interruptSignal((why) => {
    // While the plan is made nothing has started: stop at once, as `kaos plan` does, rather than hash on
    // only to start the jobs and cancel them.
    if (!planning || why === "output closed") return false;
    exitWhilePlanning(why, { view: () => reporter.close(), store: () => session.close() });
  });
  const reporter = new PrintedLines(createReporter({ json: options.json, interactive: isInteractive(process.stderr) }));
  try {
    const outcome = await session.backend.up({
      command: options.command,
      reporter,
      signal: interrupt.signal,
      force: options.force,
      refresh: options.refresh,
      manifests,
      onPlanning: () => {
        planning = true;
      },
      onPlan: (plan) => {
        planning = false;
        if (!options.json && !plan.changes) reporter.event({ kind: "note", message: "nothing to do: every stage and job is up to date" });
      },
    });
    reporter.close();
    if (outcome.kind === "applied") {
      if (options.json) printJson({ ...(planJson(outcome.plan) as object), pulumi: outcome.changes });
      else process.stdout.write(`applied: ${changesLines(outcome.changes)}\n`);
      return EXIT.ok;
    }
    if (options.json) printJson(upJson(outcome, stack.name));
    else process.stderr.write(`${summarize(outcome)}\n`);
    // With --config the next kaos up does not look for a record (up-from-record.ts): none is written.
    if (
      options.command === "up" &&
      !options.json &&
      !options.force &&
      !options.refresh &&
      options.config === undefined &&
      outcome.result.succeeded
    ) {
      let notRecorded: string | undefined;
      try {
        notRecorded = recordUpToDate({
          session,
          plan: outcome.plan,
          invocation: invocationKey(),
          cwd: process.cwd(),
          startedAtNs: processStartNs(),
          lines: reporter.lines,
          summary: jobCounts(outcome),
        });
      } catch (error) {
        // Only a shortcut for the next kaos up, which then plans in full.
        notRecorded = describeError(error);
      }
      traceUpToDate(notRecorded === undefined ? "recorded" : `not recorded: ${notRecorded}`);
    }
    return outcome.result.succeeded ? EXIT.ok : EXIT.failure;
  } finally {
    reporter.close();
    interrupt.dispose();
    session.close();
  }
}

export async function upCommand(options: Common & { stack?: string; force?: boolean; refresh?: boolean; json?: boolean }): Promise<number> {
  const { config, stack } = await loadProject({ cwd: process.cwd(), configPath: options.config, stackName: options.stack });
  return runApply(config, stack, { ...options, command: "up" });
}

export async function planCommand(
  options: Common & { stack?: string; refresh?: boolean; json?: boolean; detailedExitcode?: boolean },
): Promise<number> {
  const { checkInputs, formatPlan, planJson, createReporter } = await engine();
  const { config, stack } = await loadProject({ cwd: process.cwd(), configPath: options.config, stackName: options.stack });
  const manifests = checkInputs(config);
  const session = await openBackendSession(config, stack);
  try {
    const { backend } = session;
    const current = await backend.plan({ refresh: options.refresh, manifests });
    backend.runner?.checkResources(current);
    if (!options.json) process.stdout.write(`${formatPlan(current, colors())}\n`);
    let changes: ResourceChanges | undefined;
    if (backend.preview !== undefined) {
      if (!options.json) process.stdout.write("\n");
      const reporter = createReporter({ json: options.json, interactive: false });
      changes = await backend.preview(current, { refresh: options.refresh, reporter });
    }
    const outside = changes !== undefined && changes.create + changes.update + changes.replace + changes.delete > 0;
    if (options.json) printJson(changes === undefined ? planJson(current) : { ...(planJson(current) as object), pulumi: changes });
    else if (changes !== undefined) process.stdout.write(`${changesLines(changes)}\n`);
    return options.detailedExitcode && (current.changes || outside) ? EXIT.changes : EXIT.ok;
  } finally {
    session.close();
  }
}

export async function watchCommand(
  options: Common & {
    stack?: string;
    debounce?: number;
    onChange?: "restart" | "queue";
    poll?: boolean;
    pollInterval?: number;
    force?: boolean;
  },
): Promise<number> {
  if (options.pollInterval !== undefined && !options.poll) throw new KaosError("USAGE", "--poll-interval goes with --poll");
  const { watch } = await import("./watch/session.js");
  return watch({ cwd: process.cwd(), configPath: options.config, stackName: options.stack, ...options });
}

/** The flags of `kaos train deploy`. */
export interface DeployCliOptions {
  source: string;
  data?: string;
  manifest?: string;
  hyperparams?: string;
  cpu?: number;
  memory?: string;
  gpu?: number;
  parallelism?: number;
  name: string;
  force?: boolean;
  json?: boolean;
}

/** `train deploy`: the same engine with a config made from flags, state in ./.kaos. */
export async function deployCommand(options: Common & DeployCliOptions): Promise<number> {
  if (options.data !== undefined && options.manifest !== undefined) {
    throw new KaosError("USAGE", "-d/--data and -m/--manifest are exclusive: give one of them");
  }
  if (options.data === undefined && options.manifest === undefined) {
    throw new KaosError("USAGE", "expected -d/--data DIR or -m/--manifest PATH");
  }
  if (options.memory !== undefined && parseMemory(options.memory) === undefined) {
    throw new KaosError("USAGE", `--memory ${options.memory}: expected a size with an SI or binary suffix such as 512M or 2Gi`);
  }
  await startHashing();
  const cwd = process.cwd();
  const virtualFile = join(cwd, "kaos.config.ts");
  const value = {
    // No workspace: resolveConfig names it after the directory, as for a config file there.
    pipelines: {
      [options.name]: {
        source: resolve(cwd, options.source),
        ...(options.data !== undefined ? { data: resolve(cwd, options.data) } : {}),
        ...(options.manifest !== undefined ? { manifest: resolve(cwd, options.manifest) } : {}),
        ...(options.hyperparams !== undefined ? { hyperparams: resolve(cwd, options.hyperparams) } : {}),
        resources: {
          ...(options.cpu !== undefined ? { cpu: options.cpu } : {}),
          ...(options.memory !== undefined ? { memory: options.memory } : {}),
          ...(options.gpu !== undefined ? { gpu: options.gpu } : {}),
        },
        ...(options.parallelism !== undefined ? { parallelism: options.parallelism } : {}),
      },
    },
  };
  // Name the flags, not a config file the user never wrote (a kaos.config.ts
  // that happens to sit in this directory would even lend it line numbers),
  // whether the config or the run finds the mistake.
  const inFlags = (error: unknown): unknown => {
    if (!(error instanceof KaosError)) return error;
    const message = describeError(error)
      .split(`${virtualFile}:`)
      .map((part, index) => (index === 0 ? part : part.replace(/^(\d+:)? /, "")))
      .join("")
      .replaceAll(`pipelines.${options.name}: `, `-n/--name ${JSON.stringify(options.name)}: `)
      .replaceAll(`pipelines.${options.name}.source`, "-s/--source")
      .replaceAll(`pipelines.${options.name}.data`, "-d/--data")
      .replaceAll(`pipelines.${options.name}.manifest`, "-m/--manifest")
      .replaceAll(`pipelines.${options.name}.hyperparams`, "-h/--hyperparams")
      .replaceAll(`pipelines.${options.name}.resources.`, "--")
      .replaceAll(`pipelines.${options.name}.resources`, "--cpu/--memory/--gpu")
      .replaceAll(`pipelines.${options.name}.parallelism`, "-p/--parallelism")
      .replace("invalid config\n", "invalid flags\n");
    const hint = error.hint?.replaceAll("the pipeline's resources", "--cpu, --memory or --gpu");
    return new KaosError(error.code === "CONFIG_INVALID" ? "USAGE" : error.code, message, { hint });
  };
  let config: ResolvedConfig;
  try {
    config = await resolveConfig(value, virtualFile);
    const { checkInputs } = await engine();
    checkInputs(config);
  } catch (error) {
    throw inFlags(error);
  }
  const stack = await loadStack(config, undefined);
  return runApply(config, stack, { force: options.force, json: options.json, command: "train deploy" }).catch((error: unknown) => {
    throw inFlags(error);
  });
}

/** The project's state store for reading, or undefined when there is no config. */
async function readState(options: Common): Promise<{ config: ResolvedConfig; state: StateStore }> {
  const cwd = process.cwd();
  // `train deploy` projects have no config file: their state sits in ./.kaos, nearer than any config above.
  const deployProject = options.config === undefined && findConfigOfState(cwd) === undefined && existsSync(stateDirOf(cwd));
  const config: ResolvedConfig = deployProject
    ? { file: join(cwd, "kaos.config.ts"), root: cwd, workspace: "kaos", pipelines: [], watch: WATCH_DEFAULTS }
    : await loadConfig({ cwd, configPath: options.config });
  return { config, state: StateStore.open(config.root, { readonly: true }) };
}

function duration(job: JobRecord): string {
  if (!job.startedAt) return "";
  const end = job.finishedAt ? Date.parse(job.finishedAt) : Date.now();
  return formatDuration(end - Date.parse(job.startedAt));
}

function listJson(job: JobRecord) {
  return {
    id: job.id,
    pipeline: job.pipeline,
    stage: job.stage,
    state: job.state,
    params: job.params,
    startedAt: job.startedAt,
    finishedAt: job.finishedAt,
    exitCode: job.exitCode,
    collectedAt: job.collectedAt,
  };
}

/** What `kaos train list` shows when neither --limit nor --all says otherwise. */
const LIST_PAGE = 50;

export interface ListOptions {
  stack?: string;
  json?: boolean;
  limit?: number;
  all?: boolean;
  pipeline?: string;
  state?: JobState;
  run?: string;
}

/**
 * Each pipeline's leading metric among the listed jobs (the first numeric
 * metric its newest succeeded train job wrote), and that metric's value per
 * listed job. Only the listed jobs are read: a page of them, not the history.
 */
function listedMetrics(stateDir: string, jobs: readonly JobRecord[]): { names: Map<string, string>; values: Map<string, number> } {
  const names = new Map<string, string>();
  const metricsById = new Map<string, Record<string, MetricValue>>();
  const metricsOf = (job: JobRecord): Record<string, MetricValue> => {
    let values = metricsById.get(job.id);
    if (values === undefined) {
      values = job.collectedAt === null ? readMetrics(job.outputDir ?? jobPaths(stateDir, job.id).out).values : {};
      metricsById.set(job.id, values);
    }
    return values;
  };
  for (const job of jobs) {
    if (job.stage !== "train" || job.state !== "succeeded" || names.has(job.pipeline)) continue;
    const metrics = metricsOf(job);
    const first = Object.keys(metrics).find((name) => typeof metrics[name] === "number");
    if (first !== undefined) names.set(job.pipeline, first);
  }
  const values = new Map<string, number>();
  for (const job of jobs) {
    const name = names.get(job.pipeline);
    if (job.stage !== "train" || name === undefined || job.state === "queued") continue;
    const value = metricsOf(job)[name];
    if (typeof value === "number") values.set(job.id, value);
  }
  return { names, values };
}

/** The filters of `kaos train list` as the store and the backends take them. */
function listFilter(options: ListOptions): JobListFilter {
  return {
    ...(options.pipeline !== undefined ? { pipeline: options.pipeline } : {}),
    ...(options.state !== undefined ? { state: options.state } : {}),
    ...(options.run !== undefined ? { runId: options.run } : {}),
  };
}

/** The jobs of `--stack`'s backend, or of every stack in the project's store without one; and the project's root. */
async function jobListing(options: Common & ListOptions, limit: number | undefined): Promise<{ listing: JobListing; root: string }> {
  const request = { filter: listFilter(options), ...(limit !== undefined ? { limit } : {}) };
  if (options.stack !== undefined) {
    const { config, stack } = await loadProject({ cwd: process.cwd(), configPath: options.config, stackName: options.stack });
    const session = await openBackendSession(config, stack, { readonly: true });
    try {
      return { listing: await session.backend.listJobs(request), root: config.root };
    } finally {
      session.close();
    }
  }
  const { config, state } = await readState(options);
  try {
    return { listing: listRecords(state, request), root: config.root };
  } finally {
    state.close();
  }
}

export async function listCommand(options: Common & ListOptions): Promise<number> {
  if (options.all && options.limit !== undefined) throw new KaosError("USAGE", "--limit and --all are exclusive: give one of them");
  // Scripts reading --json get every job unless they ask for fewer; people get a page.
  const limit = options.limit ?? (options.all || options.json ? undefined : LIST_PAGE);
  const { listing, root } = await jobListing(options, limit);
  if (options.json) {
    printJson(listing.kind === "records" ? listing.jobs.map(listJson) : listing.jobs);
    return EXIT.ok;
  }
  if (listing.jobs.length === 0) {
    const filtered = Object.keys(listFilter(options)).length > 0;
    process.stdout.write(
      filtered
        ? "no jobs match\n"
        : listing.kind === "records"
          ? "no jobs yet: run `kaos up`\n"
          : `no jobs on stack ${listing.stack} yet: run \`kaos up --stack ${listing.stack}\`\n`,
    );
    return EXIT.ok;
  }
  if (listing.kind === "remote") {
    const rows = listing.jobs.map((job) => [
      displayText(listing.shortId(job.id)),
      displayText(job.pipeline),
      displayText(job.stage),
      displayText(job.state),
      displayText(job.startedAt ?? ""),
      paramsText(job.params),
    ]);
    process.stdout.write(`${table([["ID", "PIPELINE", "STAGE", "STATE", "STARTED", "PARAMS"], ...rows])}\n`);
    return EXIT.ok;
  }
  const { jobs } = listing;
  const c = colors();
  const paint = (s: string) =>
    s === "succeeded" ? c.green(s) : s === "failed" ? c.red(s) : s === "running" ? c.cyan(s) : s === "cancelled" ? c.yellow(s) : c.dim(s);
  const metrics = listedMetrics(stateDirOf(root), jobs);
  const metricNames = new Set(metrics.names.values());
  // One metric for every pipeline listed: its name heads the column; else each cell names its metric.
  const [onlyMetric] = metricNames.size === 1 ? [...metricNames] : [];
  const rows = jobs.map((job) => {
    const value = metrics.values.get(job.id);
    const name = metrics.names.get(job.pipeline);
    return [
      job.id,
      displayText(job.pipeline),
      job.stage,
      listing.abandoned.has(job.id)
        ? `${paint(job.state)} ${c.dim("(kaos gone)")}`
        : job.collectedAt === null
          ? paint(job.state)
          : `${paint(job.state)} ${c.dim("(collected)")}`,
      job.sweepSize !== null && job.sweepIndex !== null ? `${job.sweepIndex + 1}/${job.sweepSize}` : "",
      job.startedAt ? job.startedAt.replace("T", " ").slice(0, 19) : "",
      duration(job),
      ...(metricNames.size === 0
        ? []
        : [value === undefined ? "" : onlyMetric !== undefined ? metricCell(value) : `${displayText(name!)}=${metricCell(value)}`]),
      paramsText(job.params),
    ];
  });
  const metricHeader = metricNames.size === 0 ? [] : [onlyMetric !== undefined ? displayText(onlyMetric) : "METRIC"];
  process.stdout.write(
    `${table([["ID", "PIPELINE", "STAGE", "STATE", "N/N", "STARTED", "DURATION", ...metricHeader, "PARAMS"], ...rows])}\n`,
  );
  if (listing.total !== undefined) {
    const more = listing.total - jobs.length;
    if (more > 0) {
      process.stdout.write(c.dim(`${more} more; --limit N shows more, --all every one\n`));
    }
  }
  return EXIT.ok;
}

async function writeOut(data: Uint8Array | string): Promise<void> {
  if (!process.stdout.write(data)) await once(process.stdout, "drain");
}

/**
 * The backend a job command asks: `--stack`'s, or without it the default
 * stack's, which looks the job up in the project's store whichever local
 * stack ran it.
 */
async function jobSession(options: Common & { stack?: string }): Promise<Session> {
  if (options.stack !== undefined) {
    const { config, stack } = await loadProject({ cwd: process.cwd(), configPath: options.config, stackName: options.stack });
    return openBackendSession(config, stack, { readonly: true });
  }
  const { config, state } = await readState(options);
  state.close();
  return openBackendSession(config, await loadStack(config, undefined), { readonly: true });
}

/**
 * `kaos train logs`. Without `-f` it prints the log and exits 0 whatever the
 * job's state, as `docker logs`, `kubectl logs` and `pachctl logs` do. With
 * `-f` it follows the job to its end and exits as it ended, as `kubectl wait`
 * and `gh run watch --exit-status` do: 0 when it succeeded, else 1 with a line
 * on stderr saying how it ended.
 */
export async function logsCommand(options: Common & { job: string; follow?: boolean; stack?: string }): Promise<number> {
  const session = await jobSession(options);
  const follow = options.follow ?? false;
  let end: LogEnd | undefined;
  try {
    for await (const output of session.backend.jobLogs({ job: options.job, follow })) {
      if (output.kind === "chunk") await writeOut(output.data);
      else if (output.kind === "line")
        await writeOut(`${output.time ?? ""} ${output.user ? "user  " : "worker"} | ${output.message.replace(/\n$/, "")}\n`);
      else if (output.kind === "end") end = output;
      else process.stderr.write(`${output.message}\n`);
    }
  } finally {
    session.close();
  }
  if (!follow || end?.state === "succeeded") return EXIT.ok;
  process.stderr.write(`${followedEndText(end, options)}\n`);
  return EXIT.failure;
}

/** `job ID failed: exited with code 3; `kaos train info ID` says more`: how a followed job that did not succeed ended. */
function followedEndText(end: LogEnd | undefined, options: { job: string; stack?: string }): string {
  const job = end?.job ?? options.job;
  const how =
    end === undefined
      ? "did not say how it ended"
      : end.state === "failed"
        ? "failed"
        : end.state === "cancelled"
          ? "was cancelled"
          : `was interrupted while ${end.state}`;
  const why = end?.reason ?? (end?.exitCode != null ? `exited with code ${end.exitCode}` : undefined);
  // Job ids and stack names are plain words: the command needs no quoting.
  const info = `kaos train info ${displayText(job)}${options.stack !== undefined ? ` --stack ${options.stack}` : ""}`;
  return `job ${displayText(job)} ${how}${why === undefined ? "" : `: ${displayLine(why)}`}; \`${info}\` says more`;
}

/** `metrics/eval.json: "hist": a list; expected ...`: one skipped file or value, for people. */
function skippedText(skip: SkippedMetric): string {
  return `${displayText(skip.file)}: ${skip.key !== undefined ? `${displayText(skip.key)}: ` : ""}${displayLine(skip.reason)}`;
}

function metricText(value: MetricValue): string {
  return typeof value === "string" ? displayText(value) : typeof value === "number" ? metricNumberText(value) : String(value);
}

/**
 * The pipeline a sweep command is about: the one named, or else the config's
 * only one. `naming` is how the command takes a pipeline's name, for the hint.
 */
async function pickPipeline(config: ResolvedConfig, name: string | undefined, naming: (pipeline: string) => string): Promise<string> {
  const names = config.pipelines.map((p) => p.name);
  if (names.length === 0 && !existsSync(config.file)) {
    // A project of `kaos train deploy` alone: its jobs come from no config.
    throw new KaosError("USAGE", `no ${CONFIG_NAMES_TEXT} in ${config.root}, so no pipeline has a sweep to show`, {
      hint: "jobs of `kaos train deploy` are shown with `kaos train info JOB`, each with the other jobs of its run",
    });
  }
  if (name !== undefined) {
    if (names.includes(name)) return name;
    const { similarName } = await import("../core/suggest.js");
    const meant = similarName(name, names);
    throw new KaosError(
      "USAGE",
      `no pipeline ${quoteText(name)} in ${config.file}; ${meant === undefined ? "" : `did you mean ${quoteText(meant)}? `}expected one of: ${names.map(displayText).join(", ") || "(none)"}`,
    );
  }
  if (names.length === 1) return names[0]!;
  if (names.length === 0) {
    throw new KaosError("USAGE", `${config.file} names no pipeline, so there is no sweep to show`, {
      hint: "jobs of `kaos train deploy` are shown with `kaos train info JOB`",
    });
  }
  throw new KaosError("USAGE", `${config.file} has ${names.length} pipelines; name one: ${names.map(displayText).join(", ")}`, {
    hint: `for example \`${naming(displayText(names[0]!))}\``,
  });
}

/** The sweep ranked by `-s METRIC` (with `--asc` lowest first), or as the grid lists it; a metric no row has is refused. */
async function rankedRows<Row extends { metrics: Record<string, MetricValue> }>(
  rows: readonly Row[],
  sort: string | undefined,
  ascending: boolean | undefined,
  flag = "-s",
): Promise<Row[]> {
  if (sort === undefined) return [...rows];
  const { numericMetricNames, rankSweep } = await engine();
  const sortable = numericMetricNames(rows);
  if (rows.length > 0 && !sortable.includes(sort)) {
    const found = rows.map((row) => row.metrics[sort]).find((value) => value !== undefined);
    const why =
      found === undefined
        ? `no job of this sweep has a numeric metric ${quoteText(sort)}`
        : `${quoteText(sort)} is a ${typeof found}, not a number, in every job of this sweep that has it`;
    throw new KaosError(
      "USAGE",
      `${flag} ${displayText(sort)}: ${why}; expected one of: ${sortable.map(displayText).join(", ") || "(none recorded)"}`,
    );
  }
  return rankSweep(rows, sort, { ascending });
}

/** A sweep's rows as JSON: exact values, pending rows with a null id. */
async function sweepRowsJson(rows: readonly SweepRow[]): Promise<SweepRowJson[]> {
  const { sweepRowJson } = await engine();
  return rows.map(sweepRowJson);
}

/** The sweep table: id, state, the metrics (the ranked one first), then the params. */
function sweepTable(rows: readonly SweepRow[], metricNames: readonly string[], options: { sort?: string; highlight?: string }): string {
  const c = colors();
  const shown = options.sort ? [options.sort, ...metricNames.filter((name) => name !== options.sort)] : [...metricNames];
  return table([
    ["ID", "STATE", ...shown.map(displayText), "PARAMS"],
    ...rows.map((row) => [
      row.jobId === undefined ? "-" : row.jobId === options.highlight ? c.bold(row.jobId) : row.jobId,
      row.state,
      ...shown.map((name) => metricCell(row.metrics[name])),
      paramsText(row.params) || "{}",
    ]),
  ]);
}

function metricCell(value: MetricValue | undefined): string {
  return typeof value === "number" ? metricNumberText(value) : "-";
}

/** `--asc` turns the order of `-s` round: alone it would be ignored. */
function checkSortOrder(options: { sort?: string; asc?: boolean }): void {
  if (options.asc && options.sort === undefined) throw new KaosError("USAGE", "--asc goes with -s/--sort METRIC");
}

export async function infoCommand(
  options: Common & { job?: string; sort?: string; asc?: boolean; pipeline?: string; json?: boolean; stack?: string },
): Promise<number> {
  checkSortOrder(options);
  if (options.job !== undefined && options.pipeline !== undefined) {
    throw new KaosError("USAGE", "--pipeline names the sweep to show without a job; a job is shown with its own pipeline's sweep");
  }
  const session = await jobSession(options);
  try {
    if (options.job === undefined) {
      const pipeline = await pickPipeline(session.config, options.pipeline, (name) => `kaos train info --pipeline ${name}`);
      const sweep = await session.backend.sweep({ pipeline, command: "kaos train info" });
      const rows = await rankedRows(sweep.rows, options.sort, options.asc);
      if (options.json) {
        printJson({ pipeline, sortedBy: options.sort ?? null, ascending: options.asc === true, sweep: await sweepRowsJson(rows) });
        return EXIT.ok;
      }
      const header = `sweep of ${displayText(pipeline)} (${rows.length} combinations${options.sort ? `, by ${displayText(options.sort)}${options.asc ? " ascending" : ""}` : ""})`;
      process.stdout.write(`${colors().bold(header)}\n${sweepTable(rows, sweep.metricNames, { sort: options.sort })}\n`);
      return EXIT.ok;
    }
    const info = await session.backend.jobInfo({ job: options.job });
    if (info.kind === "remote") {
      printRemoteInfo(info, options.json);
      return EXIT.ok;
    }
    const { numericMetricNames } = await engine();
    const sortable = numericMetricNames(info.sweep.rows);
    await printRecordedInfo(info, { rows: await rankedRows(info.sweep.rows, options.sort, options.asc), sortable }, options);
    return EXIT.ok;
  } finally {
    session.close();
  }
}

/** `train info JOB` of a job that ran outside kaos: what its backend reports. */
function printRemoteInfo(info: RemoteJobInfo, json: boolean | undefined): void {
  const { job } = info;
  if (json) {
    printJson({ ...job, stack: info.stack, outputs: info.outputs ?? null });
    return;
  }
  const lines = [
    `${colors().bold(`job ${displayText(info.shortId(job.id))}`)}  ${displayText(job.pipeline)} ${job.stage}  ${displayText(job.state)}    stack ${displayText(info.stack)}`,
    `started   ${job.startedAt ?? "-"}    finished ${job.finishedAt ?? "-"}`,
    `id        ${displayText(job.id)}`,
    `params    ${paramsText(job.params) || "{}"}`,
    `outputs   ${info.outputs === undefined ? "-" : displayText(info.outputs)}`,
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

/** `train info JOB` of a job its backend recorded: inputs, packages, metrics, results, and its sweep ranked as asked. */
async function printRecordedInfo(
  info: RecordedJobInfo,
  sweep: { rows: SweepRow[]; sortable: string[] },
  options: { sort?: string; asc?: boolean; json?: boolean },
): Promise<void> {
  const { job, metrics, series, outputDir } = info;
  const members = sweep.rows;
  const untrusted = info.results?.problem;
  const results = info.results?.check;
  const packages = info.packages?.names;
  const sweepNote = info.sweep.note;
  if (options.json) {
    printJson({
      ...listJson(job),
      keys: { env: job.envKey, source: job.sourceKey, data: job.dataKey, params: job.paramsKey, job: job.key },
      reason: job.reason,
      packages: packages ?? null,
      metrics: metrics.values,
      metricsSkipped: metrics.skipped,
      series,
      outputDir,
      results: results === undefined ? null : { ...results, problem: untrusted ?? null },
      sweep: await sweepRowsJson(members),
    });
    return;
  }
  const c = colors();
  const listed = (packages ?? []).slice(0, 3).map(displayText).join(", ") + ((packages?.length ?? 0) > 3 ? ", ..." : "");
  const packagesText =
    job.envKey === null
      ? "-"
      : info.packages === undefined
        ? "unknown (the environment is gone, or was built before kaos recorded its packages)"
        : info.packages.names.length === 0
          ? "0"
          : `${info.packages.names.length} (${listed}; all in ${displayText(info.packages.file)})`;
  const metricLines = Object.entries(metrics.values).map(([key, value]) => {
    const steps = Object.hasOwn(series, key) ? series[key] : undefined;
    const progress =
      steps === undefined ? "" : c.dim(`  (series: last step ${steps.lastStep}, ${steps.points} point${steps.points === 1 ? "" : "s"})`);
    return `  ${displayText(key)}  ${metricText(value)}${progress}`;
  });
  if (metricLines.length === 0 && metrics.skipped.length === 0)
    metricLines.push(
      job.stage === "train"
        ? "  (none: the job wrote no OUT/metrics/*.json)"
        : `  (none: ${job.stage === "ingest" ? "an" : "a"} ${job.stage} job has no metrics)`,
    );
  for (const skip of metrics.skipped) metricLines.push(`  ${c.yellow("skipped")} ${skippedText(skip)}`);
  const lines = [
    `${c.bold(`job ${job.id}`)}  ${displayText(job.pipeline)} ${job.stage}  ${job.state}${
      info.abandoned ? " (the kaos that ran it is gone; the next kaos up reruns it)" : job.reason ? ` (${displayLine(job.reason)})` : ""
    }`,
    `started   ${job.startedAt ?? "-"}    finished ${job.finishedAt ?? "-"}    duration ${duration(job) || "-"}    exit code ${job.exitCode ?? "-"}`,
    "",
    c.bold("inputs"),
    `  env     ${job.envKey ?? "-"}`,
    `  source  ${job.sourceKey ?? "-"}`,
    `  data    ${job.dataKey ?? "-"}`,
    `  params  ${job.paramsKey ?? "-"}  ${paramsText(job.params) || "{}"}`,
    `  job key ${job.key}`,
    `  packages ${packagesText}`,
    "",
    c.bold("metrics"),
    ...metricLines,
    "",
    `${job.stage === "build" ? "env    " : job.stage === "ingest" ? "data   " : "outputs"}   ${displayText(outputDir)}`,
  ];
  if (job.collectedAt !== null) lines.push(`results   collected by kaos gc at ${job.collectedAt}: its folder was removed`);
  else if (untrusted !== undefined) lines.push(c.red(`results   CHANGED: ${untrusted}`));
  else if (results?.sealed) lines.push(`results   intact: as the job left them (sealed ${results.sealedAt})`);
  else if (results !== undefined)
    lines.push(`results   not sealed: ${job.state === "running" || job.state === "queued" ? "the job has not ended" : results.reason}`);
  if (members.length > 1 || (members.length === 1 && members[0]!.jobId !== job.id)) {
    const by = options.sort ? `, by ${displayText(options.sort)}${options.asc ? " ascending" : ""}` : "";
    lines.push("", c.bold(`sweep (${members.length} ${sweepNote === undefined ? "combinations" : "jobs"}${by})`));
    if (sweepNote !== undefined) lines.push(c.dim(`  ${displayLine(sweepNote)}`));
    else if (!members.some((member) => member.jobId === job.id)) {
      lines.push(c.dim(`  job ${job.id} is not part of it: its inputs or params are no longer what the config names`));
    }
    lines.push(sweepTable(members, sweep.sortable, { sort: options.sort, highlight: job.id }).replace(/^/gm, "  "));
  }
  process.stdout.write(`${lines.join("\n")}\n`);
}

/** `train compare`: the current sweep of a pipeline as a table of its params and metrics. */
export async function compareCommand(
  options: Common & { pipeline?: string; sort?: string; asc?: boolean; json?: boolean; stack?: string },
): Promise<number> {
  checkSortOrder(options);
  const session = await jobSession(options);
  try {
    const pipeline = await pickPipeline(session.config, options.pipeline, (name) => `kaos train compare ${name}`);
    const sweep = await session.backend.sweep({ pipeline, command: "kaos train compare" });
    const rows = await rankedRows(sweep.rows, options.sort, options.asc);
    if (options.json) {
      printJson({ pipeline, sortedBy: options.sort ?? null, ascending: options.asc === true, sweep: await sweepRowsJson(rows) });
      return EXIT.ok;
    }
    const c = colors();
    const paramNames = [...new Set(rows.flatMap((row) => Object.keys(row.params)))];
    const metricNames = options.sort ? [options.sort, ...sweep.metricNames.filter((name) => name !== options.sort)] : sweep.metricNames;
    const counts = new Map<string, number>();
    for (const row of rows) counts.set(row.state, (counts.get(row.state) ?? 0) + 1);
    const by = options.sort ? `, by ${displayText(options.sort)}${options.asc ? " ascending" : ""}` : "";
    const summary = [...counts].map(([state, count]) => `${count} ${state}`).join(", ");
    const lines = [
      c.bold(`sweep of ${displayText(pipeline)}: ${rows.length} combinations (${summary || "none"})${by}`),
      table([
        [
          ...paramNames.map(displayText),
          // A metric may share its name with a param (a script that logs its own params).
          ...metricNames.map((name) => (paramNames.includes(name) ? `${displayText(name)} (metric)` : displayText(name))),
          "STATE",
          "ID",
        ],
        ...rows.map((row) => [
          ...paramNames.map((name) => (Object.hasOwn(row.params, name) ? paramValueText(row.params[name]) : "-")),
          ...metricNames.map((name) => metricCell(row.metrics[name])),
          row.state,
          row.jobId ?? "-",
        ]),
      ]),
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
    return EXIT.ok;
  } finally {
    session.close();
  }
}

/** `train get --best METRIC`: the id of the succeeded job of the current sweep that ranks first by the metric. */
async function bestJob(session: Session, options: { best: string; asc?: boolean; pipeline?: string }): Promise<string> {
  const pipeline = await pickPipeline(
    session.config,
    options.pipeline,
    (name) => `kaos train get --best ${displayText(options.best)}${options.asc ? " --asc" : ""} --pipeline ${name}`,
  );
  const sweep = await session.backend.sweep({ pipeline, command: "kaos train get --best" });
  const { bestOfSweep } = await engine();
  const best = bestOfSweep(sweep.rows, options.best, { ascending: options.asc });
  const succeeded = sweep.rows.filter((row) => row.state === "succeeded");
  if (best?.jobId === undefined) {
    const recorded = [
      ...new Set(succeeded.flatMap((row) => Object.keys(row.metrics).filter((name) => typeof row.metrics[name] === "number"))),
    ].sort();
    throw new KaosError(
      "USAGE",
      succeeded.length === 0
        ? `--best ${displayText(options.best)}: no job of pipeline ${displayText(pipeline)}'s sweep has succeeded yet (${sweep.rows.length} combinations)`
        : `--best ${displayText(options.best)}: none of the ${succeeded.length} succeeded jobs of pipeline ${displayText(pipeline)}'s sweep has a numeric metric ${quoteText(options.best)}; expected one of: ${recorded.map(displayText).join(", ") || "(none recorded)"}`,
      { hint: `\`kaos train compare ${displayText(pipeline)}\` shows the sweep and its metrics` },
    );
  }
  return best.jobId;
}

export async function getCommand(
  options: Common & {
    job?: string;
    best?: string;
    asc?: boolean;
    pipeline?: string;
    stack?: string;
    out?: string;
    code?: boolean;
    params?: boolean;
    force?: boolean;
  },
): Promise<number> {
  if ((options.job === undefined) === (options.best === undefined)) {
    throw new KaosError(
      "USAGE",
      options.job === undefined ? "expected a job id, or --best METRIC" : "a job id and --best are exclusive: give one of them",
    );
  }
  if (options.best === undefined && (options.asc || options.pipeline !== undefined)) {
    throw new KaosError("USAGE", `${options.asc ? "--asc" : "--pipeline"} goes with --best METRIC`);
  }
  const session = await jobSession(options);
  try {
    const job =
      options.best !== undefined
        ? await bestJob(session, { best: options.best, asc: options.asc, pipeline: options.pipeline })
        : options.job!;
    const fetched = await session.backend.fetchOutputs({
      job,
      outDir: options.out,
      code: options.code === true,
      params: options.params === true,
      force: options.force === true,
    });
    for (const note of fetched.notes) process.stderr.write(`${note}\n`);
    process.stdout.write(`copied job ${fetched.id} to ${fetched.destination}\n`);
    return EXIT.ok;
  } finally {
    session.close();
  }
}

export async function killCommand(options: Common & { job: string; stack?: string }): Promise<number> {
  const session = await jobSession(options);
  try {
    const { id } = await session.backend.killJob({ job: options.job });
    process.stdout.write(`cancelled job ${id}\n`);
    return EXIT.ok;
  } finally {
    session.close();
  }
}

/**
 * Breaks a stack's writer lock whose holder kaos cannot judge (it ran on
 * another machine or in another container), and settles that run's jobs.
 */
export async function uiCommand(options: Common & { port: number; host: string; token?: string; open?: boolean }): Promise<number> {
  if (options.token !== undefined && options.token.length < 8) {
    throw new KaosError("USAGE", `--token: expected at least 8 characters, found ${options.token.length}`, {
      hint: "leave --token out on another host and kaos makes up a strong one",
    });
  }
  const { startUiServer } = await import("../ui/server.js");
  // A config that does not load right now (mid-edit beside `kaos watch`) still has a project to show;
  // the sweeps say what is wrong with it.
  const configFile = options.config !== undefined ? resolve(options.config) : findConfigOfState(process.cwd());
  if (configFile !== undefined && !existsSync(configFile)) {
    throw new KaosError("CONFIG_NOT_FOUND", `-c ${options.config}: no such file ${configFile}`);
  }
  let root: string;
  if (configFile !== undefined) root = dirname(configFile);
  else {
    // A project of `kaos train deploy` alone: no config, its state in ./.kaos.
    const { config, state } = await readState(options);
    state.close();
    root = config.root;
  }
  const ui = await startUiServer({
    root,
    configFile,
    host: options.host,
    port: options.port,
    token: options.token,
  });
  process.stdout.write(`kaos ui: ${ui.url}\n`);
  if (options.open) openInBrowser(ui.url);
  await new Promise<void>((resolve) => {
    const stopListening = onStopRequest(() => {
      stopListening();
      resolve();
    });
  });
  await ui.close();
  return EXIT.ok;
}

/** Best effort: without a desktop the printed address is there to open by hand. */
function openInBrowser(url: string): void {
  const opener = process.platform === "darwin" ? "open" : process.platform === "win32" ? "explorer" : "xdg-open";
  import("node:child_process")
    .then(({ spawn }) =>
      spawn(opener, [url], { stdio: "ignore", detached: true })
        .on("error", () => {})
        .unref(),
    )
    .catch(() => {});
}

export async function unlockCommand(options: Common & { stack?: string; json?: boolean }): Promise<number> {
  const { config, stack } = await loadProject({ cwd: process.cwd(), configPath: options.config, stackName: options.stack });
  const state = StateStore.open(config.root);
  try {
    const { holder, interrupted, cancelled, lock } = state.breakLock(stack.name, "unlock");
    // The holder ran elsewhere and is now known to have stopped: what it was writing in `.kaos/` goes too, unless
    // a kaos of the same origin still holds another stack (it may be that one's).
    const stillHolding = holder?.origin == null ? [] : state.stacksLockedFrom(holder.origin);
    const staleOrigin =
      holder?.liveness === "unknown" && holder.origin !== null && stillHolding.length === 0 ? originTag(holder.origin) : undefined;
    let removedElsewhere: string[] = [];
    try {
      // What its jobs left running here would otherwise run on beside their reruns: the next up sees them settled already.
      // Jobs `kaos train kill` cancelled once the holder was gone ran unwatched until then: their data views are checked too.
      const unwatched = [...interrupted, ...cancelled];
      if (unwatched.length > 0 || staleOrigin !== undefined) {
        const { createBackend } = await engine();
        const runner = (await createBackend({ config, stack, state })).runner;
        removedElsewhere =
          (await runner?.recoverAfterCrash(unwatched, staleOrigin === undefined ? {} : { staleOrigin }))?.removedElsewhere ?? [];
      }
    } finally {
      lock.release();
    }
    const stateDir = stateDirOf(config.root);
    const temporaries = removedElsewhere.map((path) => relative(stateDir, path));
    if (options.json) {
      printJson({
        stack: stack.name,
        holder:
          holder === undefined ? null : { pid: holder.pid, host: holder.host, command: holder.command, acquiredAt: holder.acquiredAt },
        interrupted: interrupted.map((job) => job.id),
        removedTemporaries: temporaries,
      });
      return EXIT.ok;
    }
    const who =
      holder === undefined
        ? "no kaos held it"
        : `it was held by pid ${holder.pid} on host ${holder.host} (\`${holder.command}\`, since ${holder.acquiredAt})`;
    process.stdout.write(`unlocked stack ${stack.name}: ${who}\n`);
    if (interrupted.length > 0)
      process.stdout.write(
        `${interrupted.length} unfinished job${interrupted.length === 1 ? "" : "s"} of that run marked interrupted; the next \`kaos up\` runs them again\n`,
      );
    if (temporaries.length > 0)
      process.stdout.write(
        `removed ${temporaries.length} unfinished temporar${temporaries.length === 1 ? "y" : "ies"} it left in ${displayText(stateDir)}: ${temporaries.map(displayText).join(" ")}\n`,
      );
    else if (holder?.liveness === "unknown" && stillHolding.length > 0)
      process.stdout.write(
        `kept what it may be writing in ${displayText(stateDir)}: a kaos from the same machine still holds stack${stillHolding.length === 1 ? "" : "s"} ${stillHolding.join(", ")}\n`,
      );
    return EXIT.ok;
  } finally {
    state.close();
  }
}

/**
 * `kaos monitor`: the file system monitor of `kaos watch` without the runs,
 * for `kaos plan` and `kaos up` to read changes from instead of walking the
 * bundles. Serves until Ctrl-C or SIGTERM.
 */
export async function monitorCommand(options: Common): Promise<number> {
  // The project's place is all it needs: a config being edited into shape still has its plans served.
  const configFile = options.config !== undefined ? resolve(options.config) : findConfig(process.cwd());
  if (configFile === undefined || !existsSync(configFile)) {
    throw new KaosError(
      "CONFIG_NOT_FOUND",
      options.config !== undefined
        ? `--config ${options.config}: no such file: ${configFile}`
        : `no ${CONFIG_NAMES_TEXT} found in ${process.cwd()} or any parent directory`,
      { hint: "run kaos monitor in the project whose plans it is to serve, or pass --config PATH" },
    );
  }
  const stateDir = stateDirOf(dirname(configFile));
  try {
    mkdirSync(stateDir, { recursive: true });
  } catch (error) {
    throw new KaosError("IO", `cannot create ${stateDir}: ${describeError(error)}`, {
      hint: "check that the project directory is writable",
    });
  }
  const { setupReporter, startMonitor } = await engine();
  const started = await startMonitor(
    stateDir,
    setupReporter(process.cwd(), (line) => process.stderr.write(`${displayLine(line)}\n`)),
  );
  if (started.server === undefined) {
    throw new KaosError("NOT_SUPPORTED", `the file system monitor cannot start: ${started.reason}`, {
      hint: "plans already read changes from the monitor that serves it; otherwise stop that process first",
    });
  }
  const server = started.server;
  await new Promise<void>((resolve) => {
    const stopListening = onStopRequest(() => {
      stopListening();
      resolve();
    });
    process.stderr.write(`file system monitor ready: plans read changes from ${displayText(server.socketPath)}; Ctrl-C stops\n`);
  });
  await server.close();
  return EXIT.ok;
}

export async function renderCommand(options: Common & { stack: string; out: string }): Promise<number> {
  const { config, stack } = await loadProject({ cwd: process.cwd(), configPath: options.config, stackName: options.stack });
  // Rendering reads the project but records nothing: it works from a read-only store.
  const session = await openBackendSession(config, stack, { readonly: true });
  try {
    const outDir = destinationDir(options.out, { flag: "-o", expected: "a directory" });
    const { files, removed, kept } = await session.backend.render({ outDir });
    const lines = [
      ...files.map((file) => join(file).replace(`${outDir}/`, "")),
      ...removed.map((file) => `removed ${file}`),
      `wrote ${plural(files.length, "file")} to ${outDir}${removed.length > 0 ? `; removed ${removed.length} an earlier render wrote that this config no longer makes` : ""}`,
    ];
    process.stdout.write(`${lines.join("\n")}\n`);
    for (const { path, why } of kept) {
      process.stderr.write(
        `warning: kept ${displayText(path)}: an earlier render wrote it and this one does not, but ${why}; remove it if it is not wanted\n`,
      );
    }
    return EXIT.ok;
  } finally {
    session.close();
  }
}
