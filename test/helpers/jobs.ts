/**
 * A small training project for end-to-end tests: a Python train script whose
 * behaviour the params steer (sleep, exit code, memory use, output lines), and
 * that appends `start|end <job id> <params> <time>` to $KAOS_TEST_LOG so tests
 * can observe concurrency.
 */
import { readFileSync } from "node:fs";
import { afterAll } from "vitest";
import { type FileMap, makeProject, type Project, trivialSourceBundle, under } from "./rig.js";

export const TRAIN_SCRIPT = `#!/usr/bin/env python3
import json, os, sys, time
out = sys.argv[1]
params = json.load(open(os.environ["KAOS_PARAMS_FILE"]))
log = os.environ.get("KAOS_TEST_LOG")
def mark(what):
    if log:
        with open(log, "a") as f:
            f.write(f"{what} {os.environ['KAOS_JOB_ID']} {json.dumps(params, sort_keys=True)} {time.time()}\\n")
if os.environ.get("KAOS_TEST_PIDS"):
    with open(os.path.join(os.environ["KAOS_TEST_PIDS"], os.environ["KAOS_JOB_ID"]), "w") as f:
        f.write(str(os.getpid()))
mark("start")
print("params", json.dumps(params, sort_keys=True), flush=True)
for i in range(params.get("lines", 0)):
    print(f"line {i}", flush=True)
    time.sleep(params.get("line_delay", 0.1))
time.sleep(params.get("sleep", 0))
data = open(os.path.join(os.environ["KAOS_DATA_DIR"], "value.txt")).read()
if params.get("mem"):
    hog = b"x" * (params["mem"] * 1024 * 1024)
    time.sleep(3)
os.makedirs(os.path.join(out, "metrics"), exist_ok=True)
with open(os.path.join(out, "metrics", "m.json"), "w") as f:
    json.dump({"score": params.get("score", 0), "data": data}, f)
with open(os.path.join(out, "data.txt"), "w") as f:
    f.write(data)
print("environment", os.environ["KAOS_PIPELINE"], os.getcwd(), file=sys.stderr, flush=True)
mark("end")
sys.exit(params.get("exit", 0))
`;

export interface TrainingProjectOptions {
  grid?: Record<string, unknown>;
  resources?: Record<string, unknown>;
  parallelism?: number;
  requirements?: string;
  value?: string;
  extra?: FileMap;
}

export function trainingProject(options: TrainingProjectOptions = {}): FileMap {
  const pipeline = {
    source: "src",
    data: "data",
    hyperparams: "grid.json",
    ...(options.resources ? { resources: options.resources } : {}),
    ...(options.parallelism ? { parallelism: options.parallelism } : {}),
  };
  return {
    "kaos.config.ts": `import { defineConfig } from "kaos-ml";\n\nexport default defineConfig({\n  pipelines: {\n    p: ${JSON.stringify(pipeline)},\n  },\n});\n`,
    "grid.json": JSON.stringify(options.grid ?? {}),
    "data/value.txt": options.value ?? "v1",
    ...under("src", trivialSourceBundle(TRAIN_SCRIPT, { requirements: options.requirements ?? "# no requirements\n" })),
    ...options.extra,
  };
}

/** Makes `trainingProject`s in temporary folders, each removed once the test file is done. */
export function trainingProjects(): (options?: TrainingProjectOptions) => Project {
  const made: Project[] = [];
  afterAll(() => {
    for (const project of made) project.remove();
  });
  return (options = {}) => {
    const project = makeProject(trainingProject(options));
    made.push(project);
    return project;
  };
}

export interface ListedJob {
  id: string;
  pipeline: string;
  stage: "ingest" | "build" | "train";
  state: string;
  params: Record<string, unknown>;
  startedAt: string | null;
  finishedAt: string | null;
  exitCode: number | null;
}

export interface Mark {
  what: "start" | "end";
  job: string;
  params: string;
  time: number;
}

export function readMarks(file: string): Mark[] {
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return [];
  }
  return text
    .trim()
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [what, job, ...rest] = line.split(" ");
      const time = Number(rest.pop());
      return { what: what as Mark["what"], job: job!, params: rest.join(" "), time };
    });
}

/** The most jobs that were running at the same time. */
export function maxConcurrency(marks: Mark[]): number {
  const events = marks
    .map((mark) => ({ time: mark.time, delta: mark.what === "start" ? 1 : -1 }))
    .sort((a, b) => a.time - b.time || a.delta - b.delta);
  let current = 0;
  let max = 0;
  for (const event of events) {
    current += event.delta;
    max = Math.max(max, current);
  }
  return max;
}

/** A train job of `pipeline` in run `runId` as a test records it straight into the store (`StateStore.createJob`), with no inputs or log. */
export function trainJobFields(pipeline: string, runId: string) {
  return {
    runId,
    stack: "local",
    pipeline,
    stage: "train" as const,
    key: pipeline,
    params: {},
    envKey: null,
    sourceKey: null,
    dataKey: null,
    paramsKey: null,
    sweepIndex: 0,
    sweepSize: 1,
    outputDir: null,
    logFile: null,
  };
}
