/**
 * The command line. Every command is a thin layer over the shared flow
 * (load config, hash, plan, execute, record); modules load lazily so that
 * `kaos --help` starts as fast as Node itself.
 *
 * Expected failures arrive here as KaosError and become a message and an exit
 * status in exactly one place: `run` below.
 */
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { Argument, Command, CommanderError, InvalidArgumentError, Option } from "commander";
import type * as commands from "./commands.js";
import type { DeployCliOptions } from "./commands.js";
import type * as templates from "./templates.js";
import type * as storage from "./storage.js";

/** A command's options as commander parses them: the command's own, less the global --config and a positional job. */
type OptionsOf<F extends (options: never) => unknown> = Omit<Parameters<F>[0], "config" | "job">;
import type { DynamicKind, Shell } from "./completion.js";
import { findConfig, kaosVersion, monitorSocketOf, stateDirOf } from "../core/layout.js";
import { keepYoungGenerationsSmall } from "../core/heap.js";
import { MAX_DEBOUNCE_MS } from "../core/defaults.js";
import { EXIT } from "./exit.js";
import { exitQuietlyOnClosedOutput, outputClosed, writeLastOnStdout } from "./pipes.js";

/** Set by commands that finish without throwing but must not exit 0. */
let exitStatus: number = EXIT.ok;
function setExitStatus(status: number): void {
  exitStatus = Math.max(exitStatus, status);
}

function positiveNumber(flag: string) {
  return (value: string): number => {
    const number = Number(value);
    if (!Number.isFinite(number) || number <= 0) throw new InvalidArgumentError(`${flag}: expected a positive number, found "${value}"`);
    return number;
  };
}

function wholeNumber(flag: string, min: number, max?: { value: number; what: string }) {
  return (value: string): number => {
    // Digits only: Number() reads "" and " " as 0 (an unset shell variable), and takes "0x10" and "1e3".
    const number = /^\d+$/.test(value) ? Number(value) : Number.NaN;
    if (!Number.isSafeInteger(number) || number < min) {
      throw new InvalidArgumentError(`${flag}: expected a whole number, ${min} or more, found "${value}"`);
    }
    if (max !== undefined && number > max.value) {
      throw new InvalidArgumentError(`${flag}: expected at most ${max.value} (${max.what}), found "${value}"`);
    }
    return number;
  };
}

interface GlobalOptions {
  config?: string;
}

function globals(command: Command): GlobalOptions {
  return command.optsWithGlobals<GlobalOptions>();
}

/**
 * Starts what is slow to get going, the hashing threads and the Python probe,
 * before the command's own modules load and the config is read, so that both
 * overlap that work. They come with the engine's modules, which the command
 * loads next anyway: one module, not three, keeps the built code in fewer files.
 */
async function warmUp(configPath: string | undefined): Promise<void> {
  const { startHashWorkers, startHashWorkersFor, prefetchPython, largestStatCache } = await import("./engine-modules.js");
  const config = configPath !== undefined ? resolve(configPath) : findConfig(process.cwd());
  const projectRoot = config === undefined ? undefined : dirname(config);
  const stateDir = projectRoot === undefined ? undefined : stateDirOf(projectRoot);
  // Only a first run has every file to hash. Later ones find most files in the
  // stat cache: small trees are then walked without a thread, and a large one
  // has its threads started now, unless a file system monitor may spare it the walk.
  if (projectRoot === undefined || stateDir === undefined || !existsSync(stateDir)) startHashWorkers();
  else if (!existsSync(monitorSocketOf(stateDir))) {
    startHashWorkersFor(largestStatCache(projectRoot));
  }
  if (stateDir !== undefined) prefetchPython(stateDir);
}

function stackOption(): Option {
  return new Option("--stack <name>", "stack file stacks/NAME.ts to use (default: the local backend)");
}

/** The top-level commands, so that a start can tell which one it runs before defining them. */
const COMMAND_NAMES: ReadonlySet<string> = new Set([
  "up",
  "plan",
  "watch",
  "train",
  "template",
  "render",
  "monitor",
  "unlock",
  "ui",
  "du",
  "gc",
  "completion",
  "__complete",
]);

/**
 * The command line; with `argv`, only the command it names, when it names one
 * first: defining every command and option is a good part of a start, and the
 * one run parses, checks and shows its help alone the same way. Anything else
 * (help, an unknown or misspelled command, a global option first) defines all.
 */
