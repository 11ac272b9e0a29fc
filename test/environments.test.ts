/**
 * Environments as provenance: each build records its packages (`pip freeze`
 * beside the environment), `kaos train info` shows them, and a
 * `requirements.lock` pins them. Real venvs and pip, offline: the packages are
 * wheels made here and installed from a directory of the source bundle.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { TRAIN_SCRIPT } from "./helpers/jobs.js";
import { makeProject, runKaos, runKaosOk, trivialSourceBundle, under, type Project } from "./helpers/rig.js";

const projects: Project[] = [];
afterAll(() =>
  projects.forEach((project) => {
    project.remove();
  }),
);

/** A pure-Python wheel `name-version` requiring `requires`, written into `dir`. */
function makeWheel(dir: string, name: string, version: string, requires: string[] = []): void {
  const script = `
import sys, zipfile
name, version, dest, *requires = sys.argv[1:]
info = f"{name}-{version}.dist-info"
files = {
    f"{name}/__init__.py": f"VERSION = {version!r}\\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n" + "".join(f"Requires-Dist: {r}\\n" for r in requires),
    f"{info}/WHEEL": "Wheel-Version: 1.0\\nGenerator: kaos-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
}
files[f"{info}/RECORD"] = "".join(f"{path},,\\n" for path in files) + f"{info}/RECORD,,\\n"
with zipfile.ZipFile(f"{dest}/{name}-{version}-py3-none-any.whl", "w") as wheel:
    for path, content in files.items():
        wheel.writestr(path, content)
`;
  execFileSync("python3", ["-c", script, name, version, dir, ...requires]);
}

const OFFLINE = "--no-index\n--find-links wheels\n";

