/**
 * The one data flow every command stands on: load config, hash bundles, plan
 * against state, execute the plan on a backend, record results. `up`, `plan`,
 * `watch` and `train deploy` are thin layers over these functions.
 */
import { validateSourceBundle } from "./bundle.js";
import type { Backend, BackendFactory, CheckedManifests, ExecuteResult, JobRunner } from "./backend.js";
import { KaosError, describeError, errnoCode } from "./errors.js";
import { checkFileUrls, readLock, scanManifest, type ManifestEntries, type ManifestLock } from "./manifest.js";
import { buildPlan, type Plan, type PlanOracle } from "./plan.js";
import type { SweepInputs } from "./sweep.js";
import type { Reporter } from "./events.js";
import { StateStore } from "./state.js";
import type { ResolvedConfig, ResolvedStack } from "./types.js";
import { fileUrlScopeOf } from "./urls.js";
import { stateDirOf } from "./layout.js";
import { saveConfigCache } from "./config-cache.js";

export interface Session {
  config: ResolvedConfig;
  stack: ResolvedStack;
  state: StateStore;
  backend: Backend;
  close(): void;
}

/** A session whose backend runs jobs in this process: what `apply` drives. */
export interface RunnerSession extends Session {
  backend: Backend & { runner: JobRunner };
}

export { loadProject } from "./config.js";
export type { CheckedManifests } from "./backend.js";

/**
 * Checks every input that can be checked without the state store: each source
 * bundle's contract, each manifest and its lock. Commands call it before they
 * open the store, so bad input is reported without creating or touching `.kaos/`.
 * Returns the manifests it read, for the plan that follows to use rather than
 * parse them again.
 */
export function checkInputs(config: ResolvedConfig): CheckedManifests {
  const manifests = new Map<string, { entries: ManifestEntries; lock: ManifestLock | undefined }>();
  for (const pipeline of config.pipelines) {
    validateSourceBundle(pipeline.sourceDir, `pipelines.${pipeline.name}.source`);
    if (pipeline.data.kind === "manifest") {
      const entries = scanManifest(pipeline.data.path);
      checkFileUrls(entries.fileUrls(), fileUrlScopeOf(config));
      manifests.set(pipeline.data.path, { entries, lock: readLock(pipeline.data.path) });
    }
  }
  return manifests;
}

/**
 * Opens the state store and the stack's backend, made by `createBackend`
 * (`backends/index.ts`: core does not know the backends). Read-only for
 * commands that record nothing.
 */
export async function openSession(
  config: ResolvedConfig,
  stack: ResolvedStack,
  createBackend: BackendFactory,
  options: { readonly?: boolean } = {},
): Promise<Session> {
  const state = StateStore.open(config.root, options.readonly ? { readonly: true } : undefined);
  try {
    const backend = await createBackend({ config, stack, state });
    if (options.readonly !== true) saveConfigCache(stateDirOf(config.root));
    return { config, stack, state, backend, close: () => state.close() };
  } catch (error) {
    state.close();
    throw error;
  }
}

/**
 * The env, source and data keys of `pipelines` (default: every pipeline) as
 * their bundles stand now, hashed by the planner itself, so that a sweep
 * (core/sweep.ts) names the very job keys `kaos up` would. Nothing is built,
 * run or written; a read-only store serves.
 */
export async function sweepInputs(
  config: ResolvedConfig,
  stack: ResolvedStack,
  state: StateStore,
  backend: Pick<PlanOracle, "runtime">,
  pipelines?: readonly string[],
): Promise<Map<string, SweepInputs>> {
  // Only the keys are wanted: whether a job is reusable is the sweep's own question.
  const oracle: PlanOracle = {
    runtime: (bundle) => backend.runtime(bundle),
    environmentReady: () => true,
    succeededJob: () => ({ job: undefined }),
  };
  const wanted = pipelines === undefined ? config.pipelines : config.pipelines.filter((p) => pipelines.includes(p.name));
  const planned = await buildPlan({ config: { ...config, pipelines: wanted }, stack, state, oracle });
  return new Map(planned.pipelines.map((p) => [p.pipeline.name, { env: p.keys.env, source: p.keys.source, data: p.keys.data }]));
}

/** The session's backend when it runs jobs in this process; else NOT_SUPPORTED, naming `command`. */
export function runnerSession(session: Session, command: string, hint?: string): RunnerSession {
  const { backend } = session;
  if (backend.runner === undefined) {
    throw new KaosError(
      "NOT_SUPPORTED",
      `stack ${session.stack.name} uses the ${backend.kind} backend; ${command} runs the jobs in this process, which that backend does not`,
      hint !== undefined ? { hint } : undefined,
    );
  }
  return session as RunnerSession;
}

/** kaos's plan against the state store, asking `oracle` what exists. */
export function buildSessionPlan(
  session: Session,
  oracle: PlanOracle,
  options: { force?: boolean | undefined; refresh?: boolean | undefined; manifests?: CheckedManifests | undefined } = {},
): Promise<Plan> {
  return buildPlan({
    config: session.config,
    stack: session.stack,
    state: session.state,
    oracle,
    ...(options.force !== undefined ? { force: options.force } : {}),
    ...(options.refresh !== undefined ? { refresh: options.refresh } : {}),
    ...(options.manifests !== undefined ? { manifests: options.manifests } : {}),
  });
}

