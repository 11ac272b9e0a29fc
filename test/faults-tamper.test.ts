import {
  chmodSync,
  existsSync,
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { jobRows } from "./helpers/faults.js";
import { runKaos, trivialSourceBundle, under, type FileMap, type Project } from "./helpers/rig.js";
import { taggedProjects } from "./helpers/tagged-projects.js";

const tagged = taggedProjects("kaos-tamper-");

const CONFIG = `import { defineConfig } from "kaos-ml";\nexport default defineConfig({ pipelines: { p: { source: "src", data: "data", hyperparams: "grid.json" } } });\n`;

/**
 * Every job writes its model; the one with `"a": 2` then writes
 * through `$KAOS_OUTPUT_DIR/../..` into every other job's outputs and source
 * copy, and drops files into `.kaos/` and `.kaos/jobs/`.
 */
const TRAIN = `#!/bin/sh
set -e
mkdir -p "$1/sub"
grep -o '"a":[0-9]*' "$KAOS_PARAMS_FILE" > "$1/model.txt"
echo weights > "$1/sub/weights.bin"
ln -s ../model.txt "$1/sub/model-link"
if grep -q '"a":2' "$KAOS_PARAMS_FILE"; then
  for other in "$1"/../../*/; do
    [ "$other" = "$1/../../$KAOS_JOB_ID/" ] && continue
    [ -d "$other/out" ] || continue
    chmod -R u+w "$other/out" "$other/source" 2>/dev/null || true
    echo tampered > "$other/out/model.txt"
    rm -f "$other/out/sub/weights.bin"
    echo extra > "$other/out/sub/extra.bin"
    echo 'import os' > "$other/source/model/injected.py"
  done
  echo dropped > "$1/../../../dropped.txt"
  mkdir -p "$1/../../not-a-job"
fi
`;

function project(files: FileMap = {}, train = TRAIN): Project {
  return tagged.make({ "kaos.config.ts": CONFIG, "data/value.txt": "v", ...under("src", trivialSourceBundle(train)), ...files });
}

const env = tagged.env;
const kaos = (made: Project, args: string[], extra: Record<string, string> = {}) =>
  runKaos(args, { cwd: made.dir, env: { ...env, ...extra }, timeoutMs: 120_000 });
const trainJobs = (made: Project) => jobRows(made.dir).filter((row) => row.stage === "train");
const jobOf = (made: Project, a: number) =>
  trainJobs(made)
    .filter((row) => JSON.parse(row.params).a === a)
    .at(-1)!;

interface InfoResults {
  sealed: boolean;
  intact?: boolean;
  output?: { added: string[]; changed: string[]; removed: string[] } | null;
  source?: { added: string[]; changed: string[]; removed: string[] } | null;
  problem?: string | null;
}

async function infoResults(made: Project, id: string): Promise<InfoResults> {
  const info = await kaos(made, ["train", "info", id, "--json"]);
  expect(info.code, info.stderr).toBe(0);
  return (JSON.parse(info.stdout) as { results: InfoResults }).results;
}

describe("sealed results", () => {
  it("a later job writing through $KAOS_OUTPUT_DIR/../.. into a finished job, .kaos/ and the source copy: found, refused, not reused", async () => {
    const made = project({ "grid.json": JSON.stringify({ a: [1] }) });
    const first = await kaos(made, ["up"]);
    expect(first.code, first.stderr).toBe(0);
    const victim = jobOf(made, 1);
    expect(victim.state).toBe("succeeded");
    const out = made.path(".kaos", "jobs", victim.id, "out");
    // Finished outputs and the source copy are read-only, and the seal sits outside them.
    for (const path of [
      out,
      join(out, "model.txt"),
      join(out, "sub"),
      join(out, "sub", "weights.bin"),
      made.path(".kaos", "jobs", victim.id, "source", "model", "train"),
    ]) {
      expect(statSync(path).mode & 0o222, path).toBe(0);
    }
    expect(lstatSync(made.path(".kaos", "jobs", victim.id, "seal.json")).mode & 0o222).toBe(0);
    expect(await infoResults(made, victim.id)).toMatchObject({ sealed: true, intact: true, output: null, source: null });

    // A second run adds the tampering job; the first is reused, not rerun.
    writeFileSync(made.path("grid.json"), JSON.stringify({ a: [1, 2] }));
    const second = await kaos(made, ["up"]);
    expect(second.code).toBe(1);
    expect(jobOf(made, 1).id).toBe(victim.id);
    const attacker = jobOf(made, 2);
    expect(attacker.state).toBe("failed");
    expect(attacker.reason).toContain(
      `${made.path(".kaos", "dropped.txt")}, ${made.path(".kaos", "jobs", "not-a-job")} appeared in kaos's state directory while this job ran; a job writes only into KAOS_OUTPUT_DIR`,
    );
    expect(readFileSync(join(out, "model.txt"), "utf8")).toBe("tampered\n");

    const results = await infoResults(made, victim.id);
    expect(results).toMatchObject({
      sealed: true,
      intact: false,
      output: { added: ["sub/extra.bin"], changed: ["model.txt"], removed: ["sub/weights.bin"] },
      source: { added: ["model/injected.py"], changed: [], removed: [] },
    });
    expect(results.problem).toBe(
      `job ${victim.id}'s results changed after it ended (sealed ${(JSON.parse(readFileSync(made.path(".kaos", "jobs", victim.id, "seal.json"), "utf8")) as { sealedAt: string }).sealedAt}): ` +
        "its outputs: 1 changed (model.txt), 1 added (sub/extra.bin), 1 removed (sub/weights.bin); its copy of the source: 1 added (model/injected.py); they are not what the job produced and cannot be trusted",
    );
    const text = await kaos(made, ["train", "info", victim.id]);
    expect(text.stdout).toContain(`results   CHANGED: job ${victim.id}'s results changed after it ended`);

    const get = await kaos(made, ["train", "get", victim.id, "-o", "got"]);
    expect(get.code).toBe(1);
    expect(get.stderr).toContain(`error: job ${victim.id}'s results changed after it ended`);
    expect(get.stderr).toContain("hint: rerun the job (kaos up --force), or pass --force to copy them anyway");
    expect(existsSync(made.path("got"))).toBe(false);
    const forced = await kaos(made, ["train", "get", victim.id, "-o", "got", "--force"]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(forced.stderr).toContain(`warning: job ${victim.id}'s results changed after it ended`);
    expect(readFileSync(made.path("got/out/model.txt"), "utf8")).toBe("tampered\n");

    // The tampered result is not reused: the next run trains that job again, and its new results are whole.
    writeFileSync(made.path("grid.json"), JSON.stringify({ a: [1] }));
    const plan = await kaos(made, ["plan", "--json"]);
    const jobs = (JSON.parse(plan.stdout) as { pipelines: { jobs: { action: string; reason: string }[] }[] }).pipelines[0]!.jobs;
    expect(jobs).toEqual([
      {
        key: expect.any(String),
        params: { a: 1 },
        action: "run",
        reason: expect.stringContaining(`job ${victim.id}'s results changed after it ended`),
      },
    ]);
    const third = await kaos(made, ["up"]);
    expect(third.code, third.stderr).toBe(0);
    const rerun = jobOf(made, 1);
    expect(rerun.id).not.toBe(victim.id);
    expect(await infoResults(made, rerun.id)).toMatchObject({ sealed: true, intact: true });
    const clean = await kaos(made, ["train", "get", rerun.id, "-o", "clean"]);
    expect(clean.code, clean.stderr).toBe(0);
    expect(readFileSync(made.path("clean/out/model.txt"), "utf8")).toBe('"a":1\n');
  }, 120_000);

  it("two jobs of one sweep, the later writing into the earlier's finished outputs: the earlier is recorded failed and trains again next time", async () => {
    const train = `#!/bin/sh
set -e
mkdir -p "$1"
grep -o '"a":[0-9]*' "$KAOS_PARAMS_FILE" > "$1/model.txt"
[ -n "$KAOS_TAMPER" ] || exit 0
for other in "$1"/../../*/; do
  [ -f "$other/seal.json" ] || continue
  chmod u+w "$other/out" "$other/out/model.txt"
  printf 'poisoned' > "$other/out/model.txt"
  chmod +x "$other/out/model.txt"
  ln -s /etc/hostname "$other/out/new-link"
done
`;
    const made = project({ "grid.json": JSON.stringify({ a: [1, 2] }) }, train);
    const first = await kaos(made, ["up"], { KAOS_TAMPER: "1" });
    expect(first.code).toBe(1);
    const rows = trainJobs(made);
    const failed = rows.filter((row) => row.state === "failed");
    expect(failed).toHaveLength(1);
    expect(failed[0]!.reason).toMatch(
      /^its results changed after it ended \(sealed [^)]+\): its outputs: 1 changed \(model\.txt\), 1 added \(new-link\); they are not what the job produced and cannot be trusted; a job of this sweep wrote outside its output directory$/,
    );
    expect(first.stderr + first.stdout).toContain(`job ${failed[0]!.id}'s results changed after it ended`);
    const second = await kaos(made, ["up"]);
    expect(second.code, second.stderr).toBe(0);
    expect(trainJobs(made)).toHaveLength(3);
  }, 120_000);

  it("entries dropped into .kaos/ during a sweep fail the job that dropped each, not the jobs before or after it", async () => {
    const train = `#!/bin/sh
set -e
mkdir -p "$1"
a=$(grep -o '"a":[0-9]*' "$KAOS_PARAMS_FILE" | cut -d: -f2)
echo "$a" > "$1/model.txt"
[ -n "$KAOS_DROP" ] || exit 0
case "$a" in
  2) echo dropped > "$1/../../../dropped-2.txt" ;;
  4) mkdir "$1/../../not-a-job-4" ;;
esac
`;
    // One job at a time, so that no other job ran while an entry appeared.
    const made = project({ "grid.json": JSON.stringify({ a: [1, 2, 3, 4, 5] }) }, train);
    const result = await kaos(made, ["up"], { KAOS_DROP: "1" });
    expect(result.code).toBe(1);
    const reasonOf = (a: number) => jobOf(made, a).reason;
    for (const a of [1, 3, 5]) expect(jobOf(made, a).state, `a=${a}: ${reasonOf(a)}`).toBe("succeeded");
    expect(jobOf(made, 2).state).toBe("failed");
    expect(reasonOf(2)).toBe(
      `${made.path(".kaos", "dropped-2.txt")} appeared in kaos's state directory while this job ran; a job writes only into KAOS_OUTPUT_DIR (left there for you to look at)`,
    );
    expect(jobOf(made, 4).state).toBe("failed");
    expect(reasonOf(4)).toBe(
      `${made.path(".kaos", "jobs", "not-a-job-4")} appeared in kaos's state directory while this job ran; a job writes only into KAOS_OUTPUT_DIR (left there for you to look at)`,
    );
    // Left there, they belong to no job of the next sweep, which runs the two failed jobs again, and only those.
    const again = await kaos(made, ["up"]);
    expect(again.code, again.stderr).toBe(0);
    expect(trainJobs(made)).toHaveLength(7);
    for (const a of [1, 2, 3, 4, 5]) expect(jobOf(made, a).state).toBe("succeeded");
  }, 120_000);

  it("results changed by hand after the job ended: a removed file, a file made a link, the output directory replaced", async () => {
    const made = project({ "grid.json": JSON.stringify({ a: [1] }) });
    expect((await kaos(made, ["up"])).code).toBe(0);
    const { id } = jobOf(made, 1);
    const out = made.path(".kaos", "jobs", id, "out");
    chmodSync(join(out, "sub"), 0o755);
    rmSync(join(out, "sub", "weights.bin"));
    symlinkSync("../model.txt", join(out, "sub", "weights.bin"));
    expect(await infoResults(made, id)).toMatchObject({ intact: false, output: { added: [], changed: ["sub/weights.bin"], removed: [] } });
    chmodSync(out, 0o755);
    renameSync(out, `${out}.moved`);
    symlinkSync(`${out}.moved`, out);
    expect(await infoResults(made, id)).toMatchObject({
      intact: false,
      output: { added: ["."], changed: [], removed: ["model.txt", "sub/model-link", "sub/weights.bin"] },
    });
    rmSync(made.path(".kaos", "jobs", id, "seal.json"), { force: true });
    writeFileSync(made.path(".kaos", "jobs", id, "seal.json"), "{not json");
    const results = await infoResults(made, id);
    expect(results.intact).toBe(false);
    expect(results.problem).toMatch(/^job [0-9a-z]+'s results cannot be trusted: its seal .*seal\.json is not a valid seal/);
  }, 60_000);
});

describe("train get and symlinks in outputs", () => {
  it("links are copied as they are; one leading out of the outputs is skipped and named, never rewritten", async () => {
    const train = `#!/bin/sh
set -e
mkdir -p "$1/sub/deeper"
echo model > "$1/model.txt"
echo inner > "$1/sub/deeper/inner.txt"
cd "$1"
ln -s model.txt alias
ln -s sub/deeper/inner.txt down
ln -s ../model.txt sub/up
ln -s .. sub/dirup
ln -s not-there dangling
ln -s ../../../../../../etc/hostname sub/escape
ln -s /etc/hostname absolute
ln -s sub/../../out/model.txt around
ln -s dirup/.. sub/through-link
`;
    const made = project({ "grid.json": "{}" }, train);
    expect((await kaos(made, ["up"])).code).toBe(0);
    const { id } = trainJobs(made)[0]!;
    const get = await kaos(made, ["train", "get", id, "-o", "got"]);
    expect(get.code, get.stderr).toBe(0);
    const out = made.path(".kaos", "jobs", id, "out");
    const skipped = get.stderr
      .split("\n")
      .filter((line) => line.startsWith("skipped "))
      .sort();
    expect(skipped).toEqual([
      `skipped ${join(out, "absolute")}: symlink to /etc/hostname points outside the job's outputs`,
      `skipped ${join(out, "around")}: symlink to sub/../../out/model.txt points outside the job's outputs`,
      `skipped ${join(out, "sub", "escape")}: symlink to ../../../../../../etc/hostname points outside the job's outputs`,
      `skipped ${join(out, "sub", "through-link")}: symlink to dirup/.. points outside the job's outputs`,
    ]);
    const got = made.path("got", "out");
    const links = Object.fromEntries(
      ["alias", "down", "sub/up", "sub/dirup", "dangling"].map((path) => [path, readlinkSync(join(got, path))]),
    );
    expect(links).toEqual({
      alias: "model.txt",
      down: "sub/deeper/inner.txt",
      "sub/up": "../model.txt",
      "sub/dirup": "..",
      dangling: "not-there",
    });
    for (const path of ["absolute", "around", "sub/escape", "sub/through-link"])
      expect(existsSync(join(got, path)) || isLink(join(got, path)), path).toBe(false);
    expect(readFileSync(join(got, "sub/up"), "utf8")).toBe("model\n");
    // The copy is the user's: writable, though the sealed outputs are not.
    writeFileSync(join(got, "model.txt"), "mine");
    expect(readdirSync(join(got, "sub", "deeper"))).toEqual(["inner.txt"]);
  }, 60_000);
});

function isLink(path: string): boolean {
  try {
    return lstatSync(path).isSymbolicLink();
  } catch {
    return false;
  }
}