function buildProgram(argv?: readonly string[]): Command {
  const first = argv?.[2];
  const only = first !== undefined && COMMAND_NAMES.has(first) ? first : undefined;
  const wanted = (name: string): boolean => only === undefined || only === name;
  const program = new Command("kaos")
    .description("Machine-learning training as pipeline-as-code: source bundle + data bundle (+ hyperparameters) = trained model.")
    .version(kaosVersion(), "-V, --version", "print the version")
    .option("-c, --config <path>", "config file (default: kaos.config.ts, .mts, .cts, .js, .mjs or .cjs in this directory or a parent)")
    .showHelpAfterError("(run with --help for usage)")
    .configureHelp({ sortSubcommands: false, showGlobalOptions: true })
    .exitOverride();

  if (wanted("up")) {
    program
      .command("up")
      .description("hash every bundle, plan against what was applied, and run only what changed")
      .addOption(stackOption())
      .option("--force", "rerun every stage and job even when an identical one succeeded")
      .option(
        "--refresh",
        "re-check the remote content of manifests; on a kubernetes stack, also re-read from the cluster what kaos applied (Pulumi's refresh), so what went missing is created again",
      )
      .option("--json", "print the result as JSON")
      .action(async (options: OptionsOf<typeof commands.upCommand>, command: Command) => {
        await warmUp(globals(command).config);
        const { upCommand } = await import("./commands.js");
        setExitStatus(await upCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("plan")) {
    program
      .command("plan")
      .description("show what `kaos up` would run, and why, without running it")
      .addOption(stackOption())
      .option(
        "--refresh",
        "re-check the remote content of manifests; on a kubernetes stack, also re-read from the cluster what kaos applied (Pulumi's refresh), so what went missing is created again",
      )
      .option("--json", "print the plan as JSON")
      .option("--detailed-exitcode", "exit 2 when anything would run, 0 when nothing would, 1 on error")
      .action(async (options: OptionsOf<typeof commands.planCommand>, command: Command) => {
        await warmUp(globals(command).config);
        const { planCommand } = await import("./commands.js");
        setExitStatus(await planCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("watch")) {
    program
      .command("watch")
      .description("run `kaos up`, then rerun it whenever a bundle, manifest, hyperparams, config or stack file changes")
      .addOption(stackOption())
      .option(
        "--debounce <ms>",
        "quiet time after the last edit before rerunning (default: the config's watch.debounceMs or 200)",
        wholeNumber("--debounce", 0, { value: MAX_DEBOUNCE_MS, what: "milliseconds, about 24 days" }),
      )
      .addOption(
        new Option("--on-change <mode>", "an edit during a run: restart the affected jobs, or queue one rerun").choices([
          "restart",
          "queue",
        ]),
      )
      .option("--poll", "poll for changes instead of using file system events (network file systems)")
      // No commander default: given without --poll, it is refused rather than ignored.
      .option("--poll-interval <ms>", "polling interval with --poll (default: 500)", wholeNumber("--poll-interval", 10))
      .option("--force", "rerun everything on the first run")
      .action(async (options: OptionsOf<typeof commands.watchCommand>, command: Command) => {
        await warmUp(globals(command).config);
        const { watchCommand } = await import("./commands.js");
        setExitStatus(await watchCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("train")) {
    const train = program.command("train").description("run, inspect and manage training jobs");

    train
      .command("deploy")
      .description("train a source bundle on data without a config file (the imperative form)")
      .helpOption("--help", "display help for command")
      .requiredOption("-s, --source <dir>", "source bundle directory (Dockerfile and model/)")
      .option("-d, --data <dir>", "data bundle directory")
      .option("-m, --manifest <path>", "data manifest file or directory")
      .option("-h, --hyperparams <file>", "hyperparameter grid (JSON)")
      .option("--cpu <n>", "cores per job", positiveNumber("--cpu"))
      .option("--memory <size>", "memory per job, such as 512M or 2Gi")
      .option("--gpu <n>", "GPUs per job", wholeNumber("--gpu", 0))
      .option("-p, --parallelism <n>", "jobs running at once", wholeNumber("--parallelism", 1))
      .option("-n, --name <name>", "pipeline name", "deploy")
      .option("--force", "rerun even when an identical job succeeded")
      .option("--json", "print the result as JSON")
      .action(async (options: DeployCliOptions, command: Command) => {
        const { deployCommand } = await import("./commands.js");
        setExitStatus(await deployCommand({ ...globals(command), ...options }));
      });

    train
      .command("list")
      .description("list jobs, newest first (50 unless --limit or --all), with each pipeline's leading metric")
      .addOption(stackOption())
      .option("--json", "print the jobs as JSON (every one unless --limit)")
      .option("--limit <n>", "at most this many jobs", wholeNumber("--limit", 1))
      .option("--all", "every job")
      .option("--pipeline <name>", "only this pipeline's jobs")
      .addOption(
        new Option("--state <state>", "only jobs in this state").choices(["queued", "running", "succeeded", "failed", "cancelled"]),
      )
      .option("--run <id>", "only the jobs of this run (the id `kaos up` prints)")
      .action(async (options: OptionsOf<typeof commands.listCommand>, command: Command) => {
        const { listCommand } = await import("./commands.js");
        setExitStatus(await listCommand({ ...globals(command), ...options }));
      });

    train
      .command("logs")
      .description("print a job's timestamped output")
      .argument("<job>", "job id or an unambiguous prefix")
      .addOption(stackOption())
      .option("-f, --follow", "keep printing while the job runs, then exit as it ended (0 when it succeeded, else 1)")
      .action(async (job: string, options: OptionsOf<typeof commands.logsCommand>, command: Command) => {
        const { logsCommand } = await import("./commands.js");
        setExitStatus(await logsCommand({ ...globals(command), ...options, job }));
      });

    train
      .command("info")
      .description(
        "show a job's inputs, params and metrics, and its pipeline's sweep (every combination of the grid now), ranked by a metric",
      )
      .argument("[job]", "job id or an unambiguous prefix (without it: the sweep alone)")
      .addOption(stackOption())
      .option("-s, --sort <metric>", "rank the sweep by this metric (highest first)")
      .option("--asc", "with -s: lowest first (a loss)")
      .option("--pipeline <name>", "without a job: the pipeline whose sweep to show (needed when there are several)")
      .option("--json", "print the information as JSON")
      .action(async (job: string | undefined, options: OptionsOf<typeof commands.infoCommand>, command: Command) => {
        const { infoCommand } = await import("./commands.js");
        setExitStatus(await infoCommand({ ...globals(command), ...options, job }));
      });

    train
      .command("compare")
      .description(
        "show a pipeline's sweep (every combination of its grid now, with the job last recorded for it) as a table of params and metrics",
      )
      .argument("[pipeline]", "the pipeline (default: the config's only one)")
      .addOption(stackOption())
      .option("-s, --sort <metric>", "rank by this metric (highest first)")
      .option("--asc", "with -s: lowest first (a loss)")
      .option("--json", "print the sweep as JSON")
      .action(async (pipeline: string | undefined, options: OptionsOf<typeof commands.compareCommand>, command: Command) => {
        const { compareCommand } = await import("./commands.js");
        setExitStatus(await compareCommand({ ...globals(command), ...options, pipeline }));
      });

    train
      .command("get")
      .description("copy a job's outputs (and optionally its code and params) to a directory; --best picks the best job of a sweep")
      .argument("[job]", "job id or an unambiguous prefix")
      .option("--best <metric>", "instead of a job: the succeeded job of the current sweep highest by this metric")
      .option("--asc", "with --best: lowest first (a loss)")
      .option("--pipeline <name>", "with --best: the pipeline whose sweep (default: the config's only one)")
      .addOption(stackOption())
      .option("-o, --out <dir>", "destination directory (default: ./<job id>)")
      .option("--code", "also copy the source snapshot the job ran")
      .option("--params", "also write the job's params.json")
      .option(
        "--force",
        "copy anyway results that changed after the job ended (they cannot be trusted), or what a job that has not ended has written so far",
      )
      .action(async (job: string | undefined, options: OptionsOf<typeof commands.getCommand>, command: Command) => {
        const { getCommand } = await import("./commands.js");
        setExitStatus(await getCommand({ ...globals(command), ...options, job }));
      });

    train
      .command("kill")
      .description("stop a running job and its children; it is recorded as cancelled")
      .argument("<job>", "job id or an unambiguous prefix")
      .addOption(stackOption())
      .action(async (job: string, options: OptionsOf<typeof commands.killCommand>, command: Command) => {
        const { killCommand } = await import("./commands.js");
        setExitStatus(await killCommand({ ...globals(command), ...options, job }));
      });
  }

  if (wanted("template")) {
    const template = program.command("template").description("example projects to start from");

    template
      .command("list")
      .description("list the templates")
      .option("--json", "print the templates as JSON")
      .action(async (options: Parameters<typeof templates.templateListCommand>[0]) => {
        const { templateListCommand } = await import("./templates.js");
        setExitStatus(await templateListCommand(options));
      });

    template
      .command("get")
      .description("copy a template into a directory: a new one, or one without the template's files")
      .requiredOption("--name <name>", "template name (see `kaos template list`)")
      .option("-o, --out <dir>", "destination directory (default: ./<name>)")
      .action(async (options: Parameters<typeof templates.templateGetCommand>[0]) => {
        const { templateGetCommand } = await import("./templates.js");
        setExitStatus(await templateGetCommand(options));
      });
  }

  if (wanted("render")) {
    program
      .command("render")
      .description("write the Pachyderm pipeline specs and Kubernetes manifests of a stack, offline")
      .requiredOption("--stack <name>", "a kubernetes stack file stacks/NAME.ts")
      .requiredOption("-o, --out <dir>", "directory to write into")
      .action(async (options: OptionsOf<typeof commands.renderCommand>, command: Command) => {
        const { renderCommand } = await import("./commands.js");
        setExitStatus(await renderCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("monitor")) {
    program
      .command("monitor")
      .description(
        "serve the file system monitor alone (as `kaos watch` does), so that `kaos plan` and `kaos up` need not walk the bundles",
      )
      .action(async (_options: unknown, command: Command) => {
        const { monitorCommand } = await import("./commands.js");
        setExitStatus(await monitorCommand(globals(command)));
      });
  }

  if (wanted("unlock")) {
    program
      .command("unlock")
      .description("break a stack's lock left by a kaos that ran on another machine or in another container and no longer runs")
      .addOption(stackOption())
      .option("--json", "print the result as JSON")
      .action(async (options: OptionsOf<typeof commands.unlockCommand>, command: Command) => {
        const { unlockCommand } = await import("./commands.js");
        setExitStatus(await unlockCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("ui")) {
    program
      .command("ui")
      .description("serve a local web dashboard of runs, sweeps, jobs and logs, updated live")
      .option("--port <n>", "port to listen on (0 picks a free one)", wholeNumber("--port", 0), 7070)
      .option("--host <address>", "address to bind; any but loopback requires the access token", "127.0.0.1")
      .option("--token <token>", "access token to require (made up and printed when the host is not loopback)")
      .option("--open", "open the dashboard in the default browser")
      .action(async (options: OptionsOf<typeof commands.uiCommand>, command: Command) => {
        const { uiCommand } = await import("./commands.js");
        setExitStatus(await uiCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("du")) {
    program
      .command("du")
      .description("show what .kaos/ holds, by kind and by pipeline, and the free space of its disk")
      .option("--json", "print the usage as JSON")
      .action(async (options: OptionsOf<typeof storage.duCommand>, command: Command) => {
        const { duCommand } = await import("./storage.js");
        setExitStatus(await duCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("gc")) {
    program
      .command("gc")
      .description("remove what no stack's next `kaos up` reuses and nothing asks to keep (a dry run unless --yes)")
      .option("--dry-run", "only tell what would be removed (the default)")
      .option("--yes", "remove it")
      .option("--keep-runs <n>", "keep everything of the last N runs that ran a job", wholeNumber("--keep-runs", 0), 1)
      .option("--keep-best <k>", "keep the best K succeeded jobs of each sweep by --metric", wholeNumber("--keep-best", 1))
      .option("--metric <name>", "the metric --keep-best ranks by (highest first)")
      .option("--asc", "with --keep-best: lowest first (a loss)")
      .option("--json", "print the result as JSON")
      .action(async (options: OptionsOf<typeof storage.gcCommand>, command: Command) => {
        const { gcCommand } = await import("./storage.js");
        setExitStatus(await gcCommand({ ...globals(command), ...options }));
      });
  }

  if (wanted("completion")) {
    program
      .command("completion")
      .description("print a completion script for bash, zsh or fish (see the README to load it)")
      .addArgument(new Argument("<shell>", "the shell").choices(["bash", "zsh", "fish"]))
      .action(async (shell: Shell) => {
        const { completionScript } = await import("./completion.js");
        process.stdout.write(completionScript(shell, buildProgram()));
      });

    // Asked by the completion scripts on Tab: stack names, job ids, template or pipeline names, one a line.
  }
  if (wanted("__complete")) {
    program
      .command("__complete", { hidden: true })
      .addArgument(new Argument("<kind>").choices(["stacks", "jobs", "templates", "pipelines"]))
      .action(async (kind: DynamicKind, _options: unknown, command: Command) => {
        const { dynamicValues } = await import("./completion.js");
        const values = await dynamicValues(kind, globals(command).config).catch(() => []);
        process.stdout.write(values.map((value) => `${value}\n`).join(""));
      });
  }

  return program;
}

/**
 * Turns any failure into a message on stderr and an exit status; under --json
 * also into one JSON object on stdout (`failureJson`), unless the command had
 * printed its result already: stdout then holds that one value, and the exit
 * status and stderr tell the failure. A reader of stdout gone before that
 * object misses it, and the failure's status stands.
 */
async function reportFailure(error: unknown, json: boolean): Promise<number> {
  const usage = error instanceof CommanderError;
  // Commander already printed its message (or the help/version text).
  if (usage && (error.code === "commander.helpDisplayed" || error.code === "commander.version" || error.code === "commander.help")) {
    return EXIT.ok;
  }
  if (usage && error.exitCode === 0) return EXIT.ok;
  const [{ colors, jsonResultPrinted, jsonText }, { failureJson, failureLines }] = await Promise.all([
    import("./output.js"),
    import("./exit.js"),
  ]);
  if (!usage) for (const line of failureLines(error, colors(process.stderr))) process.stderr.write(`${line}\n`);
  if (json && !jsonResultPrinted()) writeLastOnStdout(jsonText(failureJson(error, EXIT.failure)));
  return EXIT.failure;
}

/**
 * Whether the command line gives `--json` to a command that takes it, read
 * from its words: a command line commander refuses is not parsed to its end
 * (`--limit 0 --json` stops at `--limit`), yet it asked for JSON.
 */
function asksForJson(program: Command, words: readonly string[]): boolean {
  const commands = [program];
  let json = false;
  for (let index = 0; index < words.length; index++) {
    const word = words[index] ?? "";
    if (word === "--") break;
    if (word === "--json") {
      json = true;
    } else if (word.startsWith("-")) {
      // The value of an option is neither an option nor a command (`--pipeline up`).
      const option = commands.flatMap((command) => command.options).find((known) => known.long === word || known.short === word);
      const next = words[index + 1];
      if (option !== undefined && (option.required || (option.optional && next !== undefined && !next.startsWith("-")))) index++;
    } else {
      const subcommand = commands.at(-1)?.commands.find((command) => command.name() === word || command.aliases().includes(word));
      if (subcommand !== undefined) commands.push(subcommand);
    }
  }
  return json && (commands.at(-1)?.options.some((option) => option.long === "--json") ?? false);
}

/**
 * What often has little to do (a no-op `up` or `plan` is every CI step's fixed
 * cost) or nothing heavy at all (help, the version): the commands size the heap
 * for heavy work once they meet it.
 */
const OFTEN_LIGHT_STARTS: ReadonlySet<string | undefined> = new Set([undefined, "up", "plan", "--help", "-h", "--version", "-V"]);

async function run(argv: string[]): Promise<number> {
  exitStatus = EXIT.ok;
  if (!OFTEN_LIGHT_STARTS.has(argv[2])) keepYoungGenerationsSmall();
  // Once commander has parsed the command line, the options it found say whether JSON was asked for;
  // a command line it refused is read word by word, and only then.
  let json: boolean | undefined;
  let program: Command | undefined;
  try {
    program = buildProgram(argv);
    program.hook("preAction", (_program, action) => {
      json = action.opts<{ json?: boolean }>().json === true;
    });
    await program.parseAsync(argv);
    return exitStatus;
  } catch (error) {
    return reportFailure(error, json ?? (program !== undefined && asksForJson(program, argv.slice(2))));
  }
}

exitQuietlyOnClosedOutput();
const status = await run(process.argv);
// Leave stdout to drain on its own; process.exit could cut off piped output.
process.exitCode = outputClosed() ? EXIT.brokenPipe : status;