/** The backend's plan. */
export function plan(
  session: Session,
  options: { force?: boolean | undefined; refresh?: boolean | undefined; manifests?: CheckedManifests | undefined } = {},
): Promise<Plan> {
  return session.backend.plan(options);
}

export interface ApplyOptions {
  command: string;
  reporter: Reporter;
  signal: AbortSignal;
  force?: boolean;
  refresh?: boolean;
  /** Called once what a crash left is settled, as the plan is being made: until `onPlan`, stopping loses nothing. */
  onPlanning?: () => void;
  /** Called with the plan before anything runs. */
  onPlan?: (plan: Plan) => void;
  /** Set when the caller already holds the stack's writer lock (`kaos watch` holds it for its whole life). */
  locked?: boolean;
  /** What checkInputs read just before; without it the plan reads the manifests itself. */
  manifests?: CheckedManifests;
}

export interface ApplyResult {
  skipped?: false;
  runId: string;
  plan: Plan;
  result: ExecuteResult;
}

/** `onPlan` answered "skip": nothing ran and nothing was recorded. */
export interface SkippedApply {
  skipped: true;
  plan: Plan;
}

/**
 * `kaos up`: takes the stack's writer lock, recovers what a crash left, plans,
 * executes, and records the run. The lock is held for the whole run so two
 * writers never interleave on one stack.
 */
/** A run whose jobs were only cancelled (Ctrl-C, `train kill`, a watch restart) was cancelled, not failed. */
function runState(result: ExecuteResult | undefined): "succeeded" | "failed" | "cancelled" {
  if (result === undefined) return "failed";
  if (result.succeeded) return "succeeded";
  if (result.cancelled) return "cancelled";
  const states = result.pipelines.flatMap((p) => [
    ...Object.values(p.stages).map((stage) => stage.state),
    ...p.jobs.map((job) => job.state),
  ]);
  return states.includes("failed") ? "failed" : states.includes("cancelled") ? "cancelled" : "failed";
}

/** With `skip`, `apply` returns without running or recording anything when it answers true. */
export function apply(
  session: RunnerSession,
  options: ApplyOptions & { skip: (plan: Plan) => boolean },
): Promise<ApplyResult | SkippedApply>;
export function apply(session: RunnerSession, options: ApplyOptions & { skip?: undefined }): Promise<ApplyResult>;
export async function apply(
  session: RunnerSession,
  options: ApplyOptions & { skip?: (plan: Plan) => boolean },
): Promise<ApplyResult | SkippedApply> {
  let lock: { release(): void };
  try {
    lock = options.locked ? { release() {} } : session.state.acquireWriter(session.stack.name, options.command);
  } catch (error) {
    throw diskFullError(error, session.config.root);
  }
  try {
    const { interrupted, cancelled } = session.state.recoverInterrupted();
    const runner = session.backend.runner;
    // Their kaos died without stopping them: stop them before anything reruns,
    // clear what it was writing when it died, and distrust what they wrote unwatched
    // (those `kaos train kill` stopped since, too).
    await runner.recoverAfterCrash([...interrupted, ...cancelled]);
    options.onPlanning?.();
    const current = await buildSessionPlan(session, session.backend, {
      force: options.force,
      refresh: options.refresh,
      manifests: options.manifests,
    });
    runner.checkResources(current);
    if (options.skip?.(current) === true) return { skipped: true, plan: current };
    options.onPlan?.(current);
    const run = session.state.beginRun(session.stack.name, options.command);
    let result: ExecuteResult | undefined;
    let recordError: unknown;
    try {
      result = await runner.execute({
        plan: current,
        runId: run.id,
        reporter: options.reporter,
        signal: options.signal,
        refresh: options.refresh,
      });
    } catch (error) {
      // The run cannot go on (a full disk, most likely): jobs still running would
      // outlive it unrecorded, so they are stopped before the error is told.
      await runner.stopAll("stopped: kaos could not go on with this run");
      throw diskFullError(error, session.config.root);
    } finally {
      recordError = finishRun(session, run.id, result);
    }
    if (recordError !== undefined) throw recordError;
    return { runId: run.id, plan: current, result };
  } finally {
    try {
      lock.release();
    } catch {
      // A lock that could not be given back is taken over by the next kaos: this process is gone by then.
    }
  }
}

/**
 * Records how the run ended. A failure to record it is returned (told as a full
 * disk when it is one) when the run itself got through; after a failed run that
 * failure is the error to tell, and the next kaos up recovers the run.
 */
function finishRun(session: RunnerSession, runId: string, result: ExecuteResult | undefined): unknown {
  try {
    session.state.finishRun(runId, runState(result));
    return undefined;
  } catch (error) {
    return result === undefined ? undefined : diskFullError(error, session.config.root);
  }
}

/**
 * A write that failed because the disk is full, told as such: which disk, and
 * that the next run picks up where this one stopped. Other errors are returned unchanged.
 */
export function diskFullError(error: unknown, root: string): unknown {
  const code = errnoCode(error);
  if (code !== "SQLITE_FULL" && code !== "ENOSPC" && code !== "EDQUOT") return error;
  return new KaosError("IO", `the disk holding ${stateDirOf(root)} is full (${describeError(error)}); kaos could not record this run`, {
    hint: "free some space and run kaos up again: jobs that finished are kept, the others run again",
    cause: error,
  });
}