/** A project whose source bundle carries wheels of `kaostiny` 1.0 (needing `kaosmissing`, which no index has) and 1.1. */
function project(files: { requirements: string; lock?: string }): Project {
  const made = makeProject(
    {
      "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", data: "data" } } });\n`,
      "data/value.txt": "v1",
      ...under("src", trivialSourceBundle(TRAIN_SCRIPT, { requirements: files.requirements })),
      ...(files.lock === undefined ? {} : { "src/model/requirements.lock": files.lock }),
      "src/model/wheels/.keep": "",
    },
    "kaos-env-",
  );
  makeWheel(made.path("src/model/wheels"), "kaostiny", "1.0", ["kaosmissing"]);
  makeWheel(made.path("src/model/wheels"), "kaostiny", "1.1");
  projects.push(made);
  return made;
}

function kaos(made: Project, ...args: string[]) {
  return runKaosOk(args, { cwd: made.dir });
}

interface Info {
  keys: { env: string };
  packages: string[] | null;
}

async function trainInfo(made: Project): Promise<Info> {
  const jobs = JSON.parse((await kaos(made, "train", "list", "--json")).stdout) as { id: string; stage: string }[];
  const train = jobs.find((job) => job.stage === "train")!;
  return JSON.parse((await kaos(made, "train", "info", train.id, "--json")).stdout) as Info;
}

/** Plans and runs `made` after an edit that must rebuild its environment, and returns the new one's job info. */
async function rebuilt(made: Project, before: Info): Promise<Info> {
  const plan = JSON.parse((await kaos(made, "plan", "--json")).stdout) as { pipelines: { stages: { build: { action: string } } }[] };
  expect(plan.pipelines[0]!.stages.build.action).toBe("run");
  await kaos(made, "up");
  const after = await trainInfo(made);
  expect(after.keys.env).not.toBe(before.keys.env);
  return after;
}

describe("environments", () => {
  it("record their packages beside them, and train info shows them", async () => {
    const made = project({ requirements: `${OFFLINE}kaostiny==1.1\n` });
    await kaos(made, "up");
    const info = await trainInfo(made);
    expect(info.packages).toEqual(["kaostiny==1.1"]);
    const freeze = made.path(".kaos", "envs", info.keys.env, "freeze.txt");
    expect(readFileSync(freeze, "utf8")).toContain("kaostiny==1.1");
    const jobs = JSON.parse((await kaos(made, "train", "list", "--json")).stdout) as { id: string; stage: string }[];
    const text = (await kaos(made, "train", "info", jobs.find((job) => job.stage === "train")!.id)).stdout;
    expect(text).toContain(`  packages 1 (kaostiny==1.1; all in ${freeze})`);
    // The build job's result is the environment it made, and it has no metrics to look for.
    const build = jobs.find((job) => job.stage === "build")!;
    const buildText = (await kaos(made, "train", "info", build.id)).stdout;
    expect(buildText).toContain(`env       ${made.path(".kaos", "envs", info.keys.env)}\n`);
    expect(buildText).toContain("(none: a build job has no metrics)");
    expect(buildText).not.toContain("outputs ");
    const buildJson = JSON.parse((await kaos(made, "train", "info", build.id, "--json")).stdout) as { outputDir: string };
    expect(buildJson.outputDir).toBe(made.path(".kaos", "envs", info.keys.env));
  });

  it("are built from requirements.lock alone when there is one (--no-deps), and editing the lock rebuilds", async () => {
    // requirements.txt would take the newest version; the lock pins the older one, whose dependency no index has.
    const made = project({ requirements: `${OFFLINE}kaostiny\n`, lock: `# pip freeze\n${OFFLINE}kaostiny==1.0\n` });
    await kaos(made, "up");
    const first = await trainInfo(made);
    expect(first.packages).toEqual(["kaostiny==1.0"]);

    writeFileSync(made.path("src/model/requirements.lock"), `${OFFLINE}kaostiny==1.1\n`);
    const second = await rebuilt(made, first);
    expect(second.packages).toEqual(["kaostiny==1.1"]);
  });

  it("are built again when a requirements file that requirements.txt includes (-r, -c) changes", async () => {
    const made = project({ requirements: `${OFFLINE}-r base.txt\n` });
    made.write({ "src/model/base.txt": "-c pins/constraints.txt\nkaostiny\n", "src/model/pins/constraints.txt": "kaostiny==1.0\n" });
    makeWheel(made.path("src/model/wheels"), "kaosmissing", "1.0");
    await kaos(made, "up");
    const first = await trainInfo(made);
    expect(first.packages).toEqual(["kaosmissing==1.0", "kaostiny==1.0"]);

    // Nested includes are relative to the file that names them, as pip reads them.
    writeFileSync(made.path("src/model/pins/constraints.txt"), "kaostiny==1.1\n");
    const second = await rebuilt(made, first);
    expect(second.packages).toEqual(["kaostiny==1.1"]);
  });

  it("refuse a requirements file that includes a missing one, naming the file and line, before anything runs", async () => {
    const made = project({ requirements: `${OFFLINE}-r base.txt\n` });
    made.write({ "src/model/base.txt": "kaostiny\n--constraint=pins.txt\n" });
    const result = await runKaos(["up"], { cwd: made.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `error: ${made.path("src/model/base.txt")}:2: "--constraint=pins.txt" names ${made.path("src/model/pins.txt")}, which is not a file`,
    );
    expect(existsSync(made.path(".kaos"))).toBe(false);
  });

  it("refuse a lock that disagrees with requirements.txt (a package it lacks, another exact version), before anything runs", async () => {
    const made = project({
      requirements: `${OFFLINE}-r base.txt\n-c pins.txt\nkaostiny[extra] ; python_version < "3"\n`,
      lock: `${OFFLINE}kaostiny==1.1\n`,
    });
    // A constraints file names what may be installed, not what must: only -r files are required.
    made.write({ "src/model/base.txt": "# ours\nKaosTiny >=1.0\nkaosmissing\n", "src/model/pins.txt": "other==2.0\n" });
    const lacks = await runKaos(["up"], { cwd: made.dir });
    expect(lacks.code).toBe(1);
    expect(lacks.stderr).toContain(
      `error: ${made.path("src/model/base.txt")}:3: kaosmissing is not pinned in ${made.path("src/model/requirements.lock")}; the environment is built from the lock alone, so it would lack it`,
    );
    expect(lacks.stderr).toContain(`hint: update the lock from an environment made from requirements.txt: python -m pip freeze >`);

    writeFileSync(made.path("src/model/base.txt"), "kaostiny==1.0.0\n");
    const other = await runKaos(["plan"], { cwd: made.dir });
    expect(other.code).toBe(1);
    expect(other.stderr).toContain(
      `error: ${made.path("src/model/base.txt")}:1: "kaostiny==1.0.0" asks for another version than ${made.path("src/model/requirements.lock")}:3 pins (kaostiny==1.1)`,
    );
    expect(existsSync(made.path(".kaos"))).toBe(false);

    // The same version written differently agrees.
    writeFileSync(made.path("src/model/base.txt"), "kaostiny==1.1.0\n");
    await kaos(made, "up");
    expect((await trainInfo(made)).packages).toEqual(["kaostiny==1.1"]);
  });

  it("refuse a lock line that is not a pin, naming the file and line, before anything runs", async () => {
    const made = project({ requirements: `${OFFLINE}kaostiny\n`, lock: `${OFFLINE}kaostiny>=1.0\n` });
    const result = await runKaos(["up"], { cwd: made.dir });
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `error: ${made.path("src/model/requirements.lock")}:3: "kaostiny>=1.0" is not a pinned package; expected name==version (as \`pip freeze\` writes)`,
    );
    expect(result.stderr).toContain("hint: write the lock from a working environment: python -m pip freeze >");
    expect(existsSync(made.path(".kaos"))).toBe(false);
    writeFileSync(made.path("src/model/requirements.lock"), "kaostiny==1.0\nKaosTiny==1.1\n");
    const twice = await runKaos(["plan"], { cwd: made.dir });
    expect(twice.stderr).toContain("requirements.lock:2: KaosTiny is pinned twice (first at line 1)");
  });
});

describe("the interpreter's version", () => {
  /** A project and, inside it, a pyenv whose shim counts in `asked` how often it is asked for a version. */
  function pyenvProject(): { made: Project; shim: string; asked: () => number } {
    const made = makeProject(
      {
        "kaos.config.ts": `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", data: "data" } } });\n`,
        "data/value.txt": "v1",
        ...under("src", trivialSourceBundle(TRAIN_SCRIPT)),
        "pyenv/version": "3.11.7\n",
        "pyenv/versions/3.11.7/bin/python3": { content: "3.11.7", mode: 0o755 },
        "pyenv/versions/3.12.1/bin/python3": { content: "3.12.1", mode: 0o755 },
      },
      "kaos-pyenv-",
    );
    projects.push(made);
    const root = made.path("pyenv");
    made.write({
      "pyenv/shims/python3": {
        content: `#!/usr/bin/env bash\nset -e\nprogram="\${0##*/}"\n\nexport PYENV_ROOT="${root}"\nexec "${root}/libexec/pyenv" exec "$program" "$@"\n`,
        mode: 0o755,
      },
      // pyenv's choice: PYENV_VERSION, else the nearest .python-version, else the global version file.
      "pyenv/libexec/pyenv": {
        content: `#!/bin/sh
echo asked >> "$PYENV_ROOT/asked"
dir="$PWD"; file="$PYENV_ROOT/version"
while [ "$dir" != "/" ]; do if [ -f "$dir/.python-version" ]; then file="$dir/.python-version"; break; fi; dir=$(dirname "$dir"); done
version="\${PYENV_VERSION:-$(cat "$file")}"
echo "$version"; echo "$PYENV_ROOT/versions/$version/bin/python3"
`,
        mode: 0o755,
      },
    });
    const asked = () => (existsSync(join(root, "asked")) ? readFileSync(join(root, "asked"), "utf8").split("\n").length - 1 : 0);
    return { made, shim: made.path("pyenv/shims/python3"), asked };
  }

  async function buildKey(made: Project, python: string): Promise<string> {
    const result = await runKaos(["plan", "--json"], { cwd: made.dir, env: { KAOS_PYTHON: python } });
    expect(result.code, result.stderr).toBe(0);
    const plan = JSON.parse(result.stdout) as { pipelines: { stages: { build: { key: string } } }[] };
    return plan.pipelines[0]!.stages.build.key;
  }

  it("is asked once per interpreter, and again when pyenv would choose another or it changed", async () => {
    const { made, shim, asked } = pyenvProject();
    const first = await buildKey(made, shim);
    expect(asked()).toBe(1);
    expect(await buildKey(made, shim)).toBe(first);
    expect(asked()).toBe(1);

    made.write({ ".python-version": "3.12.1\n" });
    const other = await buildKey(made, shim);
    expect(asked()).toBe(2);
    expect(other).not.toBe(first);
    expect(await buildKey(made, shim)).toBe(other);
    expect(asked()).toBe(2);

    // The interpreter pyenv chose was rebuilt in place: it is asked again.
    made.write({ "pyenv/versions/3.12.1/bin/python3": "3.12.1, rebuilt" });
    expect(await buildKey(made, shim)).toBe(other);
    expect(asked()).toBe(3);
  });

  it("is asked every time of a script that chooses its interpreter in its own way", async () => {
    const { made, asked } = pyenvProject();
    const counter = made.path("pyenv/asked");
    made.write({
      "wrapper/python3": {
        content: `#!/bin/sh\necho asked >> "${counter}"\necho 3.11.7\necho "${made.path("pyenv/versions/3.11.7/bin/python3")}"\n`,
        mode: 0o755,
      },
    });
    const first = await buildKey(made, made.path("wrapper/python3"));
    expect(await buildKey(made, made.path("wrapper/python3"))).toBe(first);
    expect(asked()).toBe(2);
  });
});
